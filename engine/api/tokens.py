"""Bearer tokens for the read API: minted for a principal, kept only as salted scrypt hashes.

A token reads ``cvg1.<id>.<secret>``: 12 hex digits naming it, then 43 characters of
base64url (256 random bits). Only the id, the principal, a per-token 16-byte salt, the
scrypt hash of the secret under that salt and the token's validity are kept, in a file
beside the principals file (``principals.yaml`` -> ``principals.tokens.json``), written
atomically with mode 0600, each change made under a lock on the file and to its latest
contents (two commands at once must not lose a token, nor bring a revoked one back). A
token is refused when it is unknown, its secret is wrong, it
has expired, or its principal is no longer in the principals file (that last check is the
caller's: :mod:`engine.api.auth`). See docs/access.md.

scrypt is slow on purpose (about 0.1 s a check); a secret that verified is remembered, by
its SHA-256, for as long as the tokens file is unchanged, so a client's every request does
not pay it again (expiry is still checked on each).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import hmac
import json
import os
import secrets
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from engine.errors import ConvergeError
from engine.sign.leaf import instant

FORMAT = "converge.tokens/v1"
PREFIX = "cvg1"
SCRYPT = {"n": 2**14, "r": 8, "p": 1}
"""scrypt's cost: 16 MiB and about 0.1 s per check on a server core."""
MODE = 0o600


def tokens_path(principals: Path) -> Path:
    """Where the tokens of a principals file are kept: beside it, ``<stem>.tokens.json``."""
    return principals.with_name(f"{principals.stem}.tokens.json")


@dataclass(frozen=True)
class StoredToken:
    """What is kept of a token: never the token itself."""

    id: str
    principal: str
    salt: bytes
    hash: bytes
    created: str
    expires: str
    """An instant; the token is refused from then on."""

    def as_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "principal": self.principal,
            "kdf": {"name": "scrypt", **SCRYPT},
            "salt": self.salt.hex(),
            "hash": self.hash.hex(),
            "created": self.created,
            "expires": self.expires,
        }

    @classmethod
    def from_json(cls, item: dict[str, Any]) -> StoredToken:
        if item["kdf"] != {"name": "scrypt", **SCRYPT}:
            raise ValueError(f"token {item['id']}: a key derivation other than {SCRYPT}")
        return cls(
            str(item["id"]),
            str(item["principal"]),
            bytes.fromhex(item["salt"]),
            bytes.fromhex(item["hash"]),
            str(item["created"]),
            str(item["expires"]),
        )


@dataclass(frozen=True)
class Minted:
    """A token just made: its text (shown once), and what is kept of it."""

    text: str
    stored: StoredToken


@dataclass(frozen=True)
class TokenCheck:
    """Whom a token names, and why it is refused (``None``: it is good)."""

    principal: str | None
    token: str | None
    """The token's id, when the text names one that is kept."""
    problem: str | None


def _hash(secret: str, salt: bytes) -> bytes:
    return hashlib.scrypt(secret.encode(), salt=salt, dklen=32, **SCRYPT)


class TokenFile:
    """The tokens of one principals file, as kept on disk when it was opened."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.tokens = _load(path)
        self._verified: dict[bytes, str] = {}
        """Token id by the SHA-256 of a token text that verified (dict reads and writes are
        atomic: the server's threads share it without a lock)."""

    def mint(self, principal: str, valid_for: timedelta, now: datetime) -> Minted:
        """A new token for ``principal``, valid from ``now`` for ``valid_for``, kept (hashed)
        in the file at once."""
        token_id, secret, salt = secrets.token_hex(6), secrets.token_urlsafe(32), os.urandom(16)
        stored = StoredToken(
            token_id,
            principal,
            salt,
            _hash(secret, salt),
            instant(now),
            instant(now + valid_for),
        )
        with self._changing():
            self.tokens[token_id] = stored
        return Minted(f"{PREFIX}.{token_id}.{secret}", stored)

    def revoke(self, token_id: str) -> StoredToken:
        """Forget the token ``token_id``; it is refused from now on."""
        with self._changing():
            stored = self.tokens.pop(token_id, None)
            if stored is None:
                raise ConvergeError(f"{self.path} keeps no token {token_id}")
        return stored

    @contextlib.contextmanager
    def _changing(self) -> Iterator[None]:
        """Change the tokens as the file holds them now, under its lock, and write them back
        (nothing is written when the change raises). What was read when this object was
        opened may be stale: another command may have minted or revoked since."""
        with _locked(self.path):
            self.tokens = _load(self.path)
            yield
            _write_atomically(self.path, self.to_bytes())

    def to_bytes(self) -> bytes:
        tokens = [self.tokens[key].as_json() for key in sorted(self.tokens)]
        return (json.dumps({"format": FORMAT, "tokens": tokens}, indent=2) + "\n").encode()

    def check(self, text: str, now: datetime) -> TokenCheck:
        """Whom ``text`` authenticates, if anyone."""
        prefix, _, rest = text.partition(".")
        token_id, _, secret = rest.partition(".")
        stored = self.tokens.get(token_id) if prefix == PREFIX else None
        if stored is None or not secret:
            return TokenCheck(None, None, "the bearer token is not one this server issued")
        if not self._verifies(text, secret, stored):
            return TokenCheck(stored.principal, token_id, f"wrong secret for token {token_id}")
        if instant(now) >= stored.expires:
            return TokenCheck(
                stored.principal, token_id, f"token {token_id} expired at {stored.expires}"
            )
        return TokenCheck(stored.principal, token_id, None)

    def _verifies(self, text: str, secret: str, stored: StoredToken) -> bool:
        seen = hashlib.sha256(text.encode()).digest()
        if self._verified.get(seen) == stored.id:
            return True
        if not hmac.compare_digest(_hash(secret, stored.salt), stored.hash):
            return False
        self._verified[seen] = stored.id
        return True


def _load(path: Path) -> dict[str, StoredToken]:
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return {}
    except OSError as exc:
        raise ConvergeError(f"cannot read the tokens file {path}: {exc.strerror}") from exc
    try:
        body = json.loads(data)
        if body.get("format") != FORMAT:
            raise ValueError(f"not a {FORMAT} file")
        return {t.id: t for t in (StoredToken.from_json(item) for item in body["tokens"])}
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise ConvergeError(f"{path} is not a tokens file: {exc}") from exc


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """An exclusive lock on the tokens file ``path``, held on a lock file beside it (the
    file itself is replaced by each write, so it cannot hold the lock)."""
    lock = path.with_name(f".{path.name}.lock")
    try:
        fd = os.open(lock, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, MODE)
    except OSError as exc:
        raise ConvergeError(f"cannot lock the tokens file {path}: {exc.strerror}") from exc
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing releases the lock


def _write_atomically(path: Path, data: bytes) -> None:
    """Write ``data`` under a temporary name made with mode 0600, then rename it into place."""
    temporary = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    try:
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, MODE)
        with os.fdopen(fd, "wb") as file:
            os.fchmod(file.fileno(), MODE)  # the umask may have taken bits away; add none
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
    except OSError as exc:
        temporary.unlink(missing_ok=True)
        raise ConvergeError(f"cannot write the tokens file {path}: {exc.strerror}") from exc
