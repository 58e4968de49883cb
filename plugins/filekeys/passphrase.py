"""Where the passphrase of the file key store comes from, asked once per process.

In order: the value the store was opened with (tests, embedding), the
``CONVERGE_KEY_PASSPHRASE`` environment variable (services, CI), a prompt
when standard input is a terminal (people). With none of these it is an
error, never an empty or default passphrase.
"""

from __future__ import annotations

import getpass
import os
import sys

from engine.errors import KeyStoreError

ENV = "CONVERGE_KEY_PASSPHRASE"
MIN_LENGTH = 16
"""Shortest passphrase that may seal a new key. PKCS#8 as ``cryptography`` writes it
derives the key with only 2048 PBKDF2-SHA256 rounds (not configurable), so the
passphrase itself must carry the strength against an offline guess."""


class Passphrase:
    """The store's passphrase, found on first use and kept for the life of the store."""

    def __init__(self, given: str | bytes | None = None) -> None:
        self._value = given.encode() if isinstance(given, str) else given

    def get(self, *, confirm: bool) -> bytes:
        """The passphrase; ``confirm`` asks twice when prompting (a new key is being sealed)."""
        if self._value is None:
            self._value = _from_environment() or _prompt(confirm)
        if not self._value:
            raise KeyStoreError("the key passphrase is empty; keys are never stored unencrypted")
        if confirm and len(self._value) < MIN_LENGTH:
            raise KeyStoreError(
                f"the key passphrase is shorter than {MIN_LENGTH} characters; use a longer one"
            )
        return self._value

    def __repr__(self) -> str:
        return "Passphrase(***)"


def _from_environment() -> bytes | None:
    value = os.environ.get(ENV)
    return None if value is None else value.encode()


def _prompt(confirm: bool) -> bytes:
    if not sys.stdin.isatty():
        raise KeyStoreError(
            f"no key passphrase: set {ENV}, or run on a terminal to be asked for it"
        )
    first = getpass.getpass("Key passphrase: ")
    if confirm and getpass.getpass("Key passphrase again: ") != first:
        raise KeyStoreError("the passphrases differ")
    return first.encode()
