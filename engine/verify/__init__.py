"""Stage verify: recompute every leaf, batch root, signature, audit entry and checkpoint.

:func:`verify_store` reads a store and trusts nothing in it but what the given
public keys signed. It does not stop at the first failure: every problem is
named (device and batch, audit entry, checkpoint, plan) so an auditor sees
the whole extent of a tamper. What each check catches is in docs/audit.md.

The hot part is the records: they are streamed in batch order straight from
the driver (no ORM rows), each leaf hashed once, each batch's root rebuilt;
a large store is split by batch-id ranges across worker processes, one per
CPU, each with its own connection, and the report is the same either way.
"""

from __future__ import annotations

import hashlib
import json
import multiprocessing
import os
import sqlite3
import sys
from collections import defaultdict
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor
from contextlib import closing, contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from functools import partial
from itertools import chain, groupby, pairwise, repeat
from multiprocessing.context import BaseContext
from operator import itemgetter
from pathlib import Path
from typing import Any, NamedTuple

from sqlalchemy import Connection, select

from engine import audit
from engine.canonical import canonical_json
from engine.errors import ConvergeError, KeyStoreError, VerificationError
from engine.heap import fewer_collections
from engine.keys import KeyStore, KeyVersion, SignatureRejected, verify_signature
from engine.plans.format import verify_plan
from engine.plans.signature import PlanClaim, key_versions_check
from engine.sign import note
from engine.sign.batch import ZERO_ROOT, MalformedStatement, Statement
from engine.sign.merkle import (
    LEAF_PREFIX,
    MerkleLog,
    MerkleTree,
    root_of_hashes,
    verify_consistency,
)
from engine.store.store import Store
from engine.store.tables import AUDIT, BATCHES, CHECKPOINTS, META, PLANS, SIGNATURES

Progress = Callable[[int], None]
"""Called with the number of records verified so far, every few thousand."""


@dataclass(frozen=True)
class Problem:
    """One failed check: what it is about, and what is wrong."""

    item: str
    message: str

    def __str__(self) -> str:
        return f"{self.item}: {self.message}"


@dataclass
class Report:
    problems: list[Problem] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    """Facts an auditor should know that are not failures (entries after the last checkpoint)."""

    @property
    def ok(self) -> bool:
        return not self.problems

    def add(self, item: str, message: str) -> None:
        self.problems.append(Problem(item, message))


@dataclass(frozen=True)
class Trust:
    """The public keys an auditor trusts: every version of each named key."""

    keys: Mapping[str, Sequence[KeyVersion]]

    @classmethod
    def from_key_store(cls, store: KeyStore) -> Trust:
        return cls({name: store.versions(name) for name in store.names()})

    @classmethod
    def from_json(cls, files: Sequence[Path]) -> Trust:
        """Files written by ``converge keys export-public NAME --format json``."""
        keys: dict[str, list[KeyVersion]] = defaultdict(list)
        for path in files:
            try:
                listed = json.loads(path.read_text("utf-8"))
                for item in listed:
                    keys[item["name"]].append(KeyVersion.from_dict(item))
            except (OSError, ValueError, KeyError, TypeError) as exc:
                raise ConvergeError(f"{path}: not a public key export ({exc})") from exc
        return cls(dict(keys))

    def versions(self) -> list[KeyVersion]:
        return [v for versions in self.keys.values() for v in versions]


@dataclass
class BatchInfo:
    id: int
    device: str
    label: str
    count: int
    root: bytes
    previous_root: bytes


def verify_store(
    store: Store,
    trust: Trust,
    witness: Path | None = None,
    progress: Progress | None = None,
    workers: int | None = None,
) -> Report:
    """Check everything in ``store`` against ``trust`` (and the ``witness`` file, if given).

    ``workers``: how many processes hash the records (None: one per CPU for a
    store of at least :data:`PARALLEL_RECORDS` records, else this one alone).
    """
    report = Report()
    with store.reading() as conn:
        log = _check_log(conn, report)
        origin = _meta(conn, audit.ORIGIN_KEY)
        _check_checkpoints(conn, log, origin, trust, report)
        if witness is not None:
            _check_witness(witness, log, origin, trust, report)
        plans = _check_plans(conn, log, trust, report)
        batches = _check_batches(conn, log, plans, trust, report)
        _check_chains(batches, log, report)
        _check_records(conn, batches, report, progress, workers)
    return report


# --- the audit log ---------------------------------------------------------------------


@dataclass
class Log:
    entries: dict[int, audit.AuditEntry]
    hashes: list[bytes]

    def of_kind(self, kind: str) -> Iterator[audit.AuditEntry]:
        return (e for e in self.entries.values() if e.kind == kind)


def _check_log(conn: Connection, report: Report) -> Log:
    log = Log({}, [])
    rows = conn.execute(select(AUDIT).order_by(AUDIT.c.seq))
    expected = 0
    for seq, time, kind, stored in rows:
        data = _as_bytes(stored)
        if seq != expected:
            missing = f"{expected}" if seq == expected + 1 else f"{expected}..{seq - 1}"
            report.add(f"audit entry {missing}", "deleted: the log has a hole here")
        expected = seq + 1
        log.hashes.append(hashlib.sha256(b"\x00" + data).digest())
        try:
            entry = audit.AuditEntry.parse(data)
        except (ValueError, TypeError) as exc:
            report.add(f"audit entry {seq}", f"not a canonical entry ({exc})")
            continue
        if (entry.seq, entry.time, entry.kind) != (seq, time, kind):
            report.add(f"audit entry {seq}", "its seq, time or kind column disagrees with it")
        log.entries[seq] = entry
    report.counts["audit entries"] = len(log.hashes)
    _check_state(conn, log, report)
    return log


def _check_state(conn: Connection, log: Log, report: Report) -> None:
    """The compact state the next append starts from must be that of the stored entries."""
    saved = _meta(conn, audit.STATE_KEY)
    if saved is None and not log.hashes:
        return
    recomputed = MerkleLog()
    for leaf in log.hashes:
        recomputed.append_hash(leaf)
    want = audit.saved_state(recomputed)
    try:
        state = json.loads(saved) if saved else None
    except ValueError:
        state = None
    if state != want:
        size = state.get("size") if isinstance(state, dict) else None
        report.add(
            "audit log",
            f"its saved state (size {size}) is not that of the {recomputed.size} stored entries",
        )


def _meta(conn: Connection, key: str) -> str | None:
    found = conn.execute(select(META.c.value).where(META.c.key == key)).scalar()
    return None if found is None else str(found)


# --- checkpoints and the witness --------------------------------------------------------


def _open(text: str, origin: str, trust: Trust, signed_at: str | None) -> note.Checkpoint:
    """The checkpoint of ``text`` if a trusted version, valid when it signed, signed it."""
    for version in trust.versions():
        verifier = note.verifier_key(origin, version.key)
        try:
            checkpoint = note.open_checkpoint(text, [verifier], origin)
        except note.NoKnownSignature:
            continue
        if signed_at is not None and not version.valid_at(_instant(signed_at)):
            raise note.BadSignature(
                f"signed by {version.name} v{version.version} outside its validity"
            )
        return checkpoint
    raise note.NoKnownSignature("no signature by a trusted key")


def _instant(text: str) -> datetime:
    """A stored time as an aware datetime; raises BadTime for anything else."""
    try:
        moment = datetime.fromisoformat(text)
    except (TypeError, ValueError):
        raise BadTime(f"time {text!r} is not an instant") from None
    if moment.tzinfo is None:
        raise BadTime(f"time {text!r} has no time zone")
    return moment


class BadTime(VerificationError):
    """A stored time that is not an instant with a time zone."""


def _check_checkpoints(
    conn: Connection, log: Log, origin: str | None, trust: Trust, report: Report
) -> None:
    rows = conn.execute(select(CHECKPOINTS).order_by(CHECKPOINTS.c.id)).all()
    report.counts["checkpoints"] = len(rows)
    if not rows and log.hashes:
        report.add("audit log", "no checkpoint: nothing signs the log")
    tree = MerkleTree(log.hashes)
    signed: list[tuple[str, note.Checkpoint]] = []
    for row in rows:
        label = f"checkpoint {row.id} (size {row.size})"
        checkpoint = _checkpoint(
            label, row.note, origin, trust, signed_at=row.created_at, report=report
        )
        if checkpoint is None:
            continue
        if checkpoint.size != row.size:
            report.add(label, f"the note says size {checkpoint.size}")
        signed.append((label, checkpoint))
    _check_forks(signed, report)
    good = [(label, c) for label, c in signed if _matches(label, c, tree, report)]
    _check_consistency(good, tree, report)
    last = max((c.size for _, c in good), default=0)
    if good and last < tree.size:
        report.notes.append(f"audit entries {last}..{tree.size - 1} are after the last checkpoint")


def _checkpoint(
    label: str,
    text: str,
    origin: str | None,
    trust: Trust,
    *,
    signed_at: str | None,
    report: Report,
) -> note.Checkpoint | None:
    if origin is None:
        report.add(label, "the store has no log origin")
        return None
    try:
        return _open(text, origin, trust, signed_at)
    except VerificationError as exc:
        report.add(label, f"signature does not verify ({exc})")
        return None


def _matches(label: str, checkpoint: note.Checkpoint, tree: MerkleTree, report: Report) -> bool:
    if checkpoint.size > tree.size:
        report.add(
            label,
            f"the log was truncated: the checkpoint signs {checkpoint.size} "
            f"entries, {tree.size} are stored",
        )
        return False
    if tree.root(checkpoint.size) != checkpoint.root_hash:
        report.add(
            label,
            f"the first {checkpoint.size} entries do not hash to the signed root "
            "(an entry was changed, removed or inserted)",
        )
        return False
    return True


def _check_forks(signed: list[tuple[str, note.Checkpoint]], report: Report) -> None:
    """Two signed checkpoints of one size with two roots: the log was forked."""
    seen: dict[int, tuple[str, bytes]] = {}
    for label, checkpoint in signed:
        other = seen.setdefault(checkpoint.size, (label, checkpoint.root_hash))
        if other[1] != checkpoint.root_hash:
            report.add(label, f"fork: {other[0]} signs another root for the same size")


def _check_consistency(
    good: list[tuple[str, note.Checkpoint]], tree: MerkleTree, report: Report
) -> None:
    ordered = sorted(good, key=lambda lc: lc[1].size)
    for (_, old), (label, new) in pairwise(ordered):
        try:
            proof = tree.consistency_proof(old.size, new.size)
            verify_consistency(old.size, new.size, old.root_hash, new.root_hash, proof)
        except VerificationError as exc:
            report.add(label, f"not consistent with the checkpoint of size {old.size} ({exc})")


def _check_witness(
    witness: Path, log: Log, origin: str | None, trust: Trust, report: Report
) -> None:
    tree = MerkleTree(log.hashes)
    try:
        notes = list(audit.witness_notes(witness))
    except (OSError, ValueError, KeyError) as exc:
        report.add(f"witness {witness}", f"cannot be read ({exc})")
        return
    for number, text in notes:
        label = f"witness {witness.name}:{number}"
        checkpoint = _checkpoint(label, text, origin, trust, signed_at=None, report=report)
        if checkpoint is None:
            continue
        if checkpoint.size > tree.size:
            report.add(
                label,
                f"the store is older than the witnessed log: it holds {tree.size} "
                f"entries, {checkpoint.size} were witnessed (restored copy?)",
            )
        elif tree.root(checkpoint.size) != checkpoint.root_hash:
            report.add(label, "the store's log differs from the witnessed one (fork or rewrite)")


# --- plans and batches -----------------------------------------------------------------


def _check_plan_signature(
    label: str, signed: str, body: Mapping[str, Any], trust: Trust, report: Report
) -> None:
    """A stored plan signature must be by a trusted key, valid then, and name this plan."""
    try:
        _, signatures = note.split_note(signed)
        names = sorted({s.name for s in signatures} & trust.keys.keys())
        if not names:
            raise note.NoKnownSignature("signed by no trusted key")
        claim = PlanClaim.parse(key_versions_check(names[0], trust.keys[names[0]])(signed.encode()))
    except (VerificationError, KeyStoreError) as exc:
        report.add(label, f"its signature does not verify ({exc})")
        return
    if (claim.device, claim.digest) != (body["device"]["id"], body["digest"]):
        report.add(label, f"its signature is of another plan ({claim.device} {claim.digest})")


def _check_plans(
    conn: Connection, log: Log, trust: Trust, report: Report
) -> dict[str, dict[str, Any]]:
    plans: dict[str, dict[str, Any]] = {}
    for row in conn.execute(select(PLANS)):
        label = f"plan {row.digest} ({row.device})"
        try:
            body = verify_plan(bytes(row.body), label)
        except ConvergeError as exc:
            report.add(label, str(exc))
            continue
        if body["digest"] != row.digest or body["device"]["id"] != row.device:
            report.add(label, "the stored digest or device is not the plan's")
        if row.signature is not None:
            _check_plan_signature(label, row.signature, body, trust, report)
        plans[row.digest] = body
    deployed = {e.payload.get("digest") for e in log.of_kind("plan.deployed")}
    for digest in sorted(deployed - plans.keys(), key=str):
        report.add(f"plan {digest}", "deployed (audit log) but not in the store")
    for digest in sorted(plans.keys() - deployed):
        report.add(f"plan {digest}", "in the store but never deployed (no audit entry)")
    report.counts["plans"] = len(plans)
    return plans


def _check_batches(
    conn: Connection, log: Log, plans: Mapping[str, dict[str, Any]], trust: Trust, report: Report
) -> dict[int, BatchInfo]:
    signatures: dict[int, dict[str, bytes]] = defaultdict(dict)
    for batch_id, key, signature in conn.execute(select(SIGNATURES)):
        signatures[batch_id][key] = bytes(signature)
    batches: dict[int, BatchInfo] = {}
    recorded: set[int] = set()
    for row in conn.execute(select(BATCHES).order_by(BATCHES.c.id)):
        label = f"batch {row.id} ({row.device} {row.window_start})"
        info = _check_batch(
            row,
            label,
            log,
            plans,
            signatures=signatures.pop(row.id, {}),
            trust=trust,
            report=report,
        )
        recorded.add(row.audit_seq)
        if info is not None:
            batches[row.id] = info
    for batch_id in signatures:
        report.add(f"batch {batch_id}", "signatures of a batch that is not stored")
    for entry in log.of_kind("batch.stored"):
        if entry.seq not in recorded:
            p = entry.payload
            report.add(
                f"batch of {p.get('device')} {p.get('window_start')}",
                f"deleted: audit entry {entry.seq} records it (root {p.get('root')}), "
                "the store has no such batch",
            )
    report.counts["batches"] = len(batches)
    return batches


def _check_batch(
    row: Any,
    label: str,
    log: Log,
    plans: Mapping[str, dict[str, Any]],
    *,
    signatures: dict[str, bytes],
    trust: Trust,
    report: Report,
) -> BatchInfo | None:
    try:
        head = Statement.parse(bytes(row.statement))
    except MalformedStatement as exc:
        report.add(label, f"statement: {exc}")
        return None
    columns = (
        row.device,
        row.window_start,
        row.window_end,
        row.count,
        bytes(row.root),
        bytes(row.previous_root),
        row.plan_digest,
    )
    if columns != (
        head.device,
        head.window_start,
        head.window_end,
        head.count,
        head.root,
        head.previous_root,
        head.plan_digest,
    ):
        report.add(label, "its columns disagree with its signed statement")
    entry = log.entries.get(row.audit_seq)
    keys = _keys(row.keys)
    if row.keys != canonical_json(list(keys)).decode():
        report.add(label, "its keys column is not the canonical JSON of its keys")
    if entry is None or entry.kind != "batch.stored":
        report.add(label, f"audit entry {row.audit_seq} does not record it")
    elif entry.payload != _payload(head, keys, row.waiver):
        report.add(label, f"differs from what audit entry {entry.seq} records of it")
    _check_plan_keys(label, head, keys, plans, report)
    _check_signatures(
        label,
        bytes(row.statement),
        keys,
        signatures=signatures,
        trust=trust,
        signed_at=entry.time if entry else None,
        report=report,
    )
    return BatchInfo(row.id, head.device, label, head.count, head.root, head.previous_root)


def _keys(text: str) -> tuple[str, ...]:
    try:
        keys = json.loads(text)
    except ValueError:
        return ("<not JSON>",)
    return tuple(keys) if isinstance(keys, list) else ("<not a list>",)


def _payload(head: Statement, keys: tuple[str, ...], waiver: str) -> dict[str, Any]:
    try:
        waived = json.loads(waiver)
    except ValueError:
        waived = waiver
    return {**head.members(), "keys": list(keys), "waiver": waived}


def _check_plan_keys(
    label: str,
    head: Statement,
    keys: tuple[str, ...],
    plans: Mapping[str, dict[str, Any]],
    report: Report,
) -> None:
    plan = plans.get(head.plan_digest)
    if plan is None:
        report.add(label, f"its plan {head.plan_digest} is not in the store")
        return
    required = {
        k
        for p in plan["points"]
        if p.get("signing", {}).get("required")
        for k in p["signing"].get("keys", ())
    }
    waivable = any(
        "signing" in w.get("facets", ()) for p in plan["points"] for w in p.get("waived", ())
    )
    if not set(keys) <= required:
        report.add(label, f"signed by keys {sorted(set(keys) - required)} its plan does not name")
    if required and not keys and not waivable:
        report.add(label, "unsigned, but its plan requires signing and waives none of it")


def _check_signatures(
    label: str,
    statement: bytes,
    keys: tuple[str, ...],
    *,
    signatures: dict[str, bytes],
    trust: Trust,
    signed_at: str | None,
    report: Report,
) -> None:
    for key in keys:
        signature = signatures.pop(key, None)
        if signature is None:
            report.add(label, f"signature of key {key!r} is missing")
        elif key not in trust.keys:
            report.add(label, f"key {key!r} is not among the trusted keys")
        elif signed_at is not None:
            try:
                verify_signature(trust.keys[key], statement, signature, _instant(signed_at))
            except (SignatureRejected, BadTime) as exc:
                report.add(label, f"signature of key {key!r} does not verify ({exc})")
    for key in signatures:
        report.add(label, f"signature of key {key!r}, which the batch does not require")


def _check_chains(batches: Mapping[int, BatchInfo], log: Log, report: Report) -> None:
    """Each device's batches form one chain from the zero root; dropped batches excused."""
    dropped = {
        (e.payload.get("device"), e.payload.get("root")) for e in log.of_kind("batch.dropped")
    }
    by_device: dict[str, list[BatchInfo]] = defaultdict(list)
    for info in batches.values():
        by_device[info.device].append(info)
    for device, device_batches in by_device.items():
        excused = {bytes.fromhex(r) for d, r in dropped if d == device and isinstance(r, str)}
        roots = {b.root for b in device_batches} | excused
        following: dict[bytes, BatchInfo] = {}
        for b in sorted(device_batches, key=lambda b: b.id):
            if b.previous_root != ZERO_ROOT and b.previous_root not in roots:
                report.add(
                    b.label,
                    f"chain broken: the batch before it (root "
                    f"{b.previous_root.hex()[:16]}…) is not stored",
                )
            other = following.setdefault(b.previous_root, b)
            if other is not b:
                report.add(b.label, f"chain forked: {other.label} follows the same batch")


# --- records -------------------------------------------------------------------------------


Row = tuple[int, int, bytes]
Hashes = list[bytes] | dict[int, bytes]
"""A batch's leaf hashes: in position order, or by position when the rows are not 0..n-1."""
_BATCH_ID, _POSITION, _LEAF = itemgetter(0), itemgetter(1), itemgetter(2)

PARALLEL_RECORDS = 100_000
"""A store signing at least this many records is verified by worker processes, one per CPU."""
_MAX_WORKERS = 8
"""More would mostly wait for the database (and hold as many PostgreSQL connections)."""
_RANGES_PER_WORKER = 4
"""Batch-id ranges per worker: progress comes as each ends, and a worker done early takes more."""

_TYPE = {"readings": "readings", "gap_records": "gap records"}
"""Record tables and how the report counts them."""
_MARKER = {"readings": b'"type":"reading"', "gap_records": b'"type":"gap"'}


@dataclass(frozen=True)
class BatchCheck:
    """What one batch's rows show, without its leaves: small enough for a worker to send back.

    ``root`` is the Merkle root of the leaf hashes at positions 0..positions-1,
    or None when one of those positions (the first is ``missing``) has no record.
    """

    batch_id: int
    rows: dict[str, int]
    """Rows per table."""
    positions: int
    root: bytes | None
    missing: int | None
    problems: list[Problem]
    """Two records at one position, records of another type: named while hashing."""


class _Source(NamedTuple):
    """What a worker process connects to: a SQLite file, or a PostgreSQL (libpq) URL."""

    postgres: bool
    target: str


def _check_records(
    conn: Connection,
    batches: Mapping[int, BatchInfo],
    report: Report,
    progress: Progress | None,
    workers: int | None,
) -> None:
    """Compare each batch's rows, hashed and rebuilt into a root, with its signed statement.

    With fewer garbage collections: every row the driver returns is a new
    tuple, which the cyclic collector would scan every 700 rows for nothing.
    """
    report.counts.update(dict.fromkeys(_TYPE.values(), 0))
    seen: set[int] = set()
    done = 0
    with fewer_collections():
        for check in _batch_checks(conn, batches, workers):
            seen.add(check.batch_id)
            done += sum(check.rows.values())
            _compare(check, batches.get(check.batch_id), report)
            if progress is not None:
                progress(done)
    for batch_id in batches.keys() - seen:
        info = batches[batch_id]
        if info.count:
            report.add(info.label, f"all its {info.count} records are missing")


def _compare(check: BatchCheck, info: BatchInfo | None, report: Report) -> None:
    """Count ``check``'s rows, and report what is wrong with them (``info``: their batch)."""
    for table, rows in check.rows.items():
        report.counts[_TYPE[table]] += rows
    report.problems.extend(check.problems)
    if info is None:
        report.add(
            f"batch {check.batch_id}",
            f"{sum(check.rows.values())} records of a batch that is not stored (forged?)",
        )
    elif check.positions != info.count:
        report.add(
            info.label,
            f"holds {check.positions} records, its statement signs "
            f"{info.count} (records deleted or inserted)",
        )
    elif check.missing is not None:
        report.add(info.label, f"record position {check.missing} is missing (records reordered?)")
    elif check.root != info.root:
        report.add(info.label, "its records do not hash to its signed root (a record was changed)")


def _batch_checks(
    conn: Connection, batches: Mapping[int, BatchInfo], workers: int | None
) -> Iterator[BatchCheck]:
    """The check of every batch that has records, in batch-id order: read here, or by workers.

    Worker processes take ranges of batch ids up to the last batch this
    transaction read, each on a connection (and snapshot) of its own; rows
    of any later batch id are read here, in this transaction. So a batch a
    collector stores meanwhile (its id is past the last) is not taken for
    records of a batch that is not stored.
    """
    driver: Any = conn.connection.driver_connection
    postgres = conn.dialect.name == "postgresql"
    source = _source(conn)
    count = _worker_count(workers, batches)
    if source is None or count < 2 or not batches:
        yield from _read_checks(driver, postgres, "")
        return
    cuts = _cuts(batches, count * _RANGES_PER_WORKER)
    pool = ProcessPoolExecutor(count, mp_context=_start_method())
    try:
        tasks = [
            pool.submit(_check_range, source, _between(after, upto))
            for after, upto in zip([None, *cuts[:-1]], cuts, strict=True)
        ]
        for task in tasks:
            yield from task.result()
    finally:
        pool.shutdown(cancel_futures=True)
    yield from _read_checks(driver, postgres, f"batch_id > {cuts[-1]:d}")


def _worker_count(workers: int | None, batches: Mapping[int, BatchInfo]) -> int:
    """``workers`` if given; else one per CPU this process may use, if the store is large."""
    if workers is not None:
        return workers
    affinity = getattr(os, "sched_getaffinity", None)  # the CPUs it may use (Linux)
    cpus = len(affinity(0)) if affinity else os.cpu_count() or 1
    signed = sum(b.count for b in batches.values())
    return min(cpus, _MAX_WORKERS) if cpus > 1 and signed >= PARALLEL_RECORDS else 1


def _source(conn: Connection) -> _Source | None:
    """What worker processes connect to; None for a database they cannot open (in memory)."""
    url = conn.engine.url
    if conn.dialect.name == "postgresql":  # libpq takes no "+psycopg" driver name
        return _Source(True, url.set(drivername="postgresql").render_as_string(hide_password=False))
    database = url.database
    if conn.dialect.name == "sqlite" and database and database != ":memory:":
        return _Source(False, database)
    return None


def _cuts(batches: Mapping[int, BatchInfo], parts: int) -> list[int]:
    """The last batch id of each of up to ``parts`` runs of batches signing as many records."""
    ids = sorted(batches)
    total = sum(b.count for b in batches.values())
    cuts: list[int] = []
    held = 0
    for batch_id in ids[:-1]:
        held += batches[batch_id].count
        if len(cuts) < parts - 1 and held * parts >= total * (len(cuts) + 1):
            cuts.append(batch_id)
    return [*cuts, ids[-1]]


def _between(after: int | None, upto: int) -> str:
    """The condition on batch ids after ``after`` (None: from the lowest) up to ``upto``."""
    upper = f"batch_id <= {upto:d}"
    return upper if after is None else f"batch_id > {after:d} AND {upper}"


def _start_method() -> BaseContext:
    """Fork on Linux: a worker starts in a millisecond with this module loaded (a new
    interpreter takes half a second to import it).

    A forked worker inherits the pooled connections of the process verifying;
    it never uses them (it opens its own, :func:`_connect`) and ends with
    ``os._exit``, so it closes none of them either.
    """
    if sys.platform == "linux":
        return multiprocessing.get_context("fork")
    return multiprocessing.get_context()


def _check_range(source: _Source, where: str) -> list[BatchCheck]:
    """In a worker process: the checks of the batches ``where`` selects, on its own connection."""
    with closing(_connect(source)) as driver, fewer_collections():
        return list(_read_checks(driver, source.postgres, where))


def _connect(source: _Source) -> Any:
    """A new DB-API connection to the store, by the driver its engine uses."""
    if source.postgres:
        import psycopg  # noqa: PLC0415 -- 90 ms to import, only PostgreSQL stores need it

        return psycopg.connect(source.target)
    return sqlite3.connect(source.target)


@contextmanager
def _rows(driver: Any, postgres: bool, table: str, where: str) -> Iterator[Iterator[Row]]:
    """(batch id, position, leaf) of the rows of ``table`` ``where`` selects (all if empty), in
    batch order, from the driver.

    The rows come straight from ``fetchmany`` through C iterators: no Python
    code runs per row.
    """
    # a named (server-side) cursor streams on PostgreSQL; SQLite's cursor streams anyway
    cursor = driver.cursor(f"verify_{table}") if postgres else driver.cursor()
    condition = f" WHERE {where}" if where else ""
    cursor.execute(
        f"SELECT batch_id, position, leaf FROM {table}{condition} ORDER BY batch_id, position"
    )
    try:
        yield chain.from_iterable(iter(partial(cursor.fetchmany, 20_000), []))
    finally:
        cursor.close()


def _read_checks(driver: Any, postgres: bool, where: str) -> Iterator[BatchCheck]:
    """The check of each batch of the rows ``where`` selects, merging readings and gap records.

    Both tables are read in (batch id, position) order, so a batch's rows are
    together in each; the two streams are merged a batch at a time, and only
    one batch's leaf hashes are in memory at a time.
    """
    with (
        _rows(driver, postgres, "readings", where) as readings,
        _rows(driver, postgres, "gap_records", where) as gaps,
    ):
        streams = {
            "readings": groupby(readings, _BATCH_ID),
            "gap_records": groupby(gaps, _BATCH_ID),
        }
        heads = {t: next(s, None) for t, s in streams.items()}
        while any(heads.values()):
            batch_id = min(h[0] for h in heads.values() if h)
            groups: dict[str, list[Row]] = {}
            for table, head in heads.items():
                if head and head[0] == batch_id:
                    groups[table] = list(head[1])
                    heads[table] = next(streams[table], None)
            yield _batch_check(batch_id, groups)


def _batch_check(batch_id: int, groups: dict[str, list[Row]]) -> BatchCheck:
    """Hash one batch's rows (by table) and rebuild its root, if its positions allow one."""
    problems: list[Problem] = []
    found = _leaf_hashes(batch_id, groups, problems)
    missing = _first_missing(found)
    root = None
    if missing is None:
        root = root_of_hashes(
            found if isinstance(found, list) else [found[i] for i in range(len(found))]
        )
    rows = {table: len(group) for table, group in groups.items()}
    return BatchCheck(batch_id, rows, len(found), root, missing, problems)


def _first_missing(found: Hashes) -> int | None:
    """The first of positions 0..len(found)-1 that has no record, if any."""
    if isinstance(found, list):
        return None
    return next((i for i in range(len(found)) if i not in found), None)


def _leaf_hashes(batch_id: int, groups: dict[str, list[Row]], problems: list[Problem]) -> Hashes:
    """The leaf hashes of one batch's rows (by table), naming duplicates and misfiled rows."""
    if len(groups) == 1:
        ((table, rows),) = groups.items()
        hashes = _hashes_in_order(rows, _MARKER[table])
        if hashes is not None:
            return hashes
    found: dict[int, bytes] = {}
    for table, rows in groups.items():
        _hash_group(table, batch_id, rows, found, problems)
    return found


def _hashes_in_order(rows: list[Row], marker: bytes) -> list[bytes] | None:
    """The leaf hashes of ``rows`` if they sit at positions 0..n-1 and are well formed, else None.

    Well formed: bytes (not text after an edit through SQL) holding ``marker``
    (the record type of their table). That is every batch of an untampered
    store, checked by C functions mapped over the rows (``rfind``: the type
    member is near a leaf's end) and hashed in one comprehension; anything
    else is left to :func:`_hash_group`, which names each problem.
    """
    if list(map(_POSITION, rows)) != list(range(len(rows))):
        return None
    leaves = list(map(_LEAF, rows))
    try:
        if -1 in map(bytes.rfind, leaves, repeat(marker)):
            return None
    except TypeError:  # a leaf that is not bytes
        return None
    sha256 = hashlib.sha256
    return [sha256(LEAF_PREFIX + leaf).digest() for leaf in leaves]


def _hash_group(
    table: str, batch_id: int, rows: list[Row], found: dict[int, bytes], problems: list[Problem]
) -> None:
    sha256, marker, item = hashlib.sha256, _MARKER[table], f"batch {batch_id}"
    for _, position, leaf in rows:
        data = leaf if type(leaf) is bytes else _as_bytes(leaf)
        if position in found:
            problems.append(Problem(item, f"two records at position {position}"))
        found[position] = sha256(LEAF_PREFIX + data).digest()
        if marker not in data:
            problems.append(Problem(item, f"record {position} in {table} is of another type"))


def _as_bytes(value: object) -> bytes:
    """A leaf the driver gave as memoryview, or as text (SQLite, after an edit through SQL)."""
    return value.encode() if isinstance(value, str) else bytes(value)  # type: ignore[call-overload]


__all__ = ["Problem", "Report", "Trust", "verify_store"]
