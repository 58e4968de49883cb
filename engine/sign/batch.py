"""Batches: all records of one device in one signing window, hashed, chained and signed.

A batch holds the records of one device whose :func:`record_time` falls in
one window ``[k·w, (k+1)·w)`` (``w`` = the plan's ``batch_window_ms``, times
in UTC epoch ms); :class:`~engine.evidence.batcher.Batcher` cuts them. Pure
values and checks: no I/O, no clock.

The batch's records are sorted (:func:`entry_order`) so its root does not
depend on arrival order. Its :func:`statement` (canonical JSON) is signed
with Ed25519 by every key the plan requires; docs/records.md has the bytes.
The statement also signs the batch's :func:`point_map`, the point of each
position: a record deleted by retention takes its point with it, and the map
is what then still says which point each deleted position was.
Verification failures, all :class:`VerificationError`::

    MalformedStatement     statement bytes that are not a canonical batch statement
    MissingSignature(key)  a required key did not sign
    BadSignature(key)      a signature of a required key does not verify (a note.BadSignature)
    ChainBroken(got, want) the statement's previous root is not the device's last root
    CountMismatch(got, want) records given vs. count signed
    RootMismatch(got, want)  root of the records given vs. root signed
    PointMapMismatch       the records' points are not the point map signed
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from engine.canonical import canonical_json, read_json
from engine.errors import EvidenceError, VerificationError
from engine.records import Gap, Reading, Record
from engine.sign import note
from engine.sign.leaf import instant, leaf_bytes, record_leaf_hash
from engine.sign.merkle import (
    HASH_SIZE,
    MerkleTree,
    RootMismatch,
    leaf_hash,
    root_of_hashes,
    verify_inclusion,
)

STATEMENT_FORMAT = "converge.batch/v2"
ZERO_ROOT = bytes(HASH_SIZE)
"""The previous root of a device's first batch."""
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MS = timedelta(milliseconds=1)
_sha256 = hashlib.sha256
_NAMES = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"))
"""Writes a list of strings as RFC 8785 does (engine/canonical.py: the escaping is the same)."""


# --- errors ----------------------------------------------------------------


class MissingSigner(EvidenceError):
    """``sign_batch`` was not given the private key of a key the batch requires."""

    def __init__(self, key: str) -> None:
        self.key = key
        super().__init__(f"no private key for signing key {key!r}")


class MalformedStatement(VerificationError):
    """Bytes that are not the canonical JSON of a batch statement."""


class MissingSignature(VerificationError):
    """A key the batch requires did not sign it."""

    def __init__(self, key: str) -> None:
        self.key = key
        super().__init__(f"missing signature of required key {key!r}")


class BadSignature(note.BadSignature):
    """A signature of a required key that does not verify over the statement."""

    def __init__(self, key: str) -> None:
        self.key = key
        super().__init__(f"signature of key {key!r} does not verify over the batch statement")


class CountMismatch(VerificationError):
    """The number of records given is not the count the statement signs."""

    def __init__(self, got: int, want: int) -> None:
        self.got, self.want = got, want
        super().__init__(f"record count: got {got}, want {want}")


class ChainBroken(VerificationError):
    """The statement's previous root is not the root of the device's previous batch."""

    def __init__(self, got: bytes, want: bytes) -> None:
        self.got, self.want = got, want
        super().__init__(f"previous root: got {got.hex()}, want {want.hex()}")


class PointMapMismatch(VerificationError):
    """The points of the records given, in batch order, are not the point map signed."""

    def __init__(self) -> None:
        super().__init__("the records' points are not the signed point map")


# --- what a batch needs of its plan ---------------------------------------


@dataclass(frozen=True)
class BatchSpec:
    """What sealing one device's batches needs of its plan (:mod:`engine.plans.body`).

    ``keys`` is every key that must sign each batch (sorted): the union over
    the plan's points that require signing, whichever of them a batch holds.
    Empty, the batches are unsigned and ``waiver`` holds the plan's waivers
    that lift signing (docs/records.md).
    """

    device: str
    plan_digest: str
    window_ms: int
    keys: tuple[str, ...]
    waiver: tuple[Mapping[str, Any], ...]
    points: frozenset[str]
    """The points the plan collects: a record of any other point has no batch."""


# --- batches ---------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Entry:
    """One record of a batch with its salt, leaf bytes and leaf hash."""

    record: Record
    salt: bytes
    leaf: bytes
    leaf_hash: bytes

    @classmethod
    def of(cls, record: Record, salt: bytes) -> Entry:
        leaf = leaf_bytes(record, salt)
        return cls(record, salt, leaf, leaf_hash(leaf))


@dataclass(frozen=True)
class Batch:
    """The records of one device in one window, in :func:`entry_order`, and their root."""

    device: str
    window_start: str
    window_end: str
    entries: tuple[Entry, ...]
    root: bytes
    plan_digest: str
    previous_root: bytes
    keys: tuple[str, ...]
    """Every key that must sign (sorted); empty when the batch is unsigned."""
    signed: bool
    waiver: tuple[Mapping[str, Any], ...] = field(default=())
    """When unsigned: the plan's ``waived`` entries that waive signing for its points."""

    @property
    def count(self) -> int:
        return len(self.entries)

    def inclusion_proof(self, index: int) -> list[bytes]:
        """The RFC 9162 proof of entry ``index`` under :attr:`root`.

        Requires ``0 <= index < count``.
        """
        return MerkleTree(e.leaf_hash for e in self.entries).inclusion_proof(index)


def record_time(record: Record) -> datetime:
    """The time that places a record in a window: its slot if it has one, else its collection."""
    if isinstance(record, Gap):
        return record.scheduled_at
    return record.scheduled_at or record.collected_at


def covered_until(records: Iterable[Record]) -> str:
    """The instant just after the last slot or time any of ``records`` accounts for (a gap
    record of a run reaches its last slot): a chain head whose last batch holds them keeps
    the records before it (backfill starts there). A batch's last record and its gap
    records are enough: no other reaches further."""
    return instant(max(map(_record_end, records)) + _MS)


def _record_end(record: Record) -> datetime:
    if type(record) is Gap and record.last_scheduled_at is not None:
        return record.last_scheduled_at
    return record_time(record)


def epoch_ms(moment: datetime) -> int:
    """Milliseconds since 1970-01-01T00:00:00Z, rounded down. Requires an aware datetime."""
    return (moment - _EPOCH) // _MS


def record_order(record: Record) -> tuple[datetime, str, str]:
    """Sort key of a record in its batch: record time, point, type (``gap`` < ``reading``).

    Points compare as strings exactly as their UTF-8 bytes do (docs/records.md): UTF-8
    keeps code point order, and a point that has no UTF-8 form has no leaf.
    """
    if type(record) is Reading:
        return (record.scheduled_at or record.collected_at, record.point, "reading")
    return (record_time(record), record.point, "reading" if isinstance(record, Reading) else "gap")


def entry_order(entry: Entry) -> tuple[datetime, str, str, bytes]:
    """Sort key of a batch's entries: :func:`record_order`, then the leaf hash."""
    return (*record_order(entry.record), entry.leaf_hash)


def in_order(records: Iterable[Record]) -> bool:
    """Whether ``records`` are strictly ascending by (record time, point) already.

    Then sorting them is a no-op, and making a sort key per entry is skipped:
    a collector puts each device's records in time order, a read group's points
    usually in name order. Anything else (ties included) is left to the sort.
    """
    last_time: datetime | None = None
    last_point = ""
    for record in records:
        moment = (
            record.scheduled_at or record.collected_at
            if type(record) is Reading
            else record_time(record)
        )
        if last_time is not None and (
            moment < last_time or (moment == last_time and record.point <= last_point)
        ):
            return False
        last_time, last_point = moment, record.point
    return True


def window_bounds(spec: BatchSpec, window: int) -> tuple[str, str]:
    """The instants (:func:`instant` text) that start and end window index ``window``."""
    start = _EPOCH + window * spec.window_ms * _MS
    return instant(start), instant(start + spec.window_ms * _MS)


def make_batch(spec: BatchSpec, window: int, entries: Iterable[Entry], previous: bytes) -> Batch:
    """The batch of window index ``window`` (``[window·w, (window+1)·w)``) of ``spec``'s device.

    Requires every entry to be of that device and window.
    """
    listed = list(entries)
    ordered = tuple(
        listed if in_order(e.record for e in listed) else sorted(listed, key=entry_order)
    )
    start, end = window_bounds(spec, window)
    return Batch(
        device=spec.device,
        window_start=start,
        window_end=end,
        entries=ordered,
        root=root_of_hashes([e.leaf_hash for e in ordered]),
        plan_digest=spec.plan_digest,
        previous_root=previous,
        keys=spec.keys,
        signed=bool(spec.keys),
        waiver=spec.waiver,
    )


# --- statements and signatures ---------------------------------------------


@dataclass(frozen=True)
class Statement:
    """What a batch signature covers (docs/records.md, "Batch statement")."""

    device: str
    window_start: str
    window_end: str
    count: int
    root: bytes
    plan_digest: str
    previous_root: bytes
    point_map: bytes
    """The SHA-256 of the batch's :func:`point_map` (:func:`point_map_hash`)."""

    def members(self) -> dict[str, Any]:
        """The statement as JSON members, without ``format`` (audit entries say the same)."""
        return {
            "device": self.device,
            "window_start": self.window_start,
            "window_end": self.window_end,
            "count": self.count,
            "root": self.root.hex(),
            "plan_digest": self.plan_digest,
            "previous_root": self.previous_root.hex(),
            "point_map": self.point_map.hex(),
        }

    def to_bytes(self) -> bytes:
        return canonical_json({"format": STATEMENT_FORMAT, **self.members()})

    @classmethod
    def of(cls, batch: Batch) -> Statement:
        return cls(
            batch.device,
            batch.window_start,
            batch.window_end,
            batch.count,
            batch.root,
            batch.plan_digest,
            batch.previous_root,
            point_map_hash([e.record.point for e in batch.entries]),
        )

    @classmethod
    def parse(cls, data: bytes) -> Statement:
        """Raises MalformedStatement unless ``data`` is exactly a canonical v2 statement: a v1
        statement, which signs no point map, is refused too (docs/records.md)."""
        try:
            obj = read_json(data)
            parsed = cls(
                obj["device"],
                obj["window_start"],
                obj["window_end"],
                obj["count"],
                _hash(obj["root"]),
                obj["plan_digest"],
                _hash(obj["previous_root"]),
                _hash(obj["point_map"]),
            )
        except (ValueError, KeyError, TypeError) as exc:
            raise MalformedStatement(f"not a batch statement: {exc}") from exc
        if not _well_typed(parsed) or parsed.to_bytes() != data:
            raise MalformedStatement("not the canonical bytes of a converge.batch/v2 statement")
        return parsed


def _well_typed(s: Statement) -> bool:
    texts = (s.device, s.window_start, s.window_end, s.plan_digest)
    count_ok = isinstance(s.count, int) and not isinstance(s.count, bool) and s.count >= 0
    return count_ok and all(isinstance(t, str) for t in texts)


def _hash(text: str) -> bytes:
    value = bytes.fromhex(text)
    if len(value) != HASH_SIZE or value.hex() != text:
        raise ValueError(f"{text!r} is not 64 lowercase hex digits")
    return value


def point_map(points: list[str]) -> bytes:
    """A batch's point map: the canonical JSON array of its records' points, in batch order.

    Requires names with a UTF-8 form (every point that has a leaf); a list of
    strings is written by the C encoder, as :func:`engine.canonical.canonical_json` would
    write it, without its checks for numbers (a collector makes one per batch it seals).
    """
    return _NAMES.encode(points).encode()


def point_map_hash(points: list[str]) -> bytes:
    """The SHA-256 of the :func:`point_map` of records of ``points``: what a statement signs."""
    return _sha256(point_map(points)).digest()


def statement(batch: Batch) -> bytes:
    """The canonical JSON statement every required key signs."""
    return Statement.of(batch).to_bytes()


@dataclass(frozen=True)
class Signature:
    """One Ed25519 signature (64 bytes) of a statement by the named key."""

    key: str
    signature: bytes


def sign_batch(batch: Batch, signers: Mapping[str, Ed25519PrivateKey]) -> list[Signature]:
    """One signature per key of ``batch.keys`` (none for an unsigned batch).

    Raises :class:`MissingSigner` naming the first key that ``signers`` lacks.
    """
    missing = [k for k in batch.keys if k not in signers]
    if missing:
        raise MissingSigner(missing[0])
    data = statement(batch)
    return [Signature(k, signers[k].sign(data)) for k in batch.keys]


def verify_statement(
    data: bytes,
    signatures: Sequence[Signature],
    public_keys: Mapping[str, Ed25519PublicKey],
    *,
    previous_root: bytes | None,
) -> Statement:
    """Check a statement's signatures and chain link; return it parsed.

    ``public_keys`` holds every key that must have signed (the plan's keys;
    empty for an unsigned batch); signatures of other keys are ignored.
    ``previous_root`` is the root of the device's previous verified batch
    (:data:`ZERO_ROOT` for the first), or ``None`` to leave the chain unchecked.
    """
    parsed = Statement.parse(data)
    for key in sorted(public_keys):
        _check_key(data, key, public_keys[key], [s for s in signatures if s.key == key])
    if previous_root is not None and parsed.previous_root != previous_root:
        raise ChainBroken(parsed.previous_root, previous_root)
    return parsed


def _check_key(data: bytes, key: str, public: Ed25519PublicKey, sigs: list[Signature]) -> None:
    if not sigs:
        raise MissingSignature(key)
    for sig in sigs:
        try:
            public.verify(sig.signature, data)
        except InvalidSignature:
            raise BadSignature(key) from None


def verify_batch(
    data: bytes,
    signatures: Sequence[Signature],
    public_keys: Mapping[str, Ed25519PublicKey],
    records: Sequence[tuple[Record, bytes]],
    *,
    previous_root: bytes | None,
) -> Statement:
    """Check a statement (see :func:`verify_statement`) and that ``records`` are its batch.

    ``records`` are (record, salt) pairs in any order; they are sorted as the
    batcher sorts them. Raises CountMismatch, then RootMismatch (got = root of
    the records given, want = the signed root).
    """
    parsed = verify_statement(data, signatures, public_keys, previous_root=previous_root)
    if len(records) != parsed.count:
        raise CountMismatch(len(records), parsed.count)
    entries = sorted((Entry.of(r, s) for r, s in records), key=entry_order)
    got = root_of_hashes([e.leaf_hash for e in entries])
    if got != parsed.root:
        raise RootMismatch(got, parsed.root, "batch root")
    if point_map_hash([e.record.point for e in entries]) != parsed.point_map:
        raise PointMapMismatch
    return parsed


def verify_record(
    data: bytes, record: Record, salt: bytes, index: int, proof: Sequence[bytes]
) -> None:
    """Check that ``record`` with ``salt`` is entry ``index`` of the statement's batch.

    Verify the statement's signatures first (:func:`verify_statement`); this
    checks only the inclusion proof against its count and root.
    """
    parsed = Statement.parse(data)
    verify_inclusion(record_leaf_hash(record, salt), index, parsed.count, proof, parsed.root)
