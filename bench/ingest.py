"""Benchmark: evidence ingest, readings batched, hashed, signed and stored, against a raw insert.

    python bench/ingest.py                      # 1,000,000 readings per shape: SQLite, PostgreSQL
    python bench/ingest.py --readings 200000    # fewer
    python bench/ingest.py --shape sustained    # one shape only
    python bench/ingest.py --postgres postgresql://user@host/db   # the server to use

Every point is read every second and requires signing by two keys
(qa-signing, site-integrity) in 60 s windows: 100 points per device make
6,000 readings per batch. Two shapes of the same 1,000,000 readings:

- **sustained**: 10 devices for 1,000 s. Windows close all along, 17 per
  device, as they do in a collector that runs for longer than one window:
  the rate the pipeline keeps up with. The targets apply to this shape.
- **burst**: 100 devices for 100 s. Nothing can be sealed before the first
  window closes, 60 % of the way in, and the last 40 % is sealed after the
  last put: it adds a window's fill and drain to the time. For comparison.

The readings go through the collector's own evidence sink
(:class:`engine.evidence.sink.EvidenceSink`): the batcher (leaf bytes, salts)
in the collector, then the sealer process (or, with ``--writer thread``, a
writer thread): leaf hashes, sorting, roots, Ed25519 signatures by both keys,
one transaction per batch with its audit entry. The floor is the same
(batch_id, position, leaf) rows put into the same ``readings`` table (made by
``Store.open``, with the same batch rows, in a fresh database) by the driver
alone, one transaction per batch: sqlite3 ``executemany`` on SQLite, psycopg
binary ``COPY`` on PostgreSQL.

Targets (the ingest issue): >= 100,000 readings/s, and >= 50 % of the floor's
rate. PostgreSQL runs when ``--postgres`` or ``CONVERGE_POSTGRES_URL`` names a
server; each run makes (and drops) its own scratch databases there.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import os
import platform
import secrets
import sqlite3
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from itertools import groupby
from operator import itemgetter
from pathlib import Path
from typing import Any, Literal

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from engine.audit import Actor, seal_with
from engine.canonical import canonical_json
from engine.evidence import EvidenceConfig, EvidenceSink
from engine.keys import KeyVersion
from engine.plans.body import PlanBody
from engine.plans.format import PLAN_FORMAT, read_plan, seal
from engine.records import Reading
from engine.store.spool import Spool
from engine.store.store import Store, fast_bytea
from engine.verify.trust import Trust
from engine.verify.whole import verify_store

POINTS = 100
WINDOW_MS = 60_000
READINGS = 1_000_000
SIGNING_KEYS = ("qa-signing", "site-integrity")
AUDIT_KEY = "audit-log"
START = datetime.now(UTC).replace(second=0, microsecond=0) - timedelta(hours=2)
"""Readings start two hours ago, on a minute, so the first window is a whole one."""
TARGET_RATE = 100_000
TARGET_SHARE = 0.5
Writer = Literal["thread", "process"]


@dataclass(frozen=True)
class Shape:
    """How many devices the readings come from (each has :data:`POINTS` points read at 1 s)."""

    name: str
    devices: int
    judged: bool
    """Whether the targets apply to this shape (the sustained one), or it is for comparison."""

    def describe(self, readings: int) -> str:
        seconds = readings // (self.devices * POINTS)
        return (
            f"{self.name}: {self.devices} devices x {POINTS} points at 1 s for {seconds:,} s, "
            f"{-(-seconds // (WINDOW_MS // 1000))} windows per device"
        )


SUSTAINED = Shape("sustained", 10, judged=True)
BURST = Shape("burst", 100, judged=False)
SHAPES = {shape.name: shape for shape in (SUSTAINED, BURST)}


# --- keys and plans --------------------------------------------------------------------


class BenchKeys:
    """Raw Ed25519 keys in memory, as the evidence sink asks a key store for them.

    The file key store encrypts keys under a passphrase (scrypt), which is not
    what this benchmark measures; signing is the same Ed25519 either way.
    """

    def __init__(self, names: Sequence[str]) -> None:
        self.private = {name: Ed25519PrivateKey.generate() for name in names}
        made = START - timedelta(days=1)
        self.public = {
            name: [KeyVersion(name, 1, _raw_public(key), made, None, made)]
            for name, key in self.private.items()
        }

    def names(self) -> list[str]:
        return sorted(self.private)

    def versions(self, name: str) -> list[KeyVersion]:
        return self.public[name]

    def signer(self, name: str, at: datetime) -> Ed25519PrivateKey:
        return self.private[name]

    def trust(self) -> Trust:
        return Trust(self.public)


def bench_keys() -> BenchKeys:
    """The two signing keys and the audit key, made afresh."""
    return BenchKeys([*SIGNING_KEYS, AUDIT_KEY])


def _raw_public(key: Ed25519PrivateKey) -> bytes:
    return key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)


def device_id(d: int) -> str:
    return f"plc-{d:03d}"


def point_name(p: int) -> str:
    return f"R{p:03d}"


ACCESS = {"read": ["auditor"], "export": ["auditor"]}
"""Who may read and export the bench's points (bench/export.py exports them)."""


def plans(shape: Shape) -> list[PlanBody]:
    """One sealed plan per device (digest verifies), each point signed by both keys and
    exportable by auditors."""
    signing = {"required": True, "keys": list(SIGNING_KEYS), "batch_window_ms": WINDOW_MS}
    bodies = []
    for d in range(shape.devices):
        body = {
            "format": PLAN_FORMAT,
            "site": "bench",
            "timezone": "UTC",
            "as_of": "2026-06-01",
            "device": {"id": device_id(d), "protocol": "modbus", "endpoint": {}, "limits": {}},
            "points": [
                {"name": point_name(p), "address": {}, "signing": signing, "access": ACCESS}
                for p in range(POINTS)
            ],
            "read_groups": [],
        }
        _, data = seal({key: canonical_json(value) for key, value in body.items()})
        bodies.append(read_plan(data))
    return bodies


# --- readings --------------------------------------------------------------------------


def readings(count: int, shape: Shape) -> list[list[Reading]]:
    """``count`` readings as the collector produces them: one group per device per second.

    Each device is read ``d`` ms after the slot (so collection times differ
    by device, as they do), values change every second.
    """
    groups: list[list[Reading]] = []
    second = 0
    while count > 0:
        slot = START + timedelta(seconds=second)
        for d in range(shape.devices):
            collected = slot + timedelta(milliseconds=3 + d % 40)
            size = min(POINTS, count)
            groups.append(
                [
                    Reading(
                        device_id(d),
                        point_name(p),
                        collected,
                        round(20.0 + 0.25 * second + p + d / 100, 2),
                        scheduled_at=slot,
                    )
                    for p in range(size)
                ]
            )
            count -= size
            if count == 0:
                break
        second += 1
    return groups


class Clock:
    """The sink's "now": the slot of the readings being put, as it is in a live collector."""

    def __init__(self) -> None:
        self.at = START

    def __call__(self) -> datetime:
        return self.at


# --- our pipeline ----------------------------------------------------------------------


async def _collect(
    store: Store,
    keys: BenchKeys,
    spool: Spool,
    groups: list[list[Reading]],
    shape: Shape,
    *,
    writer: Writer,
) -> None:
    """Put every group through the evidence sink, yielding to the loop between groups.

    A collector's device task puts the readings of one answer and then awaits
    the network again; that is when the sink's writer task hands the next
    closed window to the sealer (or batch to its thread). Without the yield
    nothing would be written until the end.
    """
    clock = Clock()
    sink = EvidenceSink(
        plans(shape),
        store,
        keys,
        spool,
        now=clock,  # type: ignore[arg-type]
        config=EvidenceConfig(writer=writer),
    )
    for i, group in enumerate(groups):
        clock.at = group[0].collected_at
        for reading in group:
            await sink.put(reading)
        groups[i] = []  # from here on only the sink holds these readings, as in a collector
        await asyncio.sleep(0)
    await sink.close()


def open_store(target: str, keys: BenchKeys, shape: Shape) -> Store:
    """A new store with the plans deployed and the keys logged, as ``converge run`` makes it."""
    store = Store.open(target, actor=Actor.job("bench-ingest"))
    store.deploy_plans([(body, None) for body in plans(shape)])
    store.record_keys([v for name in keys.names() for v in keys.versions(name)])
    return store


def ingest(
    target: str, spool_path: Path, count: int, keys: BenchKeys, shape: Shape, *, writer: Writer
) -> tuple[Store, float]:
    """Store ``count`` readings in a new store at ``target``; returns the store and the seconds.

    The readings are made before the clock starts (making them is the
    collector's work) and are not frozen out of the garbage collector's way:
    in a collector, the readings of open windows are scanned by every full
    collection, and so they are here (with the readings not yet put besides).
    """
    store = open_store(target, keys, shape)
    spool = Spool(spool_path)
    groups = readings(count, shape)
    gc.collect()
    try:
        started = time.perf_counter()
        asyncio.run(_collect(store, keys, spool, groups, shape, writer=writer))
        elapsed = time.perf_counter() - started
    finally:
        spool.close()
    return store, elapsed


def checkpoint(store: Store, keys: BenchKeys) -> None:
    """Sign a checkpoint of the whole audit log (the sink signs one at close already)."""
    store.checkpoint(seal_with(keys, AUDIT_KEY, datetime.now(UTC)))  # type: ignore[arg-type]


def build_store(
    target: str, count: int, workdir: Path, shape: Shape = BURST
) -> tuple[Store, BenchKeys, float]:
    """A store at ``target`` holding ``count`` readings in signed, checkpointed batches."""
    keys = bench_keys()
    spool = workdir / f"spool-{secrets.token_hex(4)}.db"
    store, elapsed = ingest(target, spool, count, keys, shape, writer="process")
    checkpoint(store, keys)
    return store, keys, elapsed


# --- the floors ------------------------------------------------------------------------

Row = tuple[int, int, bytes]


def stored_rows(store: Store) -> list[list[Row]]:
    """The readings rows ``store`` holds, one list per batch, in batch order."""
    with store.reading() as conn:
        cursor = conn.connection.driver_connection.cursor()  # type: ignore[union-attr]
        cursor.execute("SELECT batch_id, position, leaf FROM readings ORDER BY batch_id, position")
        rows = [(b, p, bytes(leaf)) for b, p, leaf in cursor.fetchall()]
    return [list(group) for _, group in groupby(rows, key=itemgetter(0))]


def batch_rows(store: Store) -> tuple[list[str], list[tuple[Any, ...]]]:
    """The columns and rows of ``store``'s batches table, to give the floor the same parents."""
    with store.reading() as conn:
        cursor = conn.connection.driver_connection.cursor()  # type: ignore[union-attr]
        cursor.execute("SELECT * FROM batches ORDER BY id")
        columns = [c[0] for c in cursor.description]
        return columns, [tuple(r) for r in cursor.fetchall()]


def sqlite_floor(path: Path, store: Store, batches: list[list[Row]]) -> float:
    """Seconds for sqlite3 alone to insert ``batches``, one transaction each, into a new store.

    The new store has the same schema and batch rows, and the same settings
    as the store's connections (WAL, synchronous=NORMAL, foreign keys on).
    """
    Store.open(str(path), actor=Actor.job("bench-ingest")).close()
    columns, parents = batch_rows(store)
    db = sqlite3.connect(path, isolation_level=None)
    try:
        for pragma in ("journal_mode=WAL", "synchronous=NORMAL", "foreign_keys=ON"):
            db.execute(f"PRAGMA {pragma}")
        marks = ", ".join("?" * len(columns))
        with db:
            db.executemany(f"INSERT INTO batches ({', '.join(columns)}) VALUES ({marks})", parents)
        started = time.perf_counter()
        for rows in batches:
            db.execute("BEGIN IMMEDIATE")
            db.executemany("INSERT INTO readings (batch_id, position, leaf) VALUES (?, ?, ?)", rows)
            db.execute("COMMIT")
        return time.perf_counter() - started
    finally:
        db.close()


def postgres_floor(url: str, store: Store, batches: list[list[Row]]) -> float:
    """Seconds for psycopg alone to COPY ``batches``, one transaction each, into a new store."""
    import psycopg

    Store.open(url, actor=Actor.job("bench-ingest")).close()
    columns, parents = batch_rows(store)
    with psycopg.connect(libpq_url(url)) as db:
        marks = ", ".join(["%s"] * len(columns))
        with db.transaction(), db.cursor() as cursor:
            cursor.executemany(
                f"INSERT INTO batches ({', '.join(columns)}) VALUES ({marks})", parents
            )
        started = time.perf_counter()
        for rows in batches:
            with db.transaction(), db.cursor() as cursor:
                fast_bytea(cursor)  # psycopg's C dumper, as the store uses it
                with cursor.copy(
                    "COPY readings (batch_id, position, leaf) FROM STDIN (FORMAT BINARY)"
                ) as copy:
                    copy.set_types(["int8", "int4", "bytea"])
                    for row in rows:
                        copy.write_row(row)
        return time.perf_counter() - started


# --- PostgreSQL scratch databases ------------------------------------------------------


def libpq_url(url: str) -> str:
    """A SQLAlchemy URL (``postgresql+psycopg://``) as psycopg itself takes it."""
    from sqlalchemy import make_url

    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


@contextlib.contextmanager
def scratch_databases(url: str, count: int) -> Iterator[list[str]]:
    """``count`` new, empty databases on the server of ``url``, dropped afterwards."""
    import sqlalchemy as sa

    from engine.store.database import database_url

    server = database_url(url)
    names = [f"converge_bench_{secrets.token_hex(6)}" for _ in range(count)]
    admin = sa.create_engine(server, isolation_level="AUTOCOMMIT", poolclass=sa.NullPool)
    try:
        with admin.connect() as connection:
            for name in names:
                connection.execute(sa.text(f'CREATE DATABASE "{name}"'))
        yield [
            sa.make_url(server).set(database=name).render_as_string(hide_password=False)
            for name in names
        ]
    finally:
        with admin.connect() as connection:
            for name in names:
                connection.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def postgres_version(url: str) -> str:
    import psycopg

    with psycopg.connect(libpq_url(url)) as db:
        row = db.execute("SHOW server_version").fetchone()
    return f"PostgreSQL {row[0] if row else '?'}"


# --- running and reporting -------------------------------------------------------------


@dataclass(frozen=True)
class Result:
    shape: Shape
    backend: str
    readings: int
    batches: int
    ours_s: float
    floor_s: float
    floor_name: str

    @property
    def rate(self) -> float:
        return self.readings / self.ours_s

    @property
    def floor_rate(self) -> float:
        return self.readings / self.floor_s


def check(store: Store, keys: BenchKeys) -> None:
    """Exit unless the store verifies (after a run of the sealer process, not timed)."""
    report = verify_store(store, keys.trust())
    if not report.ok:
        raise SystemExit(f"the store does not verify: {report.problems[:5]}")


def run_sqlite(shape: Shape, count: int, workdir: Path, writer: Writer) -> Result:
    keys = bench_keys()
    store, ours = ingest(
        str(workdir / f"ours-{shape.name}.db"),
        workdir / f"spool-{shape.name}.db",
        count,
        keys,
        shape,
        writer=writer,
    )
    if writer == "process":
        check(store, keys)
    rows = stored_rows(store)
    floor = sqlite_floor(workdir / f"floor-{shape.name}.db", store, rows)
    store.close()
    return Result(
        shape, "SQLite", _count(rows, count), len(rows), ours, floor, "sqlite3 executemany"
    )


def run_postgres(shape: Shape, url: str, count: int, workdir: Path, writer: Writer) -> Result:
    keys = bench_keys()
    with scratch_databases(url, 2) as (ours_url, floor_url):
        store, ours = ingest(
            ours_url, workdir / f"spool-pg-{shape.name}.db", count, keys, shape, writer=writer
        )
        if writer == "process":
            check(store, keys)
        rows = stored_rows(store)
        floor = postgres_floor(floor_url, store, rows)
        store.close()
    return Result(
        shape, "PostgreSQL", _count(rows, count), len(rows), ours, floor, "psycopg binary COPY"
    )


def _count(batches: list[list[Row]], want: int) -> int:
    stored = sum(len(rows) for rows in batches)
    if stored != want:
        raise SystemExit(f"stored {stored} readings, {want} were put")
    return stored


def machine(postgres: str | None = None) -> str:
    """CPU model, cores, Python and SQLite versions (and PostgreSQL's when used)."""
    model = platform.processor() or "?"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    parts = [
        f"CPU {model}, {os.cpu_count()} cores",
        f"Python {platform.python_version()}",
        f"SQLite {sqlite3.sqlite_version}",
    ]
    if postgres:
        parts.append(postgres)
    return "machine: " + "; ".join(parts)


def report(result: Result) -> None:
    share = result.rate / result.floor_rate
    print(
        f"{result.backend}, {result.shape.name}: {result.readings:,} readings in "
        f"{result.batches} batches"
    )
    print(
        f"  ours  (batched, hashed, signed, committed): {result.ours_s:6.2f} s "
        f"{result.rate:>10,.0f} readings/s"
    )
    print(
        f"  floor ({result.floor_name}, same rows):{' ' * (22 - len(result.floor_name))}"
        f"{result.floor_s:6.2f} s {result.floor_rate:>10,.0f} readings/s"
    )
    if not result.shape.judged:
        print(
            f"  {share:.0%} of the floor (for comparison: the targets apply to the "
            f"{SUSTAINED.name} shape)"
        )
        return
    rate_ok = "PASS" if result.rate >= TARGET_RATE else "FAIL"
    share_ok = "PASS" if share >= TARGET_SHARE else "FAIL"
    print(
        f"  {rate_ok} rate {result.rate:,.0f}/s (target >= {TARGET_RATE:,}/s); "
        f"{share_ok} {share:.0%} of the floor (target >= {TARGET_SHARE:.0%})"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--readings", type=int, default=READINGS)
    parser.add_argument("--shape", choices=[*SHAPES, "both"], default="both")
    parser.add_argument(
        "--postgres",
        default=os.environ.get("CONVERGE_POSTGRES_URL"),
        help="PostgreSQL server URL (default: $CONVERGE_POSTGRES_URL)",
    )
    parser.add_argument(
        "--writer",
        choices=["thread", "process"],
        default="process",
        help="the evidence sink's writer (default: process, the sealer)",
    )
    args = parser.parse_args()
    shapes = list(SHAPES.values()) if args.shape == "both" else [SHAPES[args.shape]]
    print(machine(postgres_version(args.postgres) if args.postgres else None))
    print(
        f"every point read at 1 s, {WINDOW_MS // 1000} s windows "
        f"({POINTS * WINDOW_MS // 1000:,} readings per batch), "
        f"signed by {' and '.join(SIGNING_KEYS)}; shapes:"
    )
    for shape in shapes:
        print(f"  {shape.describe(args.readings)}")
    print()
    with tempfile.TemporaryDirectory() as tmp:
        for shape in shapes:
            report(run_sqlite(shape, args.readings, Path(tmp), args.writer))
            if args.postgres:
                report(run_postgres(shape, args.postgres, args.readings, Path(tmp), args.writer))
        if not args.postgres:
            print("PostgreSQL: skipped (no --postgres URL and CONVERGE_POSTGRES_URL unset)")


if __name__ == "__main__":
    main()
