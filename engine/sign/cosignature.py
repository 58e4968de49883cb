"""C2SP tlog-cosignature v1 (Ed25519): a witness's timestamped signature over a checkpoint.

A cosignature (c2sp.org/tlog-cosignature) is one more signature line of the
checkpoint's signed note::

    — <cosigner name> base64(key ID || timestamp || signature)

where the key ID is ``SHA-256(name || 0x0A || 0x04 || 32-byte public key)[:4]``
(type ``0x04``, so a cosigner key never verifies a plain note signature),
``timestamp`` is the signing time as a big-endian ``u64`` of POSIX seconds,
and ``signature`` is the Ed25519 signature of the message::

    cosignature/v1
    time <timestamp>
    <the checkpoint's note text: origin, size, root and extension lines>

It says: as of ``timestamp``, this is the largest consistent tree the cosigner
has seen of the log the origin names. The message does not name the cosigner,
so one public key serves one cosigner. Pure values and checks on top of
:mod:`engine.sign.note`; failures are its :class:`~engine.sign.note.NoteError`
leaves (a malformed line or key, no line by a trusted cosigner, one that fails).

(The spec's ML-DSA-44 type, ``0x06``, is not implemented: ``cryptography``
offers ML-DSA only on some builds, and every key here is Ed25519.)
"""

from __future__ import annotations

import base64
import hashlib
import re
import struct
from collections.abc import Iterable
from dataclasses import dataclass

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from engine.sign import note

COSIGNATURE_V1 = 0x04
"""The signed-note signature type of an Ed25519 cosignature."""
HEADER = "cosignature/v1"
MAX_TIMESTAMP = (1 << 63) - 1
_SIZE = 4 + 8 + 64
_HEX_ID = re.compile(r"[0-9a-f]{8}")


def _raw(public_key: Ed25519PublicKey) -> bytes:
    return public_key.public_bytes(Encoding.Raw, PublicFormat.Raw)


def key_id(name: str, public_key: Ed25519PublicKey) -> bytes:
    """``SHA-256(name || 0x0A || 0x04 || 32-byte public key)[:4]``."""
    material = name.encode() + b"\n" + bytes([COSIGNATURE_V1]) + _raw(public_key)
    return hashlib.sha256(material).digest()[:4]


@dataclass(frozen=True)
class Cosigner:
    """A cosigner's public half: its name, key ID and Ed25519 public key."""

    name: str
    key_id: bytes
    public_key: Ed25519PublicKey

    @classmethod
    def of(cls, name: str, public_key: Ed25519PublicKey) -> Cosigner:
        _check_name(name)
        return cls(name, key_id(name, public_key), public_key)

    @property
    def text(self) -> str:
        """The verifier key ``<name>+<hex key ID>+<base64(0x04 || key)>`` (signed-note vkey)."""
        material = base64.b64encode(bytes([COSIGNATURE_V1]) + _raw(self.public_key)).decode()
        return f"{self.name}+{self.key_id.hex()}+{material}"


def _check_name(name: str) -> None:
    if not name or "+" in name or any(c.isspace() for c in name):
        raise note.MalformedKey(f"cosigner name {name!r}: want non-empty, without spaces or '+'")


def parse_cosigner_key(text: str) -> Cosigner:
    """Parse a cosigner verifier key ``<name>+<hex key ID>+<base64(0x04 || key)>``; the key ID
    must be the key's."""
    parts = text.split("+", 2)
    if len(parts) != 3:
        raise note.MalformedKey(f"cosigner key {text!r}: want <name>+<key ID>+<key>")
    name, hex_id, material = parts
    _check_name(name)
    if not _HEX_ID.fullmatch(hex_id):
        raise note.MalformedKey(f"key ID {hex_id!r}: want 8 lowercase hex digits")
    try:
        raw = base64.b64decode(material.encode("ascii"), validate=True)
    except (ValueError, UnicodeEncodeError) as exc:
        raise note.MalformedKey(f"key of {name}: bad base64") from exc
    if base64.b64encode(raw).decode() != material:
        raise note.MalformedKey(f"key of {name}: base64 not in canonical form")
    if len(raw) != 33 or raw[0] != COSIGNATURE_V1:
        raise note.MalformedKey(f"key of {name}: want 0x04 and a 32-byte Ed25519 key")
    try:
        cosigner = Cosigner.of(name, Ed25519PublicKey.from_public_bytes(raw[1:]))
    except ValueError as exc:
        raise note.MalformedKey(f"key of {name}: not an Ed25519 public key") from exc
    if cosigner.key_id.hex() != hex_id:
        raise note.MalformedKey(f"key ID of {name}: got {hex_id}, want {cosigner.key_id.hex()}")
    return cosigner


def signed_message(text: str, timestamp: int) -> bytes:
    """What the cosigner signs: the header line, the time line and the checkpoint's note text
    (each line ending in a newline; no signature lines)."""
    _check_timestamp(timestamp)
    if not text.endswith("\n"):
        raise note.MalformedNote("checkpoint text: want it to end in a newline")
    return f"{HEADER}\ntime {timestamp}\n{text}".encode()


def _check_timestamp(timestamp: int) -> None:
    if not 0 <= timestamp <= MAX_TIMESTAMP:
        raise note.MalformedNote(f"timestamp {timestamp}: want 0 <= t <= 2**63 - 1")


@dataclass(frozen=True)
class Cosignature:
    """One cosignature line, decoded: who, its key ID, when, and the Ed25519 signature."""

    name: str
    key_id: bytes
    timestamp: int
    signature: bytes

    @property
    def line(self) -> str:
        """``— <name> base64(key ID || u64 timestamp || signature)`` and a newline."""
        blob = self.key_id + struct.pack(">Q", self.timestamp) + self.signature
        return f"{note.SIGNATURE_PREFIX}{self.name} {base64.b64encode(blob).decode()}\n"

    @classmethod
    def of(cls, line: note.Signature) -> Cosignature:
        """The cosignature a note's signature line holds; MalformedNote unless it is 76 bytes
        with a timestamp below 2**63."""
        raw = line.key_id + line.signature
        if len(raw) != _SIZE:
            raise note.MalformedNote(
                f"cosignature of {line.name}: got {len(raw)} bytes, want {_SIZE}"
            )
        (timestamp,) = struct.unpack(">Q", raw[4:12])
        _check_timestamp(timestamp)
        return cls(line.name, raw[:4], timestamp, raw[12:])


def cosign(text: str, name: str, private_key: Ed25519PrivateKey, timestamp: int) -> Cosignature:
    """The cosignature of checkpoint note text ``text`` by ``name``, made at ``timestamp``.

    The caller must have checked the checkpoint (its log's signature, its
    consistency with what it cosigned before): a cosignature vouches for it.
    """
    _check_name(name)
    signature = private_key.sign(signed_message(text, timestamp))
    return Cosignature(name, key_id(name, private_key.public_key()), timestamp, signature)


def verify_cosignature(signed: str, cosigners: Iterable[Cosigner]) -> Cosignature:
    """The first cosignature of the signed note ``signed`` by one of ``cosigners`` that
    verifies over its text; lines of other keys are ignored.

    Raises MalformedNote, BadSignature (a trusted cosigner's line that fails:
    the note is not to be trusted) or NoKnownSignature.
    """
    trusted = {(c.name, c.key_id): c for c in cosigners}
    text, lines = note.split_note(signed)
    found: Cosignature | None = None
    for line in lines:
        cosigner = trusted.get((line.name, line.key_id))
        if cosigner is None:
            continue
        made = Cosignature.of(line)
        try:
            cosigner.public_key.verify(made.signature, signed_message(text, made.timestamp))
        except InvalidSignature:
            raise note.BadSignature(
                f"invalid cosignature by {cosigner.name}+{cosigner.key_id.hex()}"
            ) from None
        found = found or made
    if found is None:
        known = ", ".join(f"{n}+{k.hex()}" for n, k in trusted) or "none"
        raise note.NoKnownSignature(f"no cosignature by a trusted cosigner (known: {known})")
    return found


def add_line(signed: str, cosignature: Cosignature) -> str:
    """The signed note with ``cosignature`` appended as its last signature line."""
    note.split_note(signed)  # a well-formed note
    return signed + cosignature.line


__all__ = [
    "COSIGNATURE_V1",
    "HEADER",
    "Cosignature",
    "Cosigner",
    "add_line",
    "cosign",
    "key_id",
    "parse_cosigner_key",
    "signed_message",
    "verify_cosignature",
]
