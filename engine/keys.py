"""Signing keys: the key-store contract, key versions, validity and verification.

Where private keys live is a plugin's business (hook
:func:`~engine.hookspecs.converge_key_store`; an encrypted file store is built
in, ``plugins/filekeys``). What a key *is* is decided here, once for every
store:

- a key is a kebab-case name (the ids policies write in ``signing.keys``)
  with one or more numbered **versions**, each an Ed25519 key pair valid from
  ``not_before`` until ``not_after`` (half-open: ``[not_before, not_after)``,
  so exactly one version signs at any instant; ``None`` = until rotated);
- rotation ends the current version now and starts a new one; the old public
  key is kept, so what it signed during its validity still verifies;
- a signature verifies only when the version whose public key verifies it was
  valid at the signing time: a retired key's signature dated after its end is
  rejected, whoever holds the retired private key;
- each version has two fingerprints: its C2SP signed-note key ID (under the
  key name) and the SHA-256 of the raw public key;
- every change (generated, rotated, retired) is a :class:`KeyEvent` given to
  the listeners of the store, so the audit log can record it.
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Literal, Protocol, runtime_checkable

import pluggy
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from engine.errors import KeyStoreError, PluginError
from engine.model import KEBAB_ID
from engine.sign import note

EventKind = Literal["generated", "rotated", "retired"]


class SignatureRejected(KeyStoreError):
    """A signature that no version of the key made, or made outside that version's validity."""


@dataclass(frozen=True)
class KeyVersion:
    """One Ed25519 key pair of a named key, public half only, with its validity."""

    name: str
    version: int
    public_key: bytes
    """The raw 32-byte Ed25519 public key."""
    not_before: datetime
    not_after: datetime | None
    """End of validity (exclusive); ``None`` while the version is current and unbounded."""
    created_at: datetime
    created_by: Mapping[str, Any] | None = None
    """Who made it (an audit actor's JSON, docs/access.md), when the store knows."""

    @property
    def key(self) -> Ed25519PublicKey:
        return Ed25519PublicKey.from_public_bytes(self.public_key)

    @property
    def key_id(self) -> str:
        """The C2SP signed-note key ID under the key name, 8 hex digits."""
        return note.key_id(self.name, self.key).hex()

    @property
    def sha256(self) -> str:
        """SHA-256 of the raw public key, 64 hex digits."""
        return hashlib.sha256(self.public_key).hexdigest()

    @property
    def fingerprint(self) -> str:
        """Both fingerprints as one string: ``<key id>/sha256:<hex>``."""
        return f"{self.key_id}/sha256:{self.sha256}"

    @property
    def verifier_key(self) -> str:
        """The signed-note verifier key text ``<name>+<key id>+<base64(0x01 || key)>``."""
        return note.verifier_key(self.name, self.key)

    def valid_at(self, at: datetime) -> bool:
        return self.not_before <= at and (self.not_after is None or at < self.not_after)

    def valid_in_second(self, stated: datetime) -> bool:
        """Whether it was valid at some instant of the second a signed note's stated time
        ends: a note states the time it was signed rounded up to the second (a rotation in that
        second leaves a note begun before it within the old version's validity)."""
        return self.not_before <= stated and (
            self.not_after is None or stated - timedelta(seconds=1) < self.not_after
        )

    @classmethod
    def from_dict(cls, entry: Mapping[str, Any]) -> KeyVersion:
        """The version :meth:`as_dict` wrote; raises KeyError, TypeError or ValueError for
        anything else (a public key that is not 32 bytes of Ed25519 included)."""
        until = entry["not_after"]
        version = cls(
            name=str(entry["name"]),
            version=int(entry["version"]),
            public_key=base64.b64decode(entry["public_key"], validate=True),
            not_before=datetime.fromisoformat(entry["not_before"]),
            not_after=None if until is None else datetime.fromisoformat(until),
            created_at=datetime.fromisoformat(entry["created_at"]),
            created_by=entry.get("created_by"),
        )
        version.key  # noqa: B018 - checks the public key is an Ed25519 key
        return version

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready: what ``converge keys list --format json`` prints for a version."""
        return {
            "name": self.name,
            "version": self.version,
            "public_key": base64.b64encode(self.public_key).decode(),
            "key_id": self.key_id,
            "sha256": self.sha256,
            "verifier_key": self.verifier_key,
            "not_before": self.not_before.isoformat(),
            "not_after": None if self.not_after is None else self.not_after.isoformat(),
            "created_at": self.created_at.isoformat(),
            **({"created_by": dict(self.created_by)} if self.created_by else {}),
        }


@dataclass(frozen=True)
class KeyEvent:
    """A change to a key, for the audit log: what happened, to which version, when."""

    kind: EventKind
    name: str
    version: int
    key_id: str
    sha256: str
    at: datetime

    def as_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "name": self.name,
            "version": self.version,
            "key_id": self.key_id,
            "sha256": self.sha256,
            "at": self.at.isoformat(),
        }


Listener = Callable[[KeyEvent], None]
SignatureCheck = Callable[[bytes, bytes, datetime], None]
"""``check(message, signature, signed_at)``: returns, or raises :class:`SignatureRejected`."""


@runtime_checkable
class KeyStore(Protocol):
    """Where signing keys live. Every method raises :class:`KeyStoreError` for users."""

    def names(self) -> list[str]:
        """Every key name the store holds, sorted."""
        ...

    def versions(self, name: str) -> list[KeyVersion]:
        """The versions of ``name``, oldest first; raises when the store has no such key."""
        ...

    def signer(self, name: str, at: datetime) -> Ed25519PrivateKey:
        """The private key of the version of ``name`` valid at ``at``; raises when none is."""
        ...

    def generate(
        self,
        name: str,
        valid_for: timedelta | None = None,
        created_by: Mapping[str, Any] | None = None,
    ) -> KeyVersion:
        """Make version 1 of a new key, valid from now for ``valid_for`` (``None``: no end),
        remembering who made it (``created_by``, an audit actor's JSON)."""
        ...

    def rotate(
        self,
        name: str,
        valid_for: timedelta | None = None,
        created_by: Mapping[str, Any] | None = None,
    ) -> KeyVersion:
        """End the current version now and make the next one, keeping every public key.

        ``valid_for=None`` gives the new version the period the key was generated with.
        """
        ...

    def verifier(self, name: str) -> SignatureCheck:
        """A check of signatures by any version of ``name``, judged at their signing time."""
        ...

    def subscribe(self, listener: Listener) -> None:
        """Call ``listener`` with every :class:`KeyEvent` from now on."""
        ...


# --- helpers every store can use --------------------------------------------------------


def check_key_name(name: str) -> str:
    """``name`` when it is a kebab-case id (the rule of ``signing.keys``); raises otherwise."""
    if not KEBAB_ID.fullmatch(name):
        raise KeyStoreError(
            f"key name {name!r} must be a kebab-case id such as qa-signing (lowercase letters"
            " and digits, words joined by single hyphens)"
        )
    return name


def require_aware(at: datetime, what: str) -> datetime:
    """``at`` when it carries a time zone: naive times are ambiguous across sites."""
    if at.tzinfo is None or at.utcoffset() is None:
        raise KeyStoreError(f"{what} {at.isoformat()} has no time zone")
    return at


def version_at(versions: Iterable[KeyVersion], at: datetime) -> KeyVersion:
    """The version valid at ``at``; raises :class:`KeyStoreError` when there is none."""
    require_aware(at, "signing time")
    listed = list(versions)
    for version in listed:
        if version.valid_at(at):
            return version
    name = listed[0].name if listed else "?"
    raise KeyStoreError(
        f"key {name} has no version valid at {at.isoformat()}"
        f" ({_validity_summary(listed)}); rotate it or generate a new key"
    )


def _validity_summary(versions: list[KeyVersion]) -> str:
    return ", ".join(map(_validity, versions)) or "no versions"


def _validity(v: KeyVersion) -> str:
    until = v.not_after.isoformat() if v.not_after else ""
    return f"v{v.version} {v.not_before.isoformat()}..{until}"


def verify_signature(
    versions: Iterable[KeyVersion], message: bytes, signature: bytes, signed_at: datetime
) -> KeyVersion:
    """The version that made ``signature`` over ``message``, if it was valid at ``signed_at``.

    Raises :class:`SignatureRejected` when no version's public key verifies the
    signature, or when the one that does was not valid at ``signed_at`` (not
    yet, or retired: a leaked old key cannot sign "now"). ``signed_at`` must come
    from somewhere the signer does not control alone (the batch's signed
    statement checked against the audit log), or a retired key could backdate.
    """
    require_aware(signed_at, "signing time")
    for version in versions:
        try:
            version.key.verify(signature, message)
        except InvalidSignature:
            continue
        if not version.valid_at(signed_at):
            raise SignatureRejected(
                f"signature by {version.name} v{version.version} ({version.key_id}) dated"
                f" {signed_at.isoformat()} is outside its validity"
                f" ({_validity_summary([version])})"
            )
        return version
    raise SignatureRejected("signature verifies with no version of the key")


def verifier_of(versions: Callable[[], list[KeyVersion]]) -> SignatureCheck:
    """A :data:`SignatureCheck` over the versions ``versions()`` lists when it is called."""

    def check(message: bytes, signature: bytes, signed_at: datetime) -> None:
        verify_signature(versions(), message, signature, signed_at)

    return check


@dataclass
class KeyEvents:
    """The listeners of one store, and the events it emitted while this object lived."""

    listeners: list[Listener] = field(default_factory=list)
    history: list[KeyEvent] = field(default_factory=list)

    def subscribe(self, listener: Listener) -> None:
        self.listeners.append(listener)

    def emit(self, kind: EventKind, version: KeyVersion, at: datetime) -> KeyEvent:
        event = KeyEvent(kind, version.name, version.version, version.key_id, version.sha256, at)
        self.history.append(event)
        for listener in self.listeners:
            listener(event)
        return event


# --- finding a store --------------------------------------------------------------------


def open_key_store(pm: pluggy.PluginManager, config: dict[str, Any]) -> KeyStore:
    """The store a plugin makes for ``config`` (``config["kind"]`` names it)."""
    store: KeyStore | None = pm.hook.converge_key_store(config=config)
    kind = config.get("kind")
    if store is None:
        raise PluginError(f"no installed plugin provides a key store of kind {kind!r}")
    if not isinstance(store, KeyStore):
        raise PluginError(f"the key store of kind {kind!r} does not implement KeyStore")
    return store
