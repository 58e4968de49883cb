"""The store's side of retention: erasures, legal holds, and the lock of a retention run.

- **Erasures.** A deletion removes records' rows (their values and salts) and
  keeps, per receipt, the positions removed and their leaf hashes
  (:data:`~engine.store.tables.ERASURES`), so the batch's root can still be
  rebuilt and the remaining records' inclusion proofs still verify; the
  receipt that removes a batch's last records keeps no hashes (nothing is left
  to prove the inclusion of). The
  receipt itself (a ``retention.deleted`` audit entry) is appended in the same
  transaction by the caller; :func:`erase` only changes the tables.
- **Holds.** A hold is a row of :data:`~engine.store.tables.HOLDS`, placed and
  released with its audit entry, never deleted; :class:`Hold` is what it
  covers (also what the verifier rebuilds from the ``hold.placed`` entries).
- **The lock.** One retention run at a time (:func:`retention_lock`): a
  session advisory lock on PostgreSQL, a file lock beside a SQLite file; both
  end with the process that holds them, however it ends.

Positions are written as runs, ``[[first, last], ...]`` ascending and inclusive
(:func:`runs`), and leaf hashes as their 32 bytes concatenated in position
order: a batch deleted whole is ``[[0, count-1]]`` (and no hashes).
"""

from __future__ import annotations

import fcntl
import os
import re
from collections.abc import Collection, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from fnmatch import fnmatchcase
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, Engine, delete, insert, select, update
from sqlalchemy.exc import SQLAlchemyError

from engine.canonical import canonical_json, read_json
from engine.errors import RetentionError, StoreError
from engine.store.database import describe, reason
from engine.store.reads import as_bytes
from engine.store.tables import BATCHES, ERASURES, GAPS, HOLDS, READINGS

HASH_SIZE = 32
_HASHES = re.compile(b"(?s).{%d}" % HASH_SIZE)
RETENTION_LOCK_ID = 0x636F6E72  # "conr": the advisory lock a retention run holds (PostgreSQL)

# --- positions as runs ------------------------------------------------------------------


def runs(positions: Iterable[int]) -> list[list[int]]:
    """Ascending positions as ``[[first, last], ...]`` runs of consecutive ones."""
    ordered = sorted(positions)
    if ordered and ordered[-1] - ordered[0] + 1 == len(ordered) == len(set(ordered)):
        return [[ordered[0], ordered[-1]]]  # one run: a batch deleted whole, usually
    found: list[list[int]] = []
    for position in ordered:
        if found and found[-1][1] == position - 1:
            found[-1][1] = position
        else:
            found.append([position, position])
    return found


def positions_of(said: Any) -> list[int]:
    """The positions ``runs`` wrote; raises ValueError for anything else (overlapping,
    unsorted or reversed runs included)."""
    if not isinstance(said, list):
        raise ValueError("positions are not a list of runs")
    found: list[int] = []
    for run in said:
        if (
            not isinstance(run, list)
            or len(run) != 2
            or not all(type(p) is int for p in run)
            or run[0] > run[1]
            or run[0] < (found[-1] + 2 if found else 0)
        ):
            raise ValueError(f"positions: {run!r} is not a run after the ones before it")
        found.extend(range(run[0], run[1] + 1))
    return found


def split_hashes(blob: bytes) -> list[bytes]:
    """The 32-byte hashes of a concatenation; raises ValueError for a length that is no
    multiple of 32."""
    if len(blob) % HASH_SIZE:
        raise ValueError(f"{len(blob)} bytes are not whole {HASH_SIZE}-byte hashes")
    return _HASHES.findall(blob)  # one C-level scan, no Python code per hash


# --- batches ----------------------------------------------------------------------------


@dataclass(frozen=True)
class BatchRef:
    """A batch as retention needs it (from its row, or its verified statement): its device,
    signed window, size, plan and root."""

    id: int
    device: str
    window_start: str
    window_end: str
    count: int
    plan_digest: str
    root: bytes


def batch_refs(conn: Connection) -> list[BatchRef]:
    """Every batch, in id order."""
    b = BATCHES.c
    query = select(
        b.id, b.device, b.window_start, b.window_end, b["count"], b.plan_digest, b.root
    ).order_by(b.id)
    return [
        BatchRef(r.id, r.device, r.window_start, r.window_end, r[4], r.plan_digest, bytes(r.root))
        for r in conn.execute(query)
    ]


# --- erasures ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Erasure:
    """What one receipt removes of a batch: the positions, ascending, and their leaf hashes
    concatenated in that order (none when they are the batch's last records)."""

    batch_id: int
    positions: Sequence[int]
    hashes: bytes
    receipt: int


def erase(conn: Connection, erasures: Sequence[Erasure]) -> None:
    """Delete the records each of ``erasures`` removes, keeping its positions and leaf hashes
    as its receipt's erasure row. In the caller's transaction, beside the receipts; the
    batches that lose their last records are emptied by one statement per table."""
    emptied = [e.batch_id for e in erasures if not e.hashes]
    for table in (READINGS, GAPS):
        for start in range(0, len(emptied), 500):
            conn.execute(delete(table).where(table.c.batch_id.in_(emptied[start : start + 500])))
        for e in (e for e in erasures if e.hashes):
            gone = delete(table).where(table.c.batch_id == e.batch_id)
            for start in range(0, len(e.positions), 500):
                conn.execute(gone.where(table.c.position.in_(e.positions[start : start + 500])))
    if erasures:
        conn.execute(insert(ERASURES), [_erasure_row(e) for e in erasures])


def _erasure_row(erasure: Erasure) -> dict[str, Any]:
    return {
        "batch_id": erasure.batch_id,
        "receipt": erasure.receipt,
        "positions": canonical_json(runs(erasure.positions)).decode(),
        "leaf_hashes": erasure.hashes,
    }


def erased(conn: Connection, batch_ids: Collection[int]) -> dict[int, dict[int, bytes]]:
    """By batch id, of each of ``batch_ids`` its receipts removed records of: the leaf hash of
    every position they removed and kept the hash of (all of them while the batch still holds
    records: only the receipt that removes its last records keeps none)."""
    query = select(ERASURES.c.batch_id, ERASURES.c.positions, ERASURES.c.leaf_hashes).where(
        ERASURES.c.batch_id.in_(sorted(batch_ids))
    )
    found: dict[int, dict[int, bytes]] = {}
    for batch_id, positions, stored in conn.execute(query):
        kept = found.setdefault(batch_id, {})
        hashes = as_bytes(stored)
        if hashes:
            runs = _erasure_runs(batch_id, positions)
            try:
                if sum(last - first + 1 for first, last in runs) * HASH_SIZE != len(hashes):
                    raise ValueError("as many leaf hashes as positions")
                kept.update(zip(positions_of(runs), split_hashes(hashes), strict=True))
            except ValueError:
                raise _unread(batch_id) from None
    return found


def erased_counts(conn: Connection) -> dict[int, int]:
    """How many records each batch's receipts removed, by batch id."""
    counts: dict[int, int] = {}
    for batch_id, positions in conn.execute(select(ERASURES.c.batch_id, ERASURES.c.positions)):
        removed = sum(last - first + 1 for first, last in _erasure_runs(batch_id, positions))
        counts[batch_id] = counts.get(batch_id, 0) + removed
    return counts


def _erasure_runs(batch_id: int, positions: str) -> list[list[int]]:
    """An erasure row's runs of positions (``[[first, last], ...]``, integers); a StoreError
    for a row that holds anything else: the row is data, and whoever can write the database
    can write it."""
    try:
        said = read_json(positions)
    except ValueError:
        raise _unread(batch_id) from None
    if not isinstance(said, list) or not all(
        isinstance(run, list) and len(run) == 2 and all(type(p) is int for p in run) for run in said
    ):
        raise _unread(batch_id)
    return said


def _unread(batch_id: int) -> StoreError:
    return StoreError(
        f"the erasure of batch {batch_id} does not read as the positions and leaf hashes a"
        " receipt removed: the store was changed outside Converge; converge audit verify names"
        " it"
    )


def erasures(conn: Connection) -> Iterator[tuple[int, int, str, bytes]]:
    """(batch id, receipt, positions text, hashes) of every erasure row, as stored."""
    query = select(
        ERASURES.c.batch_id, ERASURES.c.receipt, ERASURES.c.positions, ERASURES.c.leaf_hashes
    ).order_by(ERASURES.c.id)
    for batch_id, receipt, positions, hashes in conn.execute(query):
        yield batch_id, receipt, positions, as_bytes(hashes)


# --- holds ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Scope:
    """What a hold covers: devices (none: all), point-name globs (none: all), a time range.

    A record is covered when its batch's window meets ``[start, end)`` (either end open):
    deletion judges records by their batch's signed window (engine/plans/expiry.py), and so
    does a hold, so that the verifier can tell without the deleted records.
    """

    devices: tuple[str, ...] = ()
    points: tuple[str, ...] = ()
    start: str | None = None
    end: str | None = None
    held: frozenset[tuple[str, str]] | None = None
    """The (device, point) pairs the decision that placed the hold allowed (its ``hold.placed``
    entry's ``held``): a hold covers those alone, never a device or point deployed after it
    was placed, which nobody decided it on. None for a scope as asked, not yet decided."""

    def covers(self, device: str, point: str, window_start: str, window_end: str) -> bool:
        if self.held is not None and (device, point) not in self.held:
            return False
        return self.touches(device, window_start, window_end) and self.names(device, point)

    def names(self, device: str, point: str) -> bool:
        """Whether its devices (all, when none) and point globs (all, when none) take in
        ``device``'s ``point``."""
        in_devices = not self.devices or device in self.devices
        return in_devices and (not self.points or any(fnmatchcase(point, g) for g in self.points))

    def touches(self, device: str, window_start: str, window_end: str) -> bool:
        """Whether it covers some point of ``device`` in that window (if it has the point)."""
        return (
            (not self.devices or device in self.devices)
            and (self.start is None or window_end > self.start)
            and (self.end is None or window_start < self.end)
        )

    def as_json(self) -> dict[str, Any]:
        return {
            "devices": list(self.devices),
            "points": list(self.points),
            "from": self.start,
            "to": self.end,
        }

    def held_json(self) -> list[dict[str, str]]:
        """``held`` as a ``hold.placed`` entry states it."""
        return [{"device": d, "point": p} for d, p in sorted(self.held or ())]

    @classmethod
    def from_json(cls, said: Any) -> Scope:
        """The scope an entry's payload states, with the pairs it ``held`` when it names them;
        raises ValueError for another shape."""
        if not isinstance(said, dict):
            raise ValueError("not a hold's scope")
        start, end = said.get("from"), said.get("to")
        if not all(t is None or isinstance(t, str) for t in (start, end)):
            raise ValueError("a hold's from and to are instants or null")
        asked = cls(_names(said.get("devices")), _names(said.get("points")), start, end)
        return replace(asked, held=_pairs(said["held"])) if "held" in said else asked

    @property
    def as_asked(self) -> Scope:
        """The scope without its decided pairs: what a hold's row stores."""
        return replace(self, held=None)


def _pairs(value: Any) -> frozenset[tuple[str, str]]:
    if not isinstance(value, list) or not all(
        isinstance(p, dict) and set(p) == {"device", "point"} for p in value
    ):
        raise ValueError("a hold's held is a list of device and point names")
    pairs = {(p["device"], p["point"]) for p in value}
    if not all(isinstance(d, str) and isinstance(p, str) for d, p in pairs):
        raise ValueError("a hold's held is a list of device and point names")
    return frozenset(pairs)


def _names(value: Any) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ValueError("a hold's devices and points are lists of names")
    return tuple(value)


@dataclass(frozen=True)
class Hold:
    """A legal hold as stored: its scope, why, who placed it (and released it) when."""

    id: int
    scope: Scope
    reason: str
    placed_by: str
    placed_at: str
    placed_seq: int
    released_by: str | None = None
    released_at: str | None = None
    release_reason: str | None = None
    released_seq: int | None = None

    @property
    def in_force(self) -> bool:
        return self.released_seq is None

    def in_force_at(self, seq: int) -> bool:
        """Whether it was in force when audit entry ``seq`` was written."""
        return self.placed_seq < seq and (self.released_seq is None or self.released_seq > seq)


def hold_rows(conn: Connection) -> dict[int, Hold | None]:
    """Every hold row, by id: None for one whose devices or points do not read as lists of
    names (the rows are data: whoever can write the database can write them; ``audit
    verify`` compares each with the log, which says what the holds are)."""
    rows: dict[int, Hold | None] = {}
    for row in conn.execute(select(HOLDS).order_by(HOLDS.c.id)):
        try:
            rows[row.id] = _hold(row._mapping)
        except ValueError:
            rows[row.id] = None
    return rows


def _hold(row: Any) -> Hold:
    devices, points = _names(read_json(row["devices"])), _names(read_json(row["points"]))
    scope = Scope(devices, points, row["from_time"], row["to_time"])
    return Hold(
        row["id"],
        scope,
        row["reason"],
        row["placed_by"],
        row["placed_at"],
        row["placed_seq"],
        row["released_by"],
        row["released_at"],
        row["release_reason"],
        row["released_seq"],
    )


def add_hold(
    conn: Connection, scope: Scope, *, reason: str, placed_by: str, at: str, seq: int
) -> int:
    """A new hold row, placed by audit entry ``seq`` (about to be appended); its id."""
    return int(
        conn.execute(
            insert(HOLDS)
            .values(
                devices=canonical_json(list(scope.devices)).decode(),
                points=canonical_json(list(scope.points)).decode(),
                from_time=scope.start,
                to_time=scope.end,
                reason=reason,
                placed_by=placed_by,
                placed_at=at,
                placed_seq=seq,
            )
            .returning(HOLDS.c.id)
        ).scalar_one()
    )


def release(conn: Connection, hold_id: int, *, reason: str, by: str, at: str, seq: int) -> None:
    """Mark hold ``hold_id`` released by audit entry ``seq`` (about to be appended)."""
    conn.execute(
        update(HOLDS)
        .where(HOLDS.c.id == hold_id)
        .values(released_by=by, released_at=at, release_reason=reason, released_seq=seq)
    )


# --- the lock ---------------------------------------------------------------------------


class RetentionBusy(RetentionError):
    """Another retention run holds the store's retention lock."""


@contextmanager
def retention_lock(engine: Engine) -> Iterator[None]:
    """Hold the store's retention lock for the block, or raise :class:`RetentionBusy` at once.

    PostgreSQL: a session advisory lock on a connection kept for the block; SQLite: an
    exclusive ``flock`` of ``<database>.retention-lock`` beside the file. Either is let go
    when the process ends, killed or not, so a killed run never blocks the next one.
    """
    if engine.dialect.name == "postgresql":
        with _advisory(engine):
            yield
        return
    database = engine.url.database
    if not database or database == ":memory:":
        yield
        return
    with _file_lock(Path(f"{database}.retention-lock"), describe(engine)):
        yield


@contextmanager
def _advisory(engine: Engine) -> Iterator[None]:
    try:
        with engine.connect() as conn:
            taken = conn.exec_driver_sql(f"SELECT pg_try_advisory_lock({RETENTION_LOCK_ID})")
            if not taken.scalar():
                raise RetentionBusy(_busy(describe(engine)))
            conn.commit()
            try:
                yield
            finally:
                conn.exec_driver_sql(f"SELECT pg_advisory_unlock({RETENTION_LOCK_ID})")
                conn.commit()
    except SQLAlchemyError as exc:
        raise StoreError(f"store {describe(engine)}: {reason(exc)}") from exc


@contextmanager
def _file_lock(path: Path, where: str) -> Iterator[None]:
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise RetentionBusy(_busy(where)) from None
        yield
    finally:
        os.close(fd)  # closing the file lets the lock go


def _busy(where: str) -> str:
    return (
        f"another retention run is deleting from the store at {where} (it holds the store's "
        "retention lock): this one deleted nothing; run it again when that one has finished"
    )


__all__ = [
    "BatchRef",
    "Erasure",
    "Hold",
    "RetentionBusy",
    "Scope",
    "add_hold",
    "batch_refs",
    "erase",
    "erased",
    "erased_counts",
    "erasures",
    "hold_rows",
    "positions_of",
    "release",
    "retention_lock",
    "runs",
    "split_hashes",
]
