"""C2SP signed notes (Ed25519) and tlog checkpoints, byte-exact.

A signed note (c2sp.org/signed-note) is UTF-8 text ending in a newline, a
blank line, then one line per signature::

    <text, each line ending in "\\n">
    <empty line>
    — <key name> <base64(4-byte key ID || 64-byte Ed25519 signature)>

The key ID is ``SHA-256(name || 0x0A || 0x01 || public key)[:4]``; a verifier
key is written ``<name>+<key ID as 8 hex digits>+<base64(0x01 || public key)>``.

A checkpoint (c2sp.org/tlog-checkpoint) is a note whose text is the origin
line, the tree size in decimal, the base64 root hash and optional non-empty
extension lines. Failures, all VerificationErrors::

    NoteError
    ├── MalformedNote       not a well-formed signed note
    ├── MalformedKey        a verifier or signer key text that does not parse
    ├── NoKnownSignature    no signature from any of the given keys
    └── BadSignature        a signature from a given key that does not verify
    CheckpointError
    ├── MalformedCheckpoint the note text is not a checkpoint
    └── OriginMismatch      a checkpoint of another log
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
from collections.abc import Iterable
from dataclasses import dataclass

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from engine.errors import VerificationError
from engine.sign.merkle import HASH_SIZE

ED25519 = 0x01
SIGNATURE_PREFIX = "\u2014 "  # em dash, space
MAX_SIGNATURES = 100
_SIZE_LINE = re.compile(r"0|[1-9][0-9]*")


class NoteError(VerificationError):
    """A signed note that cannot be trusted."""


class MalformedNote(NoteError):
    """Text that is not a well-formed signed note."""


class MalformedKey(NoteError):
    """A verifier or signer key text that does not parse, or a key given twice."""


class NoKnownSignature(NoteError):
    """None of the note's signatures is from a key the caller trusts."""


class BadSignature(NoteError):
    """A signature from a trusted key that does not verify over the note text."""


class CheckpointError(VerificationError):
    """A note text that is not the checkpoint that was expected."""


class MalformedCheckpoint(CheckpointError):
    """Note text that breaks the tlog-checkpoint format."""


class OriginMismatch(CheckpointError):
    """A checkpoint whose origin line names another log."""

    def __init__(self, got: str, want: str) -> None:
        self.got, self.want = got, want
        super().__init__(f"checkpoint origin: got {got!r}, want {want!r}")


# --- keys ------------------------------------------------------------------


def _raw(public_key: Ed25519PublicKey) -> bytes:
    return public_key.public_bytes(Encoding.Raw, PublicFormat.Raw)


def key_id(name: str, public_key: Ed25519PublicKey) -> bytes:
    """``SHA-256(name || 0x0A || 0x01 || 32-byte public key)[:4]`` (signed-note §Ed25519)."""
    material = name.encode() + b"\n" + bytes([ED25519]) + _raw(public_key)
    return hashlib.sha256(material).digest()[:4]


def _check_name(name: str) -> None:
    if not name or "+" in name or any(c.isspace() for c in name):
        raise MalformedKey(f"key name {name!r}: want non-empty, without spaces or '+'")


@dataclass(frozen=True)
class Verifier:
    """A trusted Ed25519 key: its name, key ID and public key."""

    name: str
    key_id: bytes
    public_key: Ed25519PublicKey

    @property
    def text(self) -> str:
        """The verifier key text ``<name>+<hex key ID>+<base64(0x01 || key)>``."""
        material = base64.b64encode(bytes([ED25519]) + _raw(self.public_key)).decode()
        return f"{self.name}+{self.key_id.hex()}+{material}"

    def verifies(self, message: bytes, signature: bytes) -> bool:
        try:
            self.public_key.verify(signature, message)
        except InvalidSignature:
            return False
        return True


def verifier_key(name: str, public_key: Ed25519PublicKey) -> str:
    """The verifier key text for ``public_key`` under ``name``. Requires a valid key name."""
    _check_name(name)
    return Verifier(name, key_id(name, public_key), public_key).text


def _decode_key(name: str, hex_id: str, material: str, want_length: int) -> bytes:
    """The key bytes after the 0x01 type byte, once the name and key ID are checked."""
    _check_name(name)
    raw = _b64(material, MalformedKey)
    if len(hex_id) != 8 or not re.fullmatch(r"[0-9a-f]{8}", hex_id):
        raise MalformedKey(f"key ID {hex_id!r}: want 8 lowercase hex digits")
    if len(raw) != 1 + want_length or raw[0] != ED25519:
        raise MalformedKey(f"key of {name}: got {len(raw)} bytes, want 0x01 + {want_length}")
    return raw[1:]


def parse_verifier_key(text: str) -> Verifier:
    """Parse ``<name>+<hex key ID>+<base64(0x01 || key)>``; the key ID must match the key."""
    parts = text.split("+", 2)
    if len(parts) != 3:
        raise MalformedKey(f"verifier key {text!r}: want <name>+<key ID>+<key>")
    name, hex_id, material = parts
    try:
        public_key = Ed25519PublicKey.from_public_bytes(_decode_key(name, hex_id, material, 32))
    except ValueError as exc:
        raise MalformedKey(f"key of {name}: not an Ed25519 public key") from exc
    want = key_id(name, public_key)
    if bytes.fromhex(hex_id) != want:
        raise MalformedKey(f"key ID of {name}: got {hex_id}, want {want.hex()}")
    return Verifier(name, want, public_key)


def signer_key(name: str, private_key: Ed25519PrivateKey) -> str:
    """``PRIVATE+KEY+<name>+<hex key ID>+<base64(0x01 || seed)>`` (golang.org/x/mod/sumdb/note)."""
    _check_name(name)
    seed = private_key.private_bytes_raw()
    material = base64.b64encode(bytes([ED25519]) + seed).decode()
    return f"PRIVATE+KEY+{name}+{key_id(name, private_key.public_key()).hex()}+{material}"


def parse_signer_key(text: str) -> tuple[str, Ed25519PrivateKey]:
    """Parse a signer key text into its name and private key; the key ID must match."""
    parts = text.split("+", 4)
    if len(parts) != 5 or parts[:2] != ["PRIVATE", "KEY"]:
        raise MalformedKey("signer key: want PRIVATE+KEY+<name>+<key ID>+<key>")
    _, _, name, hex_id, material = parts
    private_key = Ed25519PrivateKey.from_private_bytes(_decode_key(name, hex_id, material, 32))
    want = key_id(name, private_key.public_key())
    if bytes.fromhex(hex_id) != want:
        raise MalformedKey(f"key ID of {name}: got {hex_id}, want {want.hex()}")
    return name, private_key


# --- signed notes ----------------------------------------------------------


@dataclass(frozen=True)
class Signature:
    """One signature line: key name, 4-byte key ID and the signature bytes."""

    name: str
    key_id: bytes
    signature: bytes

    @property
    def line(self) -> str:
        blob = base64.b64encode(self.key_id + self.signature).decode()
        return f"{SIGNATURE_PREFIX}{self.name} {blob}\n"


def _b64(text: str, error: type[VerificationError]) -> bytes:
    """Decode canonical base64 only: one spelling per byte string, so that no byte of a
    stored note can change while it still verifies (unused padding bits must be zero)."""
    try:
        raw = base64.b64decode(text.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError) as exc:
        raise error(f"bad base64 {text!r}") from exc
    if base64.b64encode(raw).decode() != text:
        raise error(f"base64 {text!r} is not in canonical form")
    return raw


def _check_characters(note: str) -> None:
    for i, c in enumerate(note):
        if c < " " and c != "\n":
            raise MalformedNote(f"character {i}: got control character {c!r}, want none but \\n")
        if "\ud800" <= c <= "\udfff":
            raise MalformedNote(f"character {i}: got a lone surrogate {c!r}, want UTF-8 text")


def _parse_signature(line: str) -> Signature:
    if not line.startswith(SIGNATURE_PREFIX):
        raise MalformedNote(f"signature line {line!r}: want '— <name> <base64>'")
    name, _, blob = line[len(SIGNATURE_PREFIX) :].partition(" ")
    if not name or "+" in name or any(c.isspace() for c in name):
        raise MalformedNote(f"signature line {line!r}: bad key name {name!r}")
    raw = _b64(blob, MalformedNote)
    if len(raw) < 5:
        raise MalformedNote(f"signature of {name}: got {len(raw)} bytes, want key ID + signature")
    return Signature(name, raw[:4], raw[4:])


def split_note(note: str | bytes) -> tuple[str, list[Signature]]:
    """The note text (with its final newline) and its signature lines, unverified.

    Requires UTF-8 without control characters but newline; the text ends at
    the last blank line; at least one and at most MAX_SIGNATURES signatures.
    """
    if isinstance(note, bytes):
        try:
            note = note.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise MalformedNote(f"not UTF-8: {exc}") from exc
    _check_characters(note)
    split = note.rfind("\n\n")
    if split < 0 or not note.endswith("\n") or split + 2 == len(note):
        raise MalformedNote("want text, a blank line, then signature lines each ending in \\n")
    lines = note[split + 2 : -1].split("\n")
    if len(lines) > MAX_SIGNATURES:
        raise MalformedNote(f"signatures: got {len(lines)}, want at most {MAX_SIGNATURES}")
    return note[: split + 1], [_parse_signature(line) for line in lines]


def sign_note(text: str, name: str, private_key: Ed25519PrivateKey) -> str:
    """The signed note: ``text``, a blank line, and the Ed25519 signature line of ``name``.

    Requires ``text`` non-empty, ending in a newline, without control
    characters but newline; ``name`` without spaces or '+'.
    """
    _check_name(name)
    _check_characters(text)
    if not text.endswith("\n"):
        raise MalformedNote("note text: want it to end in a newline")
    signature = private_key.sign(text.encode())
    line = Signature(name, key_id(name, private_key.public_key()), signature).line
    return f"{text}\n{line}"


def _verifiers(keys: str | Iterable[str]) -> dict[tuple[str, bytes], Verifier]:
    out: dict[tuple[str, bytes], Verifier] = {}
    for text in [keys] if isinstance(keys, str) else keys:
        v = parse_verifier_key(text)
        if (v.name, v.key_id) in out:
            raise MalformedKey(f"key {v.name}+{v.key_id.hex()} given twice")
        out[v.name, v.key_id] = v
    return out


def verify_note(note: str | bytes, verifier_keys: str | Iterable[str]) -> str:
    """The note text, once a signature of a trusted key verifies over it.

    Signatures of unknown keys are ignored (signed-note §Signatures); one from a
    trusted key that fails rejects the whole note. Raises MalformedNote,
    MalformedKey, BadSignature or NoKnownSignature.
    """
    verifiers = _verifiers(verifier_keys)
    text, signatures = split_note(note)
    verified = 0
    for sig in signatures:
        v = verifiers.get((sig.name, sig.key_id))
        if v is None:
            continue
        if not v.verifies(text.encode(), sig.signature):
            raise BadSignature(f"invalid signature for key {v.name}+{v.key_id.hex()}")
        verified += 1
    if not verified:
        known = ", ".join(f"{n}+{k.hex()}" for n, k in verifiers) or "none"
        raise NoKnownSignature(f"note has no signature from a known key (known: {known})")
    return text


# --- checkpoints -----------------------------------------------------------


@dataclass(frozen=True)
class Checkpoint:
    """A log's tree head: origin, size and root hash, plus opaque extension lines."""

    origin: str
    size: int
    root_hash: bytes
    extensions: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not self.origin or "\n" in self.origin:
            raise MalformedCheckpoint(f"origin {self.origin!r}: want one non-empty line")
        if not 0 <= self.size < 1 << 64:
            raise MalformedCheckpoint(f"tree size: got {self.size}, want 0 <= size < 2**64")
        if len(self.root_hash) != HASH_SIZE:
            raise MalformedCheckpoint(
                f"root hash: got {len(self.root_hash)} bytes, want {HASH_SIZE}"
            )
        for line in self.extensions:
            if not line or "\n" in line:
                raise MalformedCheckpoint(f"extension line {line!r}: want one non-empty line")

    def to_text(self) -> str:
        """The note text: origin, size, base64 root hash and extensions, each ending in \\n."""
        head = [self.origin, str(self.size), base64.b64encode(self.root_hash).decode()]
        return "".join(f"{line}\n" for line in [*head, *self.extensions])

    @classmethod
    def from_text(cls, text: str) -> Checkpoint:
        """Parse a checkpoint note text. Requires at least three lines, ending in a newline."""
        lines = text.split("\n")
        if len(lines) < 4 or lines[-1] != "":
            raise MalformedCheckpoint(f"lines: got {len(lines) - 1}, want >= 3 ending in \\n")
        origin, size, root_hash, *extensions = lines[:-1]
        if not _SIZE_LINE.fullmatch(size):
            raise MalformedCheckpoint(f"tree size line {size!r}: want decimal, no leading zeros")
        raw = _b64(root_hash, MalformedCheckpoint)
        return cls(origin, int(size), raw, tuple(extensions))


def sign_checkpoint(checkpoint: Checkpoint, name: str, private_key: Ed25519PrivateKey) -> str:
    """The checkpoint as a signed note. The key name SHOULD be the origin (tlog-checkpoint)."""
    return sign_note(checkpoint.to_text(), name, private_key)


def open_checkpoint(
    note: str | bytes, verifier_keys: str | Iterable[str], origin: str
) -> Checkpoint:
    """The checkpoint of log ``origin`` in ``note``, once a trusted signature verifies.

    Raises the NoteErrors of :func:`verify_note`, MalformedCheckpoint or OriginMismatch.
    """
    checkpoint = Checkpoint.from_text(verify_note(note, verifier_keys))
    if checkpoint.origin != origin:
        raise OriginMismatch(checkpoint.origin, origin)
    return checkpoint
