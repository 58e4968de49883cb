"""Batches: all records of one device in one signing window, hashed, chained and signed.

A :class:`Batcher` is a collector sink (``async put``, ``async close``). It
puts each record, with a fresh salt, into the window ``[k·w, (k+1)·w)`` of
its device (``w`` = the plan's ``batch_window_ms``, times in UTC epoch ms of
:func:`record_time`) and hands each finished :class:`Batch` to ``on_batch``.
A window closes when a record of a later window of the same device
arrives, at :meth:`Batcher.flush` once ``now >= window end + grace``, and at
:meth:`Batcher.close`. A record arriving after its window closed opens that
window again and ends up in a further batch of the same window: nothing is
dropped, and the chain of previous roots orders the two.

The batch's records are sorted (:func:`entry_order`) so its root does not
depend on arrival order. Its :func:`statement` (canonical JSON) is signed
with Ed25519 by every key the plan requires; docs/records.md has the bytes.
Verification failures, all :class:`VerificationError`::

    MalformedStatement     statement bytes that are not a canonical batch statement
    MissingSignature(key)  a required key did not sign
    BadSignature(key)      a signature of a required key does not verify (a note.BadSignature)
    ChainBroken(got, want) the statement's previous root is not the device's last root
    CountMismatch(got, want) records given vs. count signed
    RootMismatch(got, want)  root of the records given vs. root signed
"""

from __future__ import annotations

import asyncio
import hashlib
import inspect
import json
import os
from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, NoReturn

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from engine.canonical import canonical_json
from engine.errors import ConvergeError
from engine.records import Gap, Reading, Record
from engine.sign import note
from engine.sign.leaf import SALT_SIZE, instant, leaf_bytes, new_salt, record_leaf_hash
from engine.sign.merkle import (
    HASH_SIZE,
    LEAF_PREFIX,
    MerkleTree,
    RootMismatch,
    VerificationError,
    root_of_hashes,
    verify_inclusion,
)

STATEMENT_FORMAT = "converge.batch/v1"
DEFAULT_WINDOW_MS = 60_000
ZERO_ROOT = bytes(HASH_SIZE)
"""The previous root of a device's first batch."""
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MS = timedelta(milliseconds=1)
_sha256 = hashlib.sha256

OnBatch = Callable[["Batch"], Awaitable[None] | None]
OnWindow = Callable[["DevicePlan", int, "Window"], Awaitable[None]]
"""Takes each closed window unhashed, instead of a :class:`Batch` (the evidence sink's sealer)."""


# --- errors ----------------------------------------------------------------


class MissingSigner(ConvergeError):
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


# --- what the plan says ----------------------------------------------------


@dataclass(frozen=True)
class PointSigning:
    """A point's signing facet and its signing waivers, from the plan."""

    required: bool = False
    keys: tuple[str, ...] = ()
    waivers: tuple[Mapping[str, Any], ...] = ()


@dataclass(frozen=True)
class DevicePlan:
    """What batching needs of one device plan."""

    device: str
    digest: str
    window_ms: int
    points: Mapping[str, PointSigning]


def device_plan(plan: Mapping[str, Any]) -> DevicePlan:
    """Read a plan body (docs/plans.md).

    The window is the smallest ``signing.batch_window_ms`` of the plan's points,
    or :data:`DEFAULT_WINDOW_MS` when none sets one. Raises ConvergeError for a
    point that requires signing but names no key, or a window that is not a
    positive integer.
    """
    device = str(plan["device"]["id"])
    points = {str(p["name"]): _point_signing(device, p) for p in plan["points"]}
    windows = [
        p["signing"]["batch_window_ms"]
        for p in plan["points"]
        if "batch_window_ms" in p.get("signing", {})
    ]
    window = min(windows, default=DEFAULT_WINDOW_MS)
    if not isinstance(window, int) or isinstance(window, bool) or window <= 0:
        raise ConvergeError(f"{device}: batch_window_ms must be a positive integer, not {window!r}")
    return DevicePlan(device, str(plan["digest"]), window, points)


def _point_signing(device: str, point: Mapping[str, Any]) -> PointSigning:
    signing = point.get("signing", {})
    required, keys = bool(signing.get("required", False)), tuple(sorted(signing.get("keys", ())))
    if required and not keys:
        raise ConvergeError(f"{device}/{point['name']}: signing is required but names no key")
    waivers = tuple(w for w in point.get("waived", ()) if "signing" in w.get("facets", ()))
    return PointSigning(required, keys, waivers)


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
        return cls(record, salt, leaf, _sha256(LEAF_PREFIX + leaf).digest())


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


def covered_until(record: Record) -> str:
    """The instant just after ``record``'s time: a chain head whose last record it is keeps
    the records before it (backfill starts there)."""
    return instant(record_time(record) + _MS)


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


def window_bounds(plan: DevicePlan, window: int) -> tuple[str, str]:
    """The instants (:func:`instant` text) that start and end window index ``window``."""
    start = _EPOCH + window * plan.window_ms * _MS
    return instant(start), instant(start + plan.window_ms * _MS)


def make_batch(plan: DevicePlan, window: int, entries: Iterable[Entry], previous: bytes) -> Batch:
    """The batch of window index ``window`` (``[window·w, (window+1)·w)``) of ``plan``'s device.

    Requires every entry to be of that device and window.
    """
    listed = list(entries)
    ordered = tuple(
        listed if in_order(e.record for e in listed) else sorted(listed, key=entry_order)
    )
    start, end = window_bounds(plan, window)
    keys, waiver = signing(plan, {e.record.point for e in ordered})
    return Batch(
        device=plan.device,
        window_start=start,
        window_end=end,
        entries=ordered,
        root=root_of_hashes([e.leaf_hash for e in ordered]),
        plan_digest=plan.digest,
        previous_root=previous,
        keys=keys,
        signed=bool(keys),
        waiver=waiver,
    )


def signing(
    plan: DevicePlan, points: set[str]
) -> tuple[tuple[str, ...], tuple[Mapping[str, Any], ...]]:
    """(keys, ()) if a point requires signing, else ((), the points' signing waivers)."""
    facets = [plan.points.get(p, PointSigning()) for p in points]
    keys = sorted({k for f in facets if f.required for k in f.keys})
    if keys:
        return tuple(keys), ()
    waivers = {canonical_json(w): w for f in facets for w in f.waivers}
    return (), tuple(waivers[c] for c in sorted(waivers))


# --- the batcher -----------------------------------------------------------


_FORKS = [0]
"""How many times this process is a forked child: a salt pool from before a fork is dropped."""
os.register_at_fork(after_in_child=lambda: _FORKS.__setitem__(0, _FORKS[0] + 1))


def _salts() -> Iterator[bytes]:
    """Fresh salts drawn from the CSPRNG many at a time; each byte is handed out once.

    One ``os.urandom`` call per record costs about as much as hashing its leaf;
    one call per 1,024 records does not. A forked child never uses the pool of
    its parent, so the two never hand out the same bytes. One pool per
    :class:`Batcher`, used by the thread that puts its records.
    """
    while True:
        forks = _FORKS[0]
        pool = os.urandom(SALT_SIZE * 1024)
        for at in range(0, len(pool), SALT_SIZE):
            if _FORKS[0] != forks:
                break
            yield pool[at : at + SALT_SIZE]


class Window:
    """The records of one open window in arrival order, with their salts, leaves and hashes.

    Four lists rather than an :class:`Entry` per record: a window holds up to a
    window's worth of a device's records, and every object alive that long is
    walked by each full garbage collection. Entries are made when the window
    closes, and live only until its batch is sealed.
    """

    __slots__ = ("hashes", "leaves", "records", "salts")

    def __init__(self) -> None:
        self.records: list[Record] = []
        self.salts: list[bytes] = []
        self.leaves: list[bytes] = []
        self.hashes: list[bytes] = []

    def entries(self) -> list[Entry]:
        return list(map(_entry, self.records, self.salts, self.leaves, self.hashes))


_new = object.__new__
_set_record, _set_salt, _set_leaf, _set_hash = (
    vars(Entry)[name].__set__ for name in ("record", "salt", "leaf", "leaf_hash")
)


def _entry(record: Record, salt: bytes, leaf: bytes, hashed: bytes) -> Entry:
    """``Entry(record, salt, leaf, hashed)`` at half the cost, for the records of a window.

    A frozen dataclass's ``__init__`` assigns through ``object.__setattr__``
    by name; setting the slots directly does the same in fewer steps.
    """
    entry: Entry = _new(Entry)
    _set_record(entry, record)
    _set_salt(entry, salt)
    _set_leaf(entry, leaf)
    _set_hash(entry, hashed)
    return entry


class Batcher:
    """A sink that cuts records into per-device, per-window batches for ``on_batch``.

    ``previous_roots`` resumes each device's chain (default: :data:`ZERO_ROOT`);
    ``grace_ms`` is how long :meth:`flush` waits after a window's end for late
    records. ``on_batch`` may be a plain or an async function. With ``on_window``,
    leaves are not hashed and each closed window goes to it instead of a batch
    to ``on_batch`` (which it then seals, chains and hands on itself).
    """

    def __init__(
        self,
        plans: Iterable[Mapping[str, Any]],
        on_batch: OnBatch,
        *,
        grace_ms: int = 5_000,
        previous_roots: Mapping[str, bytes] | None = None,
        salt: Callable[[], bytes] = new_salt,
        on_window: OnWindow | None = None,
    ) -> None:
        self.plans = {p.device: p for p in map(device_plan, plans)}
        self.on_batch, self.grace_ms, self.on_window = on_batch, grace_ms, on_window
        self.salt = _salts().__next__ if salt is new_salt else salt
        self.previous: dict[str, bytes] = dict(previous_roots or {})
        self.open: dict[str, dict[int, Window]] = {}
        self.closed = False
        self._ms: dict[datetime, int] = {}

    async def put(self, record: Record) -> None:
        """Add a record; closes the device's earlier open windows. Requires a planned device."""
        if self.add(record):
            await self.emit_earlier(record.device)

    def add(self, record: Record) -> bool:
        """Add a record without closing anything; ``True`` when the record's device has an
        earlier window open, which :meth:`emit_earlier` must then close.

        :meth:`put` in two halves, so that a caller with its own ``put`` (the
        evidence sink) adds a record without one more coroutine per record.
        This runs once per record, so it is written for speed: no per-record
        datetime arithmetic (:meth:`_epoch_ms`), salts drawn in bulk, no
        :class:`Entry` until the window closes.
        """
        plan = self.plans.get(record.device)
        if plan is None or self.closed or record.point not in plan.points:
            self._refuse(record)
        moment = (
            record.scheduled_at or record.collected_at
            if type(record) is Reading
            else record_time(record)
        )
        ms = None if moment.fold else self._ms.get(moment)
        window = (self._epoch_ms(moment) if ms is None else ms) // plan.window_ms
        salt = self.salt()
        leaf = leaf_bytes(record, salt)  # before any window: a record without a leaf leaves none
        windows = self.open.get(plan.device)
        if windows is None:
            windows = self.open[plan.device] = {}
        into = windows.get(window)
        if into is None:
            into = windows[window] = Window()
        into.records.append(record)
        into.salts.append(salt)
        into.leaves.append(leaf)
        if self.on_window is None:  # else whoever takes the window hashes its leaves
            into.hashes.append(_sha256(LEAF_PREFIX + leaf).digest())
        return len(windows) > 1  # rarely: the first record of a device's next window

    async def emit_earlier(self, device: str) -> None:
        """Close every window of ``device`` before the newest one it has open."""
        plan, windows = self.plans[device], self.open[device]
        newest = max(windows)
        for earlier in sorted(w for w in windows if w < newest):
            await self._emit(plan, earlier, windows.pop(earlier))

    def _epoch_ms(self, moment: datetime) -> int:
        """:func:`epoch_ms`, remembered: the records of one slot share their time.

        Only ``fold=0`` times are remembered: two times of the same zone that
        differ only in ``fold`` compare equal yet are an hour apart.
        """
        ms = self._ms.get(moment) if not moment.fold else None
        if ms is None:
            ms = epoch_ms(moment)
            if not moment.fold:
                if len(self._ms) >= 4096:
                    self._ms.clear()
                self._ms[moment] = ms
        return ms

    async def flush(self, now: datetime) -> None:
        """Close every window whose end + grace is at or before ``now``."""
        cutoff = epoch_ms(now) - self.grace_ms
        for device, windows in list(self.open.items()):
            plan = self.plans[device]
            for window in sorted(w for w in windows if (w + 1) * plan.window_ms <= cutoff):
                await self._emit(plan, window, windows.pop(window))

    async def close(self) -> None:
        """Close every open window. Called once, after the last record.

        Yields to the event loop after each batch, so that whoever takes the
        batches (the evidence sink's writer) works on them while the rest are
        cut; a record put meanwhile is refused, never dropped.
        """
        self.closed = True
        for device, windows in list(self.open.items()):
            for window in sorted(windows):
                await self._emit(self.plans[device], window, windows[window])
                await asyncio.sleep(0)
        self.open.clear()

    def _refuse(self, record: Record) -> NoReturn:
        if self.closed:
            raise ConvergeError("batcher is closed")
        if record.device not in self.plans:
            raise ConvergeError(f"record of device {record.device!r}, which has no plan")
        raise ConvergeError(f"record of {record.device}/{record.point}, not in the plan")

    async def _emit(self, plan: DevicePlan, window: int, records: Window) -> None:
        if self.on_window is not None:
            await self.on_window(plan, window, records)
            return
        previous = self.previous.get(plan.device, ZERO_ROOT)
        batch = make_batch(plan, window, records.entries(), previous)
        self.previous[plan.device] = batch.root
        result = self.on_batch(batch)
        if inspect.isawaitable(result):
            await result


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
        )

    @classmethod
    def parse(cls, data: bytes) -> Statement:
        """Raises MalformedStatement unless ``data`` is exactly a canonical v1 statement."""
        try:
            obj = json.loads(data)
            parsed = cls(
                obj["device"],
                obj["window_start"],
                obj["window_end"],
                obj["count"],
                _hash(obj["root"]),
                obj["plan_digest"],
                _hash(obj["previous_root"]),
            )
        except (ValueError, KeyError, TypeError) as exc:
            raise MalformedStatement(f"not a batch statement: {exc}") from exc
        if not _well_typed(parsed) or parsed.to_bytes() != data:
            raise MalformedStatement("not the canonical bytes of a converge.batch/v1 statement")
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
