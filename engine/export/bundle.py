"""Writing an audit bundle: the records an export decision allows, and everything that proves them.

The layout and every byte format are docs/bundle.md's; :mod:`engine.export.verifier`
(shipped in the bundle as ``verify.py``) is the check. This module gathers from
the store, under one read transaction after the export's decision and its
checkpoint have been written: the records, their batches (whole, or each
record's inclusion proof), the plans in force, the audit entries of those
batches, plans and the export itself (each with a C2SP tlog-proof under the
latest checkpoint), the checkpoints of the range with a consistency proof each
to the latest, the public keys, the deletion receipts and holds touching the
exported points in the range (``retention.json``), and the source files the
plans name (read from a folder on this machine, each only when its bytes are
the plan's). Members are written sorted, with fixed zip times, so the zip's
structure does not depend on when it is made.

A large export's records are read by worker processes on connections of their
own, each batch's taken only when it holds the very positions the transaction's
deletion receipts leave of it (else read again in the transaction): the bundle
holds what the transaction saw (:func:`_read_apart`).
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import stat
import struct
import zipfile
import zlib
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from itertools import chain, repeat
from pathlib import Path
from typing import Any

from isal import isal_zlib
from sqlalchemy import Connection, select

from engine import audit
from engine.access.data import Range
from engine.access.guard import Decision
from engine.canonical import canonical_json
from engine.errors import StoreError, VerificationError
from engine.export import verifier
from engine.keys import KeyVersion
from engine.report.health import Readings
from engine.sign.leaf import instant
from engine.sign.merkle import MerkleTree
from engine.sign.note import Checkpoint, split_note
from engine.store import data, reads
from engine.store.data import StoredBatch
from engine.store.retention import Scope, split_hashes
from engine.store.tables import PLANS
from engine.verify.retention import HOLD_KINDS

ZIP_TIME = (1980, 1, 1, 0, 0, 0)
"""Every member's zip time: a bundle's bytes do not depend on when it was written."""
DEFLATE_LEVEL = 1
"""zlib's fastest: a bundle deflates about 9 to 1 at it (8 % larger than at zlib's default, 6),
in under half the time."""
TLOG_PROOF = "c2sp.org/tlog-proof@v1"
RETENTION_KINDS = ("retention.deleted", *sorted(HOLD_KINDS))
Receipts = Mapping[int, Sequence[dict[str, Any]]]
"""The payloads of the log's deletion receipts, by the batch each names."""


@dataclass
class Gathered:
    """What a bundle holds, as member names and bytes (the records in :attr:`parts`), plus
    what the manifest names."""

    members: dict[str, bytes] = field(default_factory=dict)
    batches: list[int] = field(default_factory=list)
    plans: list[str] = field(default_factory=list)
    records: int = 0
    sources: list[str] = field(default_factory=list)
    """The paths of the plans' sources the bundle carries (``sources/<path>``)."""
    left_out: list[tuple[str, str]] = field(default_factory=list)
    """The paths of the plans' sources the bundle does not carry, and why."""
    counted: dict[int, Readings] = field(default_factory=dict)
    """The readings of each batch all of whose records were read at once (by id): the report
    counts them from here instead of reading them again."""
    parts: dict[str, Parts] = field(default_factory=dict)
    """The members gathered in parts, not in :attr:`members`: the records, a part per batch,
    deflated where it was read."""


@dataclass(frozen=True)
class Request:
    """What to export: the decision (its allowed points), the range, the signed log state."""

    decision: Decision
    span: Range
    origin: str
    audit_key: str
    keys: Sequence[KeyVersion]
    plan_keys: Sequence[str] = ()
    only: Mapping[int, frozenset[int]] | None = None
    """An archive's records: these positions of these batches (by id), no others."""
    sources: Path = Path(".")
    """The folder the plans' source paths are read under (the one they were compiled in)."""
    parallel: bool = False
    """Whether forked worker processes may read a large export's records (a command's own
    process may fork; a collector's, with its threads, must not)."""


def gather(conn: Connection, request: Request, checkpoint_size: int) -> Gathered:
    """Every member but the manifest, its signature, the report and ``verify.py``."""
    out = Gathered()
    entries = [(seq, raw) for seq, _, _, raw in reads.audit_entries(conn)][:checkpoint_size]
    tree = MerkleTree(verifier.leaf_hash(raw) for _, raw in entries)
    wanted: set[int] = {_decision_seq(entries, request.decision.id)}
    logged = _logged(entries)
    devices = {p.device for p in request.decision.allowed}
    stored = dict(_stored(entries, devices, request.span))
    _records(conn, request, out, wanted, logged.receipts, stored=stored)
    wanted.update(_dropped(entries, devices))
    try:
        out.members[verifier.RETENTION] = _retention(conn, request, out, logged, wanted)
    except (KeyError, TypeError, AttributeError, ValueError) as exc:
        raise _misshapen(exc) from exc
    _plans(conn, out, entries, wanted)
    bodies = (out.members[_plan_member(digest)] for digest in out.plans)
    carried, out.left_out = sources(bodies, request.sources)
    out.members.update((verifier.SOURCES + path, body) for path, body in carried.items())
    out.sources = sorted(carried)
    kept = _checkpoints(conn, request, tree)
    out.members[verifier.ENTRIES] = _entries(entries, wanted, tree, kept[-1][1])
    out.members[verifier.CHECKPOINTS] = json.dumps([note for _, note in kept], indent=1).encode()
    out.members[verifier.CONSISTENCY] = json.dumps(
        [
            {"size": size, "proof": _b64(tree.consistency_proof(size))}
            for size, _ in kept
            if size < tree.size
        ]
    ).encode()
    logs = {request.origin: request.audit_key}
    out.members[verifier.KEYS] = trust_file(request.keys, logs, request.plan_keys)
    return out


def _logged(entries: Sequence[tuple[int, bytes]]) -> Logged:
    try:
        return Logged.of(entries)
    except (KeyError, TypeError, AttributeError, ValueError) as exc:
        raise _misshapen(exc) from exc


def _misshapen(exc: Exception) -> VerificationError:
    """A retention entry of the log (a receipt, a hold's, an archive's) not shaped as
    docs/audit.md says: the bundle would carry what no verifier can read, so none is made."""
    return VerificationError(
        f"a retention entry of the audit log is not shaped as its kind ({type(exc).__name__}:"
        f" {exc}): converge audit verify names it; nothing exported"
    )


def trust_file(keys: Iterable[KeyVersion], logs: dict[str, str], plan_keys: Iterable[str]) -> bytes:
    """A trust file (docs/bundle.md): these key versions, each for its validity window; the key
    of each audit log, by origin; the keys that sign plans."""
    return json.dumps(
        {
            "format": verifier.TRUST_FORMAT,
            "logs": [{"origin": origin, "key": key} for origin, key in sorted(logs.items())],
            "plan_keys": sorted(plan_keys),
            "keys": [k.as_dict() for k in keys],
        },
        indent=1,
    ).encode()


def _dropped(entries: Sequence[tuple[int, bytes]], devices: set[str]) -> Iterator[int]:
    """The ``batch.dropped`` entries of the exported devices: a batch the spool dropped is a
    gap in its device's chain, which the verifier excuses by its entry."""
    for seq, raw in entries:
        if b'"batch.dropped"' in raw:
            entry = json.loads(raw)
            if entry["kind"] == "batch.dropped" and entry["payload"].get("device") in devices:
                yield seq


def _stored(
    entries: Sequence[tuple[int, bytes]], devices: set[str], span: Range
) -> Iterator[tuple[int, dict[str, Any]]]:
    """(seq, payload) of each ``batch.stored`` entry of the exported devices whose window meets
    the range: the batches the log says the store holds, which the export must carry."""
    for seq, raw in entries:
        if b'"batch.stored"' in raw:
            entry = json.loads(raw)
            said = entry["payload"]
            if (
                entry["kind"] == "batch.stored"
                and said.get("device") in devices
                and _meets(span, str(said.get("window_start")), str(said.get("window_end")))
            ):
                yield seq, said


SIGNED = ("device", "window_start", "window_end", "root")
"""What a batch's row, its statement and its ``batch.stored`` entry must say alike."""


def _statement(batch: StoredBatch) -> dict[str, Any]:
    """The members of ``batch``'s statement (its signed bytes); none when it is not JSON."""
    try:
        said = json.loads(batch.statement)
    except ValueError:
        return {}
    return said if isinstance(said, dict) else {}


def _differs(said: dict[str, Any], other: dict[str, Any]) -> str:
    """The members of :data:`SIGNED` two sayings differ in, each as ``said`` / ``other``."""
    return "; ".join(
        f"{key} {said.get(key)!r} / {other.get(key)!r}"
        for key in SIGNED
        if said.get(key) != other.get(key)
    )


def _check_logged(
    conn: Connection, carried: Sequence[StoredBatch], stored: Mapping[int, dict[str, Any]]
) -> None:
    """Refuse (VerificationError) a carried batch whose row's device or window differ from its
    statement's, and a ``batch.stored`` entry of the range (``stored``, by seq) whose batch the
    export does not carry, or carries with another device, window or root than the entry's. A
    bundle cannot itself show that no batch of the log was left out (a missing newest batch
    leaves no gap in the chain), so the export, which has the log, checks it."""
    for batch in carried:
        differs = _differs(_row(batch), _statement(batch))
        if differs:
            raise VerificationError(
                f"batch {batch.id} (entry {batch.entry_seq}): its row differs from its signed"
                f" statement (row / statement: {differs}): the store was changed outside"
                " Converge; converge audit verify names what"
            )
    by_seq = {batch.entry_seq: batch for batch in carried}
    for seq, said in sorted(stored.items()):
        found = by_seq.get(seq)
        if found is None:
            found = data.batch_of_entry(conn, seq)
            where = (
                "no batch of the store is recorded by it"
                if found is None
                else f"batch {found.id}, which it records, is not among the export's"
                f" (row / entry: {_differs(_row(found), said) or 'nothing differs'})"
            )
            raise VerificationError(
                f"batch.stored entry {seq} (device {said.get('device')!r}, window"
                f" {said.get('window_start')} .. {said.get('window_end')}, root"
                f" {said.get('root')}): {where}: the store was changed outside Converge;"
                " converge audit verify names what"
            )
        differs = _differs(_statement(found), said)
        if differs:
            raise VerificationError(
                f"batch {found.id}: its statement differs from its batch.stored entry {seq}"
                f" (statement / entry: {differs}): the store was changed outside Converge;"
                " converge audit verify names what"
            )


def _row(batch: StoredBatch) -> dict[str, Any]:
    """What a batch's row says of :data:`SIGNED` (its root: its statement's)."""
    return {
        "device": batch.device,
        "window_start": batch.window_start,
        "window_end": batch.window_end,
        "root": _signed_root(batch),
    }


def _decision_seq(entries: Sequence[tuple[int, bytes]], decision: str) -> int:
    needle = f'"decision":"{decision}"'.encode()
    return next(seq for seq, raw in reversed(entries) if needle in raw)


def _records(
    conn: Connection,
    request: Request,
    out: Gathered,
    wanted: set[int],
    receipts: Receipts,
    *,
    stored: Mapping[int, dict[str, Any]],
) -> None:
    """records.jsonl, records.csv and a member per batch of the exported devices in the range
    (an archive's: per batch that holds an archived record). The two records members are
    gathered in parts (a batch's each), never joined: each part deflated where its batch was
    read, the member's digest and CRC-32 taken part by part."""
    header = ",".join(verifier.CSV_COLUMNS).encode() + b"\n"
    lines, rows = Parts(), Parts()
    rows.add(header, deflate_part(header))
    out.parts.update({verifier.RECORDS: lines, verifier.RECORDS_CSV: rows})
    for batch, picked in _picked(conn, request, stored, receipts):
        out.batches.append(batch.id)
        wanted.add(batch.entry_seq)
        lines.add(picked.lines, picked.deflated[0])
        rows.add(picked.rows, picked.deflated[1])
        out.records += len(picked.positions)
        if picked.counted is not None and request.only is None:  # an archive's: part of a batch
            out.counted[batch.id] = picked.counted
        out.members[f"batches/{batch.id}.json"] = _batch_member(conn, batch, picked, receipts)
        if batch.plan_digest not in out.plans:
            out.plans.append(batch.plan_digest)


@dataclass(frozen=True)
class Part:
    """A part of a member, deflated (:func:`deflate_part`), and the part's CRC-32."""

    deflated: bytes
    crc: int


NO_PART = Part(b"", 0)


@dataclass(frozen=True)
class Picked:
    """The records a batch exports: their positions, record lines and CSV rows; and when each
    of its leaves is the usual reading, their count."""

    positions: Sequence[int]
    lines: bytes
    rows: bytes
    counted: Readings | None = None
    deflated: tuple[Part, Part] = (NO_PART, NO_PART)
    """The lines and the rows, each deflated as a part of its member (:func:`deflate_part`)."""


NOTHING = Picked([], b"", b"")
"""A batch in the bundle for its deletion receipt, none of its records exported."""

LINE = b'{"batch":%d,"position":%d,"leaf":%s}\n'
"""A line of records.jsonl: batch id, position, leaf bytes."""


PARALLEL_RECORDS = 200_000
"""An export of at least this many records (of its batches) is read by worker processes, when
its request allows them."""


@dataclass(frozen=True)
class Job:
    """A batch to pick records from: its id and how many records it signs, the points asked of
    its device, the range, an archive's positions of it; and its records (positions, leaves:
    two columns) or, for a worker process, where to read them."""

    batch: int
    count: int
    points: set[str]
    span: Range
    only: frozenset[int] | None = None
    records: data.Records | None = None
    source: reads.Source | None = None
    """The store a worker reads the batch from, on a connection of its own (:func:`_read_apart`);
    None when :attr:`records` are given."""
    left: tuple[int, ...] | None = None
    """The positions the log's deletion receipts (in the export's transaction) leave of the
    batch, when they removed any; None: every position, 0 to its count - 1."""
    made_by: int = field(default_factory=os.getpid)
    """The export's process: it reads in its transaction, never on a connection of its own
    (when a worker died, the jobs it left come back to it)."""


def _picked(
    conn: Connection, request: Request, stored: Mapping[int, dict[str, Any]], receipts: Receipts
) -> Iterator[tuple[StoredBatch, Picked]]:
    """Each batch of an allowed device in the range with the records it exports; first, unless
    an archive's records are asked, refuses to leave out a batch the log records
    (:func:`_check_logged`)."""
    allowed: dict[str, set[str]] = {}
    for point in request.decision.allowed:
        allowed.setdefault(point.device, set()).add(point.point)
    only = request.only
    work = [
        (batch, points)
        for device, points in sorted(allowed.items())
        for batch in data.batches(conn, device, request.span.start, request.span.end)
        if only is None or batch.id in only
    ]
    _check_logged(conn, [batch for batch, _ in work], stored if only is None else {})
    records = sum(batch.count for batch, _ in work)
    workers = verifier.worker_count(records, PARALLEL_RECORDS) if request.parallel else 0
    source = reads.source(conn) if workers else None
    jobs = (_job(conn, request, b, points, source=source, receipts=receipts) for b, points in work)
    picks = verifier.in_order(_pick, jobs, workers)
    for (batch, _), (job, apart) in zip(work, picks, strict=True):
        # a batch a worker did not find as this transaction's receipts leave it is read here
        picked = apart if apart is not None else _chosen(job, _records_here(conn, batch.id))
        if picked.positions or only is None:  # every batch: the chain is checked whole
            yield batch, picked


def _job(
    conn: Connection,
    request: Request,
    batch: StoredBatch,
    points: set[str],
    *,
    source: reads.Source | None,
    receipts: Receipts,
) -> Job:
    """The job of a batch: for a worker to read (``source``), or with its records read here."""
    only = None if request.only is None else request.only[batch.id]
    if source is None:
        return Job(batch.id, batch.count, points, request.span, only, _records_here(conn, batch.id))
    removed = {p for said in receipts.get(batch.id, ()) for p in _kept(said, batch)}
    left = None if not removed else tuple(p for p in range(batch.count) if p not in removed)
    return Job(batch.id, batch.count, points, request.span, only, source=source, left=left)


def _records_here(conn: Connection, batch: int) -> data.Records:
    return data.records_of(conn, [batch]).get(batch, ([], []))


def _pick(job: Job) -> Picked | None:
    """:func:`_chosen` of a job's records (a pure function of the job: a worker process may
    run it); None when a worker did not find them at the positions :attr:`Job.left` names,
    or could not read them."""
    records = job.records if job.records is not None else _read_apart(job)
    return None if records is None else _chosen(job, records)


def _chosen(job: Job, records: data.Records) -> Picked:
    """The records a batch exports, their lines and rows deflated too."""
    if job.only is not None:
        kept = [(p, leaf) for p, leaf in zip(*records, strict=True) if p in job.only]
        records = [p for p, _ in kept], [leaf for _, leaf in kept]
    batch, points, span = job.batch, job.points, job.span
    picked = _usual(records, batch, points, span) or _exported(
        zip(*records, strict=True), batch, points, span
    )
    return replace(picked, deflated=(deflate_part(picked.lines), deflate_part(picked.rows)))


def _read_apart(job: Job) -> data.Records | None:
    """In a worker process, the records of a job's batch read on the worker's own connection,
    when they are at the very positions the receipts of the export's transaction leave
    (:attr:`Job.left`); else None, and the export reads the batch again in its own
    transaction, as it does when no worker helps.

    A worker's connection reads the store as it is now, not as the export's transaction
    does: a retention run may have deleted records of the batch since (with receipts the
    bundle does not carry), and a store changed outside Converge is named by the export's
    own reading. Records at the positions the transaction's receipts leave are the records
    the transaction read there: records are never added to a stored batch, and never
    changed but outside Converge (then the bundle holds what the worker read, and its
    verifiers name the record). Reading in the worker spares the export's process the rows,
    and the sending of them."""
    assert job.source is not None
    if os.getpid() == job.made_by:  # a worker died, its jobs came back: read in the transaction
        return None
    driver = reads.kept_driver(job.source, autocommit=True)  # no transaction held between jobs
    if driver is None:
        return None  # the export's transaction reads it
    try:
        found = data.driver_records(driver, job.source.postgres, [job.batch])
    except StoreError:  # an edit through SQL
        return None  # the export's transaction reads it, and names what it cannot
    except reads.driver_errors(job.source):  # a lost link: its next job opens a new one
        reads.drop_kept(job.source, autocommit=True)
        return None
    positions, leaves = found.get(job.batch, ((), ()))
    left = range(job.count) if job.left is None else job.left
    return (positions, leaves) if list(positions) == list(left) else None


def _usual(records: data.Records, batch: int, points: set[str], span: Range) -> Picked | None:
    """Every leaf of a batch, read at once, when each is the usual reading of one of
    ``points`` in ``span`` (:func:`verifier.usual_rows`); else None."""
    positions, leaves = records
    if not leaves:
        return None
    lines = _lines(batch, positions, leaves)
    read = verifier.usual_rows(lines, len(leaves))
    if read is None or not {point.decode() for point in set(read.points)} <= points:
        return None
    if not (span.holds(min(read.times).decode()) and span.holds(max(read.times).decode())):
        return None
    return Picked(positions, lines, read.rows, Readings.of(read.points, read.times))


def _lines(batch: int, positions: Sequence[int], leaves: Sequence[bytes]) -> bytes:
    """A batch's record lines (:data:`LINE`), joined from their parts: a third faster than
    formatting each."""
    head, position = b'{"batch":%d,"position":' % batch, b"%d".__mod__
    parts = zip(repeat(head), map(position, positions), repeat(b',"leaf":'), leaves, repeat(b"}\n"))
    return b"".join(chain.from_iterable(parts))


def _exported(
    leaves: Iterable[tuple[int, bytes]], batch: int, points: set[str], span: Range
) -> Picked:
    """The records among a batch's leaves of ``points`` in ``span``, one by one. When few
    points are asked, a leaf that does not name one is not read at all."""
    needles = [b'"point":' + canonical_json(point) + b"," for point in points]
    few = len(needles) <= FEW_POINTS
    positions, lines, rows = [], [], []
    for position, leaf in leaves:
        if few and not any(needle in leaf for needle in needles):
            continue
        record = verifier.read_record(leaf, batch, position)
        if record is not None and record.point in points and span.holds(record.time):
            positions.append(position)
            lines.append(LINE % (batch, position, leaf))
            rows.append(record.csv)
    return Picked(positions, b"".join(lines), b"".join(rows))


FEW_POINTS = 4
"""Up to how many points of a device a leaf is searched for their names before it is read."""


def _batch_member(
    conn: Connection, batch: StoredBatch, picked: Picked, receipts: Receipts
) -> bytes:
    """The batch: statement, signatures, its entry's seq, and (when not every record of it is
    exported) each exported record's inclusion proof under its root and its point map."""
    said: dict[str, Any] = {
        "id": batch.id,
        "statement": batch.statement.decode(),
        "signatures": {key: sig.hex() for key, sig in sorted(batch.signatures.items())},
        "entry": batch.entry_seq,
    }
    if len(picked.positions) != batch.count:
        proving = bool(picked.positions)
        hashes = _leaf_hashes(conn, batch, receipts.get(batch.id, ()), proving)
        said["proofs"] = {}
        if batch.point_map is not None:  # which point each position not exported was
            said["point_map"] = batch.point_map.decode()
        if proving:
            tree = MerkleTree(hashes[p] for p in range(batch.count))
            said["proofs"] = {str(p): _b64(tree.inclusion_proof(p)) for p in picked.positions}
    return canonical_json(said)


def _leaf_hashes(
    conn: Connection, batch: StoredBatch, receipts: Iterable[dict[str, Any]], proving: bool
) -> dict[int, bytes]:
    """The leaf hash of each position of a batch: its stored record's, or the one a deletion
    receipt of the log kept when it removed it (never the store's ``erasures`` alone: anyone
    who can write the database can fill them). Raises VerificationError naming a position
    that no record holds and no receipt of the log removed, or (``proving`` records of the
    batch) whose leaf hash no receipt kept."""
    hashes: dict[int, bytes] = {}
    removed: set[int] = set()
    for said in receipts:
        kept = _kept(said, batch)
        removed.update(kept)
        hashes.update((p, h) for p, h in kept.items() if h is not None)
    hashes.update((p, verifier.leaf_hash(leaf)) for p, leaf in data.leaves(conn, batch.id))
    held = hashes.keys() if proving else hashes.keys() | removed
    missing = next((p for p in range(batch.count) if p not in held), None)
    if missing is not None:
        raise VerificationError(
            f"batch {batch.id}: position {missing} holds no record, and no deletion receipt of"
            " the log removed it (with its leaf hash): the store was changed outside Converge;"
            " converge audit verify names what"
        )
    return hashes


def _kept(said: dict[str, Any], batch: StoredBatch) -> dict[int, bytes | None]:
    """The positions a receipt removed from ``batch``, each with the leaf hash it kept (None
    when it kept none); none for a receipt that does not name the batch as it is signed, or
    is not one."""
    named = [said.get(key) for key in ("device", "window_start", "window_end", "plan", "root")]
    signed = [batch.device, batch.window_start, batch.window_end, batch.plan_digest]
    if named != [*signed, _signed_root(batch)]:
        return {}
    try:
        positions = [
            p for first, last in verifier.runs_within(said["positions"], batch.count)
            for p in range(first, last + 1)
        ]  # fmt: skip
        hashes = split_hashes(base64.b64decode(said["leaf_hashes"], validate=True))
    except (ValueError, KeyError, TypeError):
        return {}
    if len(hashes) != len(positions):
        return dict.fromkeys(positions)
    return dict(zip(positions, hashes, strict=True))


def _signed_root(batch: StoredBatch) -> str | None:
    """The root (hex) ``batch``'s statement signs; None when its statement is not JSON (the
    bundle's verifiers name that batch)."""
    root = _statement(batch).get("root")
    return root if isinstance(root, str) else None


@dataclass(frozen=True)
class Logged:
    """The log's retention entries, (seq, kind, payload) in seq order, and its deletion
    receipts' payloads by the batch each names."""

    entries: list[tuple[int, str, dict[str, Any]]]
    receipts: dict[int, list[dict[str, Any]]]
    decisions: dict[str, list[int]]
    """The ``access.decision`` entries of each decision id a hold entry names, by decision
    id, in seq order: what a hold's entries name (each the first of its id before it,
    whatever its action: a read decision there allows no hold)."""

    @classmethod
    def of(cls, entries: Sequence[tuple[int, bytes]]) -> Logged:
        """Read from the log's entries (each only when its bytes name a retention kind, or an
        access decision of an id a hold entry names)."""
        logged: list[tuple[int, str, dict[str, Any]]] = []
        receipts: dict[int, list[dict[str, Any]]] = {}
        decided: list[tuple[int, bytes]] = []
        for seq, raw in entries:
            if _kind(raw) is not None:  # its bytes name a kind: perhaps nested in a payload
                entry = json.loads(raw)
                kind, said = entry["kind"], entry["payload"]
                if kind in RETENTION_KINDS:
                    logged.append((seq, kind, said))
                if kind == "retention.deleted" and type(said.get("batch")) is int:
                    receipts.setdefault(said["batch"], []).append(said)
                if kind == "access.decision":
                    decided.append((seq, raw))
            elif _DECISION_KIND in raw:
                decided.append((seq, raw))
        named = [said.get("decision") for _, kind, said in logged if kind in HOLD_KINDS]
        return cls(logged, receipts, _decisions_named(decided, named))


def _decisions_named(
    decided: Sequence[tuple[int, bytes]], named: Sequence[Any]
) -> dict[str, list[int]]:
    """The entries of ``decided`` (seq, bytes) that are ``access.decision`` entries of a
    decision id in ``named``, by id; only those whose bytes hold one of the ids (as JSON
    spells a string, any value at all read from a hostile entry) are read. Each entry's
    ``"decision":`` members are found in one scan and looked up, so the cost does not grow
    with the holds times the decisions."""
    needles = {
        b'"decision":' + json.dumps(name, ensure_ascii=False).encode("utf-8", "surrogatepass")
        for name in named
    }
    found: dict[str, list[int]] = {}
    if not needles:
        return found
    for seq, raw in decided:
        if not needles.isdisjoint(_DECISION_MEMBER.findall(raw)):
            entry = json.loads(raw)
            if entry["kind"] == "access.decision":
                found.setdefault(str(entry["payload"].get("decision")), []).append(seq)
    return found


def _retention(
    conn: Connection, request: Request, out: Gathered, logged: Logged, wanted: set[int]
) -> bytes:
    """``retention.json``: the deletion receipts of the exported points in the range (each
    with its batch, records or not, and plan), and the holds touching the range or a carried
    receipt's batch window (their entries): a hold that made a receipt unlawful is carried
    even when the range starts after it ended, or covers only points of the receipt the
    export does not name (the verifiers judge every point a receipt deleted)."""
    points = {(p.device, p.point) for p in request.decision.allowed}
    span = request.span
    carried = [
        (seq, said)
        for seq, kind, said in logged.entries
        if kind == "retention.deleted" and _receipt_touches(said, points, span)
    ]
    touching = [seq for seq, _ in carried]
    for _, said in carried:
        _receipt_batch(conn, said, out, wanted, logged.receipts)
        if said.get("archive"):
            wanted.add(said["archive"]["entry"])
            if type(said["archive"].get("written")) is int:
                wanted.add(said["archive"]["written"])
    windows = [
        (points | _deleted_points(said), Range(said["window_start"], said["window_end"]))
        for _, said in carried
    ]
    placed: dict[int, int] = {}
    released: dict[int, int] = {}
    for seq, kind, said in logged.entries:
        if kind == "hold.placed" and any(
            _hold_touches(said, judged, w) for judged, w in [(points, span), *windows]
        ):
            placed[said["hold"]] = seq
        elif kind == "hold.released":
            released[said["hold"]] = seq
    holds = [
        {"hold": hold, "placed": seq, "released": released.get(hold)}
        for hold, seq in sorted(placed.items())
    ]
    wanted.update(touching, placed.values(), (h["released"] for h in holds if h["released"]))
    wanted.update(_decisions(logged, wanted))
    return canonical_json({"receipts": touching, "holds": holds})


def _decisions(logged: Logged, wanted: set[int]) -> list[int]:
    """The decision entries the carried hold entries name (what allowed each: the first entry
    of its id before the hold entry)."""
    found = []
    for seq, kind, said in logged.entries:
        if kind in HOLD_KINDS and seq in wanted:
            before = [d for d in logged.decisions.get(str(said.get("decision")), []) if d < seq]
            found.extend(before[:1])
    return found


_KINDS = {kind: f'"kind":"{kind}"'.encode() for kind in RETENTION_KINDS}
_DECISION_KIND = b'"kind":"access.decision"'
_DECISION_MEMBER = re.compile(rb'"decision":(?:"(?:[^"\\]|\\.)*"|[-+.0-9A-Za-z]+)')
"""A ``"decision":`` member and its value as canonical JSON writes a string or a number (or
true, false, null): what :func:`_decisions_named` looks ids up by."""


def _kind(raw: bytes) -> str | None:
    """The retention kind of an entry's bytes, if it is one (read without parsing it)."""
    return next((kind for kind, needle in _KINDS.items() if needle in raw), None)


def _receipt_touches(said: dict[str, Any], points: set[tuple[str, str]], span: Range) -> bool:
    """Whether a receipt deleted records of an exported point from a batch whose window meets
    the range."""
    return _meets(span, said["window_start"], said["window_end"]) and bool(
        _deleted_points(said) & points
    )


def _deleted_points(said: dict[str, Any]) -> set[tuple[Any, Any]]:
    """The (device, point) pairs a receipt deleted records of, as its expiries name them, or
    its ``points`` (the verifier refuses a receipt whose two differ)."""
    device = said.get("device")
    named = [p.get("point") for p in said.get("points", ())]
    named += [p for group in said.get("expiries", ()) for p in group.get("points", ())]
    return {(device, p) for p in named}


def _hold_touches(said: dict[str, Any], points: set[tuple[str, str]], span: Range) -> bool:
    scope = Scope.from_json(said)
    return _meets(span, scope.start or "", scope.end or "~") and any(
        scope.covers(device, point, span.start or "", span.end or "~") for device, point in points
    )


def _meets(span: Range, start: str, end: str) -> bool:
    return (span.start is None or end > span.start) and (span.end is None or start < span.end)


def _receipt_batch(
    conn: Connection, said: dict[str, Any], out: Gathered, wanted: set[int], receipts: Receipts
) -> None:
    """The batch a receipt deleted from, in the bundle even when none of its records is."""
    if said["batch"] in out.batches:
        return
    found = data.batches(conn, said["device"], said["window_start"], said["window_end"])
    for batch in (b for b in found if b.id == said["batch"]):
        out.batches.append(batch.id)
        wanted.add(batch.entry_seq)
        out.members[f"batches/{batch.id}.json"] = _batch_member(conn, batch, NOTHING, receipts)
        if batch.plan_digest not in out.plans:
            out.plans.append(batch.plan_digest)


def _plans(
    conn: Connection, out: Gathered, entries: Sequence[tuple[int, bytes]], wanted: set[int]
) -> None:
    """Each plan in force (its bytes, its signature) and its ``plan.deployed`` entry."""
    deployed = [(seq, raw) for seq, raw in entries if b'"plan.deployed"' in raw]
    for digest in out.plans:
        row = conn.execute(select(PLANS).where(PLANS.c.digest == digest)).one()
        out.members[_plan_member(digest)] = reads.as_bytes(row.body)
        if row.signature is not None:
            out.members[_plan_member(digest, ".sig")] = row.signature.encode()
        needle = f'"digest":"{digest}"'.encode()
        wanted.update(seq for seq, raw in deployed if needle in raw)


def _plan_member(digest: str, suffix: str = ".json") -> str:
    return f"plans/{digest.removeprefix('sha256:')}{suffix}"


def sources(plans: Iterable[bytes], folder: Path) -> tuple[dict[str, bytes], list[tuple[str, str]]]:
    """The files the ``plans`` (their bytes) name as sources, read under ``folder``, each by
    its path when its bytes hash to a digest a plan names for it; and each path left out, with
    why (an absolute path or one with ``..`` is never read, nor one leading out through a
    link)."""
    named: dict[str, set[str]] = {}
    for body in plans:
        for path, digest in json.loads(body).get("sources", {}).items():
            named.setdefault(path, set()).add(digest)
    carried: dict[str, bytes] = {}
    left_out: list[tuple[str, str]] = []
    for path, digests in sorted(named.items()):
        found = _source(folder, path)
        if isinstance(found, str):
            left_out.append((path, found))
            continue
        digest = "sha256:" + hashlib.sha256(found).hexdigest()
        if digest in digests:
            carried[path] = found
        others = sorted(digests - {digest})
        if others:
            left_out.append((path, _changed(digest, others, len(digests))))
    return carried, left_out


def _changed(digest: str, others: list[str], named: int) -> str:
    """Why a source whose bytes are ``digest`` is not (or not for every plan) the one named."""
    said = ", ".join(others)
    if len(others) == named:
        return f"changed since its plan was compiled (its SHA-256 is {digest}, not {said})"
    return f"carried, but a plan was compiled from other bytes of it ({said})"


def _source(folder: Path, path: str) -> bytes | str:
    """The bytes of the source ``path`` under ``folder``, or why it is not read."""
    problem = verifier.source_problem(path)
    if problem is not None:
        return problem
    file = folder / path
    try:
        if not file.resolve().is_relative_to(folder.resolve()):
            return f"it leads out of {folder} (through a link)"
        if not stat.S_ISREG(os.stat(file).st_mode):
            return "not a regular file"
        return file.read_bytes()
    except FileNotFoundError:
        return f"not found in {folder}"
    except OSError as exc:
        return f"cannot be read ({exc.strerror})"


def _entries(
    entries: Sequence[tuple[int, bytes]], wanted: set[int], tree: MerkleTree, latest: str
) -> bytes:
    """log/entries.jsonl: each wanted entry with its C2SP tlog-proof: the inclusion proof under
    the latest checkpoint, and that checkpoint's signed note."""
    lines = []
    for seq in sorted(wanted):
        raw = entries[seq][1]
        hashes = _b64(tree.inclusion_proof(seq))
        proof = "\n".join([TLOG_PROOF, f"index {seq}", *hashes, "", latest])
        lines.append(b'{"seq":%d,"proof":%s,"entry":%s}\n' % (seq, json.dumps(proof).encode(), raw))
    return b"".join(lines)


def _checkpoints(conn: Connection, request: Request, tree: MerkleTree) -> list[tuple[int, str]]:
    """The checkpoints (size, signed note) signed in the range, and the latest, last."""
    kept: list[tuple[int, str]] = []
    for row in reads.checkpoints(conn):
        if row.size > tree.size:
            continue
        at = audit.signed_time(Checkpoint.from_text(split_note(row.note)[0]))
        moment = None if at is None else instant(at)
        if row.size == tree.size or (moment is not None and request.span.holds(moment)):
            kept.append((row.size, row.note))
    return sorted(kept, key=lambda kept: kept[0])


def _b64(hashes: Iterable[bytes]) -> list[str]:
    return [base64.b64encode(h).decode() for h in hashes]


# --- the zip ------------------------------------------------------------------------------


def digests(members: Mapping[str, bytes]) -> dict[str, str]:
    """Each member's SHA-256, as the manifest names it (``sha256:<hex>``)."""
    return {name: "sha256:" + hashlib.sha256(body).hexdigest() for name, body in members.items()}


def manifest(gathered: Gathered, said: dict[str, Any], files: Mapping[str, str]) -> bytes:
    """The manifest (RFC 8785): what was asked and by whom, and every member's SHA-256
    (``files``: every member's, those of ``gathered.parts`` included)."""
    return canonical_json(
        {
            **said,
            "format": verifier.FORMAT,
            "files": dict(files),
            "batches": gathered.batches,
            "plans": gathered.plans,
            "records": gathered.records,
            "sources": gathered.sources,
        }
    )


@dataclass(frozen=True)
class Packed:
    """A member as a zip holds it: its bytes deflated (a raw stream), their CRC-32 and size."""

    deflated: bytes
    crc: int
    size: int


def deflate_part(body: bytes) -> Part:
    """``body`` deflated as a part of a member: a raw stream ended by a sync flush, not a
    final block. Parts joined in order, then :data:`LAST_BLOCK`, are one deflate stream of
    the bodies joined, whoever deflated each (a worker process may), and the same bytes
    whatever the number of workers.

    Deflated by ISA-L (``isal``) at :data:`PART_LEVEL`: a record's part deflates four times
    as fast as by zlib at its fastest level, and smaller (8 to 1, against 7); any inflater
    reads it (it is deflate). Its CRC-32 is taken there too: a member's is combined from its
    parts'."""
    if not body:
        return NO_PART
    squeeze = isal_zlib.compressobj(PART_LEVEL, isal_zlib.DEFLATED, -15)
    deflated = squeeze.compress(body) + squeeze.flush(isal_zlib.Z_SYNC_FLUSH)
    return Part(deflated, isal_zlib.crc32(body))


PART_LEVEL = 1
"""ISA-L's levels run from 0 to 3; at 1, records deflate as small as at 2, and faster."""


LAST_BLOCK = zlib.compressobj(DEFLATE_LEVEL, zlib.DEFLATED, -15).flush()
"""An empty final block: what ends a member deflated in parts."""


class Parts:
    """A member gathered in parts, each with its deflated part (:func:`deflate_part`): its
    digest, CRC-32 (combined from the parts') and size are taken as the parts come, and its
    bytes are never joined but for a zip that needs ZIP64 records (:func:`write_zip`)."""

    def __init__(self) -> None:
        self.bodies: list[bytes] = []
        self.deflated: list[bytes] = []
        self._sha256 = hashlib.sha256()
        self._crc = 0
        self._size = 0

    def add(self, body: bytes, part: Part) -> None:
        self.bodies.append(body)
        self.deflated.append(part.deflated)
        self._sha256.update(body)
        self._crc = isal_zlib.crc32_combine(self._crc, part.crc, len(body))
        self._size += len(body)

    def digest(self) -> str:
        """The member's SHA-256 as the manifest names it (as :func:`digests` does)."""
        return "sha256:" + self._sha256.hexdigest()

    def packed(self) -> Packed:
        """The member as a zip holds it: its parts deflated, joined, and the last block."""
        return Packed(b"".join(self.deflated) + LAST_BLOCK, self._crc, self._size)

    def body(self) -> bytes:
        """The member's bytes, joined (for zipfile to deflate: a zip with ZIP64 records)."""
        return b"".join(self.bodies)


def pack(members: Mapping[str, bytes]) -> dict[str, Packed]:
    """Each member deflated as zipfile deflates it, at :data:`DEFLATE_LEVEL` (zlib lets go of
    the GIL: a thread may pack while another makes the rest of the bundle)."""
    packed = {}
    for name, body in members.items():
        squeeze = zlib.compressobj(DEFLATE_LEVEL, zlib.DEFLATED, -15)
        packed[name] = Packed(squeeze.compress(body) + squeeze.flush(), zlib.crc32(body), len(body))
    return packed


def write_zip(
    path: Path,
    members: Mapping[str, bytes],
    packed: Mapping[str, Packed] | None = None,
    parts: Mapping[str, Parts] | None = None,
) -> None:
    """The members and those gathered in ``parts``, sorted, with fixed times and modes,
    deflated (those in ``packed`` and ``parts`` are already); written to ``path`` atomically
    (a temporary file beside it, renamed).

    zipfile deflates a member only as it writes it, and a bundle's members go in name order,
    the manifest before the records: the records could not be deflated before the manifest
    names them. Members deflated already are written here, with the very headers zipfile
    writes (tests/test_export.py compares: those in ``packed`` are zipfile's bytes whole,
    those in ``parts`` ISA-L's). A bundle that needs ZIP64 records is left to zipfile, which
    deflates every member itself, the parts joined."""
    partial = path.with_name(f".{path.name}.partial")
    parts = parts or {}
    ready = dict(packed or {}) | {name: part.packed() for name, part in parts.items()}
    ready.update(pack({name: body for name, body in members.items() if name not in ready}))
    if _fits(ready):
        _write_packed(partial, ready)
    else:
        _write_zipfile(partial, {**members, **{name: part.body() for name, part in parts.items()}})
    partial.replace(path)


ZIP64_LIMIT = (1 << 31) - 1
"""zipfile writes ZIP64 records for a size or an offset beyond this, for a member whose size
is within 5 % of it (deflated, it may grow), and for :data:`ZIP_COUNT_LIMIT` members or more."""
ZIP_COUNT_LIMIT = 0xFFFF
_HEADER = struct.Struct("<4s2B4HL2L2H")
_CENTRAL = struct.Struct("<4s4B4HL2L5H2L")
_END = struct.Struct("<4s4H2LH")
_DOS_DATE = (ZIP_TIME[0] - 1980) << 9 | ZIP_TIME[1] << 5 | ZIP_TIME[2]
_DOS_TIME = ZIP_TIME[3] << 11 | ZIP_TIME[4] << 5 | ZIP_TIME[5] // 2
_MODE = 0o644 << 16
_UTF8_NAME = 0x800
_VERSION, _UNIX = 20, 3
"""The zip version zipfile says it made a deflated member with, and needs to read it; the
system it says made it (not Windows)."""


def _fits(packed: Mapping[str, Packed]) -> bool:
    """Whether a zip of these members needs no ZIP64 record (as zipfile judges it)."""
    headers = sum(_HEADER.size + _CENTRAL.size + 2 * len(_name(n)[0]) for n in packed)
    total = headers + sum(len(p.deflated) for p in packed.values())
    return (
        len(packed) < ZIP_COUNT_LIMIT
        and total <= ZIP64_LIMIT
        and all(p.size * 1.05 <= ZIP64_LIMIT for p in packed.values())
    )


def _name(name: str) -> tuple[bytes, int]:
    """A member's name as zipfile writes it, and the flag it sets: UTF-8 when not ASCII."""
    try:
        return name.encode("ascii"), 0
    except UnicodeEncodeError:
        return name.encode(), _UTF8_NAME


def _write_packed(path: Path, packed: Mapping[str, Packed]) -> None:
    """The zip of members deflated already, with neither ZIP64 records nor data descriptors."""
    central = []
    with path.open("wb") as out:
        for name in sorted(packed):
            member, (encoded, flags) = packed[name], _name(name)
            kind = (_VERSION, 0, flags, zipfile.ZIP_DEFLATED, _DOS_TIME, _DOS_DATE)
            sizes = (len(member.deflated), member.size, len(encoded), 0)  # no extra field
            said = (*kind, member.crc, *sizes)
            # no comment, disk 0, no internal attributes, the mode, where the header is
            kept = (0, 0, 0, _MODE, out.tell())
            central.append(_CENTRAL.pack(b"PK\x01\x02", _VERSION, _UNIX, *said, *kept) + encoded)
            out.write(_HEADER.pack(b"PK\x03\x04", *said) + encoded)
            out.write(member.deflated)
        start = out.tell()
        out.write(b"".join(central))
        count, size = len(central), out.tell() - start
        out.write(_END.pack(b"PK\x05\x06", 0, 0, count, count, size, start, 0))


def _write_zipfile(path: Path, members: Mapping[str, bytes]) -> None:
    """The zip of these members, deflated and written by zipfile (ZIP64 records where needed)."""
    with zipfile.ZipFile(path, "w") as out:
        for name in sorted(members):
            info = zipfile.ZipInfo(name, ZIP_TIME)
            info.external_attr = _MODE
            # a ZipInfo does not take the ZipFile's level (zlib's default, 6, instead): say it
            out.writestr(info, members[name], zipfile.ZIP_DEFLATED, DEFLATE_LEVEL)


__all__ = [
    "Gathered",
    "Request",
    "digests",
    "gather",
    "manifest",
    "sources",
    "trust_file",
    "write_zip",
]
