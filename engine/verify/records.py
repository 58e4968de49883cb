"""The records: every leaf rehashed, each batch's root rebuilt and compared with its statement.

This is the hot part of a verification. The rows come straight from the
driver in batch order (:mod:`engine.store.reads`), a batch at a time; an
untampered batch is hashed with C-level iteration, no Python code per row
(:func:`_hashes_in_order`), and anything else takes :func:`_hash_group`,
which names each problem. A large store is split by batch-id ranges across
worker processes, one per CPU, each on a connection of its own (a snapshot
per range); they send back per batch only a :class:`BatchCheck`, compared
here in batch order, so the report is the same either way.
"""

from __future__ import annotations

import hashlib
import multiprocessing
import os
import sys
from array import array
from collections.abc import Callable, Iterable, Iterator, Mapping, MutableMapping, Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from contextlib import contextmanager
from dataclasses import dataclass
from itertools import chain, groupby, repeat
from multiprocessing.context import BaseContext
from operator import itemgetter

from sqlalchemy import Connection

from engine.heap import fewer_collections, heap_frozen
from engine.sign.leaf import point_of
from engine.sign.merkle import leaf_hash, leaf_hashes, root_of_hashes
from engine.store import reads
from engine.store.reads import BatchIds, RecordRow
from engine.verify.batches import BatchInfo
from engine.verify.report import Problem, Report
from engine.verify.retention import Erased, map_names

Progress = Callable[[int], None]
"""Called with the number of records verified so far, every few thousand."""

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
    hashes: dict[int, bytes] | None = None
    """The leaf hash of each stored position, of a batch that receipts deleted records of (its
    root is rebuilt with the leaf hashes they keep)."""
    digest: bytes | None = None
    """The :func:`records_digest` of its rows, when asked for (a retention run's check)."""
    points: dict[int, str] | None = None
    """The point of each stored record, by position, of a batch receipts deleted records of
    (checked against its signed point map, by which its receipts are judged)."""


def records_digest(positions: Sequence[int], leaves: Sequence[bytes]) -> bytes:
    """One SHA-256 of a batch's stored records, in position order: their positions, the
    length of each leaf and the leaves' bytes (so no two lists of records share one).

    A retention run's check hashes a batch's records one by one into its root; the run's
    deleting transaction, which reads them again, compares this digest instead of hashing
    every record a second time (:mod:`engine.retention.run`)."""
    digest = hashlib.sha256(array("q", positions).tobytes())
    digest.update(array("Q", map(len, leaves)).tobytes())
    digest.update(b"".join(leaves))
    return digest.digest()


def check_records(
    conn: Connection,
    batches: Mapping[int, BatchInfo],
    report: Report,
    progress: Progress | None,
    workers: int | None,
    *,
    erased: Erased | None = None,
    only: frozenset[int] | None = None,
    digests: MutableMapping[int, bytes] | None = None,
) -> None:
    """Compare each batch's rows, hashed and rebuilt into a root (with the leaf hashes its
    deletion receipts keep, ``erased``), with its signed statement; only the batches in
    ``only``, when given (their rows alone are read). ``digests``, when given, is filled
    with the :func:`records_digest` of each batch no receipt deleted records of.

    With fewer garbage collections: every row the driver returns is a new
    tuple, which the cyclic collector would scan every 700 rows for nothing.
    """
    gone = erased or Erased()
    if only is not None:
        batches = {i: info for i, info in batches.items() if i in only}
    report.counts.update(dict.fromkeys(_TYPE.values(), 0))
    seen: set[int] = set()
    done = 0
    reading = _Reading(frozenset(gone.positions), digests is not None, os.getpid())
    with fewer_collections():
        for check in _batch_checks(conn, batches, workers, reading, only):
            seen.add(check.batch_id)
            done += sum(check.rows.values())
            _compare(check, batches.get(check.batch_id), gone, report)
            if digests is not None and check.digest is not None:
                digests[check.batch_id] = check.digest
            if progress is not None:
                progress(done)
    for batch_id in batches.keys() - seen:
        info = batches[batch_id]
        if batch_id in gone.positions:
            _compare_erased(BatchCheck(batch_id, {}, 0, None, None, [], {}), info, gone, report)
        elif info.count:
            report.add(
                info.label,
                f"all its {info.count} records are missing, and no deletion receipt removed them",
            )


def _compare(check: BatchCheck, info: BatchInfo | None, gone: Erased, report: Report) -> None:
    """Count ``check``'s rows, and report what is wrong with them (``info``: their batch)."""
    for table, rows in check.rows.items():
        report.counts[_TYPE[table]] += rows
    report.problems.extend(check.problems)
    if info is None:
        report.add(
            f"batch {check.batch_id}",
            f"{sum(check.rows.values())} records of a batch that is not stored (forged?)",
        )
    elif check.hashes is not None:
        _compare_erased(check, info, gone, report)
        _compare_points(check, info, report)
    elif check.positions != info.count:
        unaccounted = (
            f": {info.count - check.positions} missing, and no deletion receipt removed them"
            if check.positions < info.count
            else ""
        )
        report.add(
            info.label,
            f"holds {check.positions} records, its statement signs "
            f"{info.count} (records deleted or inserted){unaccounted}",
        )
    elif check.missing is not None:
        report.add(info.label, f"record position {check.missing} is missing (records reordered?)")
    elif check.root != info.root:
        report.add(info.label, "its records do not hash to its signed root (a record was changed)")


def _compare_erased(check: BatchCheck, info: BatchInfo, gone: Erased, report: Report) -> None:
    """A batch its receipts deleted records of: the records it holds and the positions the
    receipts removed fill positions 0..count-1 once each; unless the receipts removed them all
    (nothing is left whose inclusion the root would prove), the records and the leaf hashes
    the receipts keep hash to its signed root."""
    stored = check.hashes or {}
    if info.id in gone.whole and not stored:
        return
    removed = set(gone.positions.get(info.id, ()))
    receipts = ", ".join(str(s) for s in gone.receipts.get(info.id, ()))
    twice = sorted(stored.keys() & removed)
    if twice:
        report.add(
            info.label,
            f"record position {twice[0]} is stored, yet its deletion receipt (audit entries"
            f" {receipts}) removed it",
        )
        return
    if info.id in gone.whole:
        report.add(
            info.label,
            f"holds {len(stored)} records, yet its receipts (audit entries {receipts})"
            f" removed all its {info.count} (records inserted)",
        )
        return
    erased = gone.hashes.get(info.id, {})
    if not stored and list(erased) == list(range(info.count)):  # deleted whole, by one receipt
        if root_of_hashes(list(erased.values())) != info.root:
            report.add(info.label, _NOT_ITS_ROOT.format(receipts=receipts))
        return
    unhashed = sorted(removed - erased.keys())
    if unhashed:
        report.add(
            info.label,
            f"holds {len(stored)} records, yet a receipt (audit entries {receipts}) that removed"
            f" position {unhashed[0]} keeps no leaf hash of it: its root cannot be rebuilt",
        )
        return
    merged = {**erased, **stored}
    missing = [p for p in range(info.count) if p not in merged]
    if missing or len(merged) != info.count:
        said = f"position {missing[0]} is missing" if missing else "it holds more records"
        report.add(
            info.label,
            f"holds {len(stored)} records and its receipts (audit entries {receipts}) removed"
            f" {len(erased)}, its statement signs {info.count}: {said}, and no deletion receipt"
            " accounts for it (records deleted or inserted)",
        )
    elif root_of_hashes([merged[p] for p in range(info.count)]) != info.root:
        report.add(info.label, _NOT_ITS_ROOT.format(receipts=receipts))


def _compare_points(check: BatchCheck, info: BatchInfo, report: Report) -> None:
    """Each record a batch receipts deleted from still holds is of the point its signed point
    map names at its position (a map its batch check found unsigned is named there)."""
    if not check.points or (names := map_names(info)) is None:
        return
    for position, point in sorted(check.points.items()):
        if position < len(names) and names[position] != point:
            report.add(
                info.label,
                f"its record at position {position} is of point {point}, where its signed point"
                f" map says {names[position]}",
            )
            return


_NOT_ITS_ROOT = (
    "its records and the leaf hashes its receipts (audit entries {receipts}) keep do not hash"
    " to its signed root (a record was changed, or a receipt's leaf hashes do not match the"
    " batch)"
)


# --- the worker-process split ----------------------------------------------------------


@dataclass(frozen=True)
class _Reading:
    """How the rows are checked: the batches receipts deleted records of (``partial``: their
    leaf hashes are kept by position), and whether each batch's :func:`records_digest` is
    wanted."""

    partial: frozenset[int]
    digests: bool
    verifier: int
    """The id of the verifying process (a range it reads itself is read on a new connection,
    closed at its end; a worker keeps its own, :func:`_range_records`)."""


def _batch_checks(
    conn: Connection,
    batches: Mapping[int, BatchInfo],
    workers: int | None,
    reading: _Reading,
    only: frozenset[int] | None = None,
) -> Iterator[BatchCheck]:
    """The check of every batch that has records, in batch-id order: read here, or by workers.

    Worker processes take ranges of batch ids up to the last batch this
    transaction read, each in a snapshot of its own (on its worker's connection); rows
    of any later batch id are read here, in this transaction. So a batch a
    collector stores meanwhile (its id is past the last) is not taken for
    records of a batch that is not stored.
    """
    records = reads.records(conn)
    source = reads.source(conn)
    count = _worker_count(workers, batches)
    if source is None or count < 2 or not batches:
        yield from _read_checks(records, BatchIds(only=only), reading)
        return
    cuts = _cuts(batches, count * _RANGES_PER_WORKER)
    pool = ProcessPoolExecutor(count, mp_context=_start_method())
    try:
        with heap_frozen():
            bounds = zip([None, *cuts[:-1]], cuts, strict=True)
            ranges = [BatchIds(after, upto, only) for after, upto in bounds]
            tasks = [pool.submit(_check_range, source, ids, reading) for ids in ranges]
            for ids, task in zip(ranges, tasks, strict=True):
                yield from _range_checks(task, source, ids, reading)
    finally:
        pool.shutdown(cancel_futures=True)
    yield from _read_checks(records, BatchIds(cuts[-1], None, only), reading)


def _worker_count(workers: int | None, batches: Mapping[int, BatchInfo]) -> int:
    """``workers`` if given; else one per CPU this process may use, if the store is large."""
    if workers is not None:
        return workers
    affinity = getattr(os, "sched_getaffinity", None)  # the CPUs it may use (Linux)
    cpus = len(affinity(0)) if affinity else os.cpu_count() or 1
    signed = sum(b.count for b in batches.values())
    return min(cpus, _MAX_WORKERS) if cpus > 1 and signed >= PARALLEL_RECORDS else 1


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


def _start_method() -> BaseContext:
    """Fork on Linux: a worker starts in a millisecond with this module loaded (a new
    interpreter takes half a second to import it).

    A forked worker inherits the pooled connections of the process verifying;
    it never uses them (it opens its own, :func:`_range_records`)
    and ends with ``os._exit``, so it closes none of them either.
    """
    if sys.platform == "linux":
        return multiprocessing.get_context("fork")
    return multiprocessing.get_context()


def _range_checks(
    task: Future[list[BatchCheck]], source: reads.Source, ids: BatchIds, reading: _Reading
) -> list[BatchCheck]:
    """A range's checks: its worker's; or, a worker having died (killed: out of memory, by
    hand) and the pool broken, made here as the worker would have made them."""
    try:
        return task.result()
    except BrokenProcessPool:
        return _check_range(source, ids, reading)


def _check_range(source: reads.Source, ids: BatchIds, reading: _Reading) -> list[BatchCheck]:
    """The checks of the batches ``ids`` names, on a connection of its own (a worker's)."""
    with _range_records(source, reading) as records, fewer_collections():
        return list(_read_checks(records, ids, reading))


@contextmanager
def _range_records(source: reads.Source, reading: _Reading) -> Iterator[reads.Records]:
    """The record tables as a range reads them, in a transaction of its own: on a worker's
    connection, opened for its first range and kept for the others
    (:func:`~engine.store.reads.kept_driver`: one connection per worker, not per range), and
    dropped when a read fails on it; in the verifying process (a worker died) on a new one,
    closed at the end, as also when a worker's could not be opened (the new one then raises
    the driver's error)."""
    driver = None if os.getpid() == reading.verifier else reads.kept_driver(source)
    if driver is None:
        with reads.connect(source) as records:
            yield records
        return
    try:
        yield reads.Records(driver, source.postgres)
    except BaseException:
        reads.drop_kept(source)
        raise
    driver.rollback()  # the range's snapshot ends with it: it wrote nothing


# --- hashing ---------------------------------------------------------------------------


def _read_checks(records: reads.Records, ids: BatchIds, reading: _Reading) -> Iterator[BatchCheck]:
    """The check of each batch in ``ids``, merging readings and gap records; of a batch in
    ``partial`` (receipts deleted records of it), with its leaf hashes by position.

    Both tables are read in (batch id, position) order, so a batch's rows are
    together in each; the two streams are merged a batch at a time, and only
    one batch's leaf hashes are in memory at a time.
    """
    with (
        records.rows("readings", ids) as readings,
        records.rows("gap_records", ids) as gaps,
    ):
        streams = {
            "readings": groupby(readings, _BATCH_ID),
            "gap_records": groupby(gaps, _BATCH_ID),
        }
        heads = {t: next(s, None) for t, s in streams.items()}
        while any(heads.values()):
            batch_id = min(h[0] for h in heads.values() if h)
            groups: dict[str, list[RecordRow]] = {}
            for table, head in heads.items():
                if head and head[0] == batch_id:
                    groups[table] = list(head[1])
                    heads[table] = next(streams[table], None)
            if batch_id in reading.partial:
                yield _batch_check(batch_id, groups, partial=True)
            else:
                yield _batch_check(batch_id, groups, digest=reading.digests)


def _batch_check(
    batch_id: int,
    groups: dict[str, list[RecordRow]],
    *,
    partial: bool = False,
    digest: bool = False,
) -> BatchCheck:
    """Hash one batch's rows (by table) and rebuild its root, if its positions allow one; of a
    batch receipts deleted records of, keep the leaf hashes by position instead; with
    ``digest``, also the :func:`records_digest` of its rows."""
    problems: list[Problem] = []
    found = _leaf_hashes(batch_id, groups, problems)
    rows = {table: len(group) for table, group in groups.items()}
    if partial:
        hashes = found if isinstance(found, dict) else dict(enumerate(found))
        points = dict(_points(chain(*groups.values())))
        return BatchCheck(batch_id, rows, len(found), None, None, problems, hashes, points=points)
    missing = _first_missing(found)
    root = None
    if missing is None:
        root = root_of_hashes(
            found if isinstance(found, list) else [found[i] for i in range(len(found))]
        )
    said = _digest(groups) if digest else None
    return BatchCheck(batch_id, rows, len(found), root, missing, problems, digest=said)


def _digest(groups: dict[str, list[RecordRow]]) -> bytes:
    """The :func:`records_digest` of a batch's rows, both tables' merged by position as a
    retention run reads them (:func:`engine.store.data.batch_records`)."""
    rows = next(iter(groups.values())) if len(groups) == 1 else sorted(chain(*groups.values()))
    leaves = list(map(_LEAF, rows))
    if set(map(type, leaves)) - {bytes}:
        leaves = [reads.as_bytes(leaf) for leaf in leaves]
    return records_digest(list(map(_POSITION, rows)), leaves)


def _points(rows: Iterable[RecordRow]) -> Iterator[tuple[int, str]]:
    """(position, point) of each row whose leaf names a point (one that does not is no record:
    its hash, or its table, names it)."""
    for _, position, leaf in rows:
        try:
            yield position, point_of(leaf if type(leaf) is bytes else reads.as_bytes(leaf))
        except ValueError:
            continue


def _first_missing(found: Hashes) -> int | None:
    """The first of positions 0..len(found)-1 that has no record, if any."""
    if isinstance(found, list):
        return None
    return next((i for i in range(len(found)) if i not in found), None)


def _leaf_hashes(
    batch_id: int, groups: dict[str, list[RecordRow]], problems: list[Problem]
) -> Hashes:
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


def _hashes_in_order(rows: list[RecordRow], marker: bytes) -> list[bytes] | None:
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
    return leaf_hashes(leaves)


def _hash_group(
    table: str,
    batch_id: int,
    rows: list[RecordRow],
    found: dict[int, bytes],
    problems: list[Problem],
) -> None:
    """Hash ``rows`` of ``table`` into ``found`` by position, one at a time, naming each
    record at a position already taken and each record of another type."""
    marker, item = _MARKER[table], f"batch {batch_id}"
    for _, position, leaf in rows:
        data = leaf if type(leaf) is bytes else reads.as_bytes(leaf)
        if position in found:
            problems.append(Problem(item, f"two records at position {position}"))
        found[position] = leaf_hash(data)
        if marker not in data:
            problems.append(Problem(item, f"record {position} in {table} is of another type"))
