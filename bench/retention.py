"""Benchmark: a retention run over 1,000,000 readings where half expire, beside a plain DELETE.

    python bench/retention.py                      # 1,000,000 readings: SQLite, PostgreSQL
    python bench/retention.py --readings 200000    # fewer
    python bench/retention.py --postgres postgresql://user@host/db   # the server to use
    python bench/retention.py --window 1           # small batches: 100 records each

The store is the ingest benchmark's sustained shape (bench/ingest.py: 10
devices x 100 points read every second for 1,000 s, 6,000 readings per
signed batch), stored two hours ago. The plans of half the devices keep
their readings at least one hour (so they have expired), the other half's
keep them for ever. Timed:

- **receipts**: ``converge retention apply`` as the engine runs it
  (:func:`engine.retention.apply`): the store verified first (everything but
  the records of the batches it does not delete from), then a few batches
  per transaction (each batch's records re-read and compared, by one digest,
  with those the check hashed into the signed root, or hashed again when
  they differ; its receipt with every deleted position, and their leaf
  hashes while records of the batch remain, appended; the rows deleted),
  each transaction with a signed checkpoint;
- **archives**: the same on a store whose plans say ``on_expiry: archive``:
  an audit bundle of the 500,000 readings is written first;
- **floor**: one ``DELETE`` of the same rows, in one transaction, by the
  driver alone, on a copy of the store.

Then ``verify_store`` before and after the run, per remaining record (the
least of ``--verifies`` runs each, 3 unless told), and the run's own check
alone (``verify_store`` rehashing only the records of the batches it deletes
from). Each figure is wall-clock seconds and the CPU
seconds of the benchmark's process and its worker processes (not of the
PostgreSQL server): on a machine others share, the second says what the
first cannot. Targets
(the retention issue): >= 100,000 records/s deleted with receipts, and
verification afterwards no slower per remaining record than before.
PostgreSQL runs when ``--postgres`` or ``CONVERGE_POSTGRES_URL`` names a
server; each run makes (and drops) its own scratch databases there.
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import sqlite3
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import ingest  # bench/ is on the path when run as a script
from ingest import (
    POINTS,
    READINGS,
    SUSTAINED,
    WINDOW_MS,
    BenchKeys,
    device_id,
    libpq_url,
    machine,
    postgres_version,
    scratch_databases,
)

from engine.audit import Actor
from engine.canonical import canonical_json
from engine.plans.body import PlanBody
from engine.plans.format import PLAN_FORMAT, read_plan, seal
from engine.retention import Job, apply
from engine.store.database import database_url
from engine.store.store import Store
from engine.verify.whole import verify_store

TARGET_RATE = 100_000
EXPIRING = SUSTAINED.devices // 2
"""Devices 0..EXPIRING-1 keep their readings at least an hour; the others for ever."""
HOUR_MS = 3_600_000


def retention_plans(on_expiry: str, window_ms: int) -> list[PlanBody]:
    """The ingest benchmark's plans, with retention on the first half of the devices, and
    batches of ``window_ms``."""
    signing = {"required": True, "keys": list(ingest.SIGNING_KEYS), "batch_window_ms": window_ms}
    kept = {"keep_at_least_ms": HOUR_MS, "on_expiry": on_expiry}
    bodies = []
    for d in range(SUSTAINED.devices):
        retention = kept if d < EXPIRING else {}
        points = [
            {"name": f"R{p:03d}", "address": {}, "signing": signing, "retention": retention}
            for p in range(POINTS)
        ]
        body = {
            "format": PLAN_FORMAT,
            "site": "bench",
            "timezone": "UTC",
            "as_of": "2026-06-01",
            "device": {"id": device_id(d), "protocol": "modbus", "endpoint": {}, "limits": {}},
            "points": points,
            "read_groups": [],
        }
        _, data = seal({key: canonical_json(value) for key, value in body.items()})
        bodies.append(read_plan(data))
    return bodies


def build(
    target: str, count: int, workdir: Path, on_expiry: str, window_ms: int
) -> tuple[Store, BenchKeys]:
    """A store of ``count`` readings under the retention plans (ingest's pipeline, whose
    ``plans`` are swapped for these)."""
    ingest.plans = lambda shape: retention_plans(on_expiry, window_ms)  # type: ignore[assignment]
    store, keys, _ = ingest.build_store(target, count, workdir, SUSTAINED)
    return store, keys


Seconds = tuple[float, float]
"""Wall-clock seconds, and CPU seconds of this process and its (reaped) children."""


@dataclass
class Figures:
    expired: int
    verify_before: Seconds
    check: Seconds
    apply: Seconds
    verify_after: Seconds
    floor: Seconds
    archive: Seconds
    fixed_before: Seconds
    """``verify_store`` hashing no record: what it does that does not grow with the records,
    but the worker pool's own cost (no pool is started for no records), which is left in the
    records' share."""
    fixed_after: Seconds


def clocks() -> Seconds:
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return time.perf_counter(), time.process_time() + children.ru_utime + children.ru_stime


def since(started: Seconds) -> Seconds:
    now = clocks()
    return now[0] - started[0], now[1] - started[1]


def timed_verify(
    store: Store,
    keys: BenchKeys,
    readings: int | None,
    only: list[int] | None = None,
    *,
    as_a_run: bool = False,
) -> Seconds:
    """Seconds for one ``verify_store`` (of the records of ``only``, when given; and of their
    signatures alone, ``as_a_run`` checks before it deletes); exits unless the store verifies
    (with ``readings``, when given)."""
    started = clocks()
    signed = only if as_a_run else None
    report = verify_store(store, keys.trust(), records_of=only, signatures_of=signed)
    elapsed = since(started)
    counted = report.counts.get("readings")
    if not report.ok or report.findings or readings not in {None, counted}:
        raise SystemExit(f"verify: {report.problems[:5]} {report.findings[:5]} {report.counts}")
    return elapsed


def least_verify(
    store: Store, keys: BenchKeys, readings: int | None, times: int, only: list[int] | None = None
) -> Seconds:
    """The least wall-clock and the least CPU seconds of ``times`` ``verify_store`` runs (of
    the records of ``only``, when given): on a shared machine others' load only ever adds to
    a run's time, so the least of a few is the nearest to what the verification costs."""
    runs = [timed_verify(store, keys, readings, only) for _ in range(times)]
    return min(wall for wall, _ in runs), min(cpu for _, cpu in runs)


def timed_apply(store: Store, keys: BenchKeys, archives: Path) -> tuple[Seconds, int]:
    """Seconds for one retention run, and how many records it deleted."""
    job = Job(Actor.job("bench-retention"), keys, keys.trust(), archives=archives)  # type: ignore[arg-type]
    started = clocks()
    done = apply(store, job)
    return since(started), done.records


def expired_batches(store: Store) -> list[int]:
    devices = ", ".join(f"'{device_id(d)}'" for d in range(EXPIRING))
    with store.reading() as conn:
        cursor = conn.connection.driver_connection.cursor()  # type: ignore[union-attr]
        cursor.execute(f"SELECT id FROM batches WHERE device IN ({devices})")
        return [row[0] for row in cursor.fetchall()]


def floor_sql(batches: list[int]) -> str:
    return f"DELETE FROM readings WHERE batch_id IN ({', '.join(map(str, batches))})"


def measure(
    target: str,
    floor: Callable[[list[int]], Seconds],
    archive_target: str,
    tmp: Path,
    count: int,
    *,
    verifies: int,
    window_ms: int,
) -> Figures:
    """Build, verify, apply, verify (``verifies`` times each, the least kept); the floor on a
    copy (``floor``); then the archive run."""
    store, keys = build(target, count, tmp, "delete", window_ms)
    batches = expired_batches(store)
    store.close()
    floored = floor(batches)
    store = Store.open_existing(target)
    before = least_verify(store, keys, count, verifies)
    fixed_before = least_verify(store, keys, None, verifies, [])
    check = timed_verify(store, keys, None, batches, as_a_run=True)
    applied, expired = timed_apply(store, keys, tmp / "archives")
    after = least_verify(store, keys, count - expired, verifies)
    fixed_after = least_verify(store, keys, None, verifies, [])
    store.close()
    archived, archive_keys = build(archive_target, count, tmp, "archive", window_ms)
    archive, _ = timed_apply(archived, archive_keys, tmp / "archives")
    archived.close()
    return Figures(
        expired, before, check, applied, after, floored, archive, fixed_before, fixed_after
    )


def sqlite_floor(path: Path, copy: Path) -> Callable[[list[int]], Seconds]:
    def floor(batches: list[int]) -> Seconds:
        shutil.copy(path, copy)
        db = sqlite3.connect(copy, isolation_level=None)
        try:
            db.execute("PRAGMA synchronous=NORMAL")
            started = clocks()
            db.execute("BEGIN IMMEDIATE")
            db.execute(floor_sql(batches))
            db.execute("COMMIT")
            return since(started)
        finally:
            db.close()

    return floor


def postgres_floor(server: str, source: str, copy: str) -> Callable[[list[int]], Seconds]:
    """The floor on a database made from the store's as a template (then dropped)."""
    import psycopg
    import sqlalchemy as sa

    def floor(batches: list[int]) -> Seconds:
        admin = sa.create_engine(server, isolation_level="AUTOCOMMIT", poolclass=sa.NullPool)
        name, template = sa.make_url(copy).database, sa.make_url(source).database
        with admin.connect() as connection:
            connection.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}"'))
            connection.execute(sa.text(f'CREATE DATABASE "{name}" TEMPLATE "{template}"'))
        try:
            with psycopg.connect(libpq_url(copy)) as db:
                started = clocks()
                with db.transaction():
                    db.execute(floor_sql(batches))
                return since(started)
        finally:
            with admin.connect() as connection:
                connection.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
            admin.dispose()

    return floor


def report(name: str, count: int, f: Figures) -> None:
    def line(what: str, took: Seconds, records: int) -> None:
        wall, cpu = took
        print(
            f"  {what:<50} {wall:6.2f} s {records / wall:>9,.0f}/s"
            f"   CPU {cpu:6.2f} s {records / cpu:>9,.0f}/s"
        )

    remaining = count - f.expired
    print(f"{name}: {count:,} readings, {f.expired:,} expired")
    line("apply with receipts (check, then per batch)", f.apply, f.expired)
    line("apply with archives (a bundle first)", f.archive, f.expired)
    line("floor: one DELETE of the same rows", f.floor, f.expired)
    line("the run's check alone (records it deletes)", f.check, f.expired)
    deleting = (f.apply[0] - f.check[0], f.apply[1] - f.check[1])
    line("of the apply, deleting (apply - check)", deleting, f.expired)
    for what, took, records in (
        ("verify before, per record (least of the runs)", f.verify_before, count),
        ("verify after, per remaining record (least)", f.verify_after, remaining),
    ):
        wall, cpu = (t / records * 1e6 for t in took)
        print(f"  {what:<50} {wall:6.2f} us   CPU {cpu:6.2f} us")
    for what, fixed in (("before", f.fixed_before), ("after", f.fixed_after)):
        wall, cpu = (t * 1e3 for t in fixed)
        label = f"of it, fixed work (no records, no pool), {what}"
        print(f"  {label:<50} {wall:6.0f} ms   CPU {cpu:6.0f} ms")
    hashed_before = (f.verify_before[1] - f.fixed_before[1]) / count
    hashed_after = (f.verify_after[1] - f.fixed_after[1]) / remaining
    print(
        f"  {'verify, CPU per record hashed: before, after':<50} {hashed_before * 1e6:6.2f} us"
        f"   {hashed_after * 1e6:6.2f} us ({hashed_after / hashed_before:.2f}x)"
    )
    rate, cpu_rate = f.expired / f.apply[0], f.expired / f.apply[1]
    per_record = f.verify_before[1] / count
    ratio = (f.verify_after[1] / remaining) / per_record
    floor = (f.fixed_after[1] / remaining + hashed_before) / per_record
    print(
        f"  {'PASS' if rate >= TARGET_RATE else 'FAIL'} rate {rate:,.0f}/s ({cpu_rate:,.0f}/s of"
        f" CPU; target >= {TARGET_RATE:,}/s)\n"
        f"  {'PASS' if ratio <= 1 else 'FAIL'} verify after {ratio:.2f}x a record's CPU time"
        f" before (target <= 1x; floor {floor:.2f}x: the work after that does not shrink with"
        " the records, over the records left, each hashed at the cost before)\n"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--readings", type=int, default=READINGS)
    parser.add_argument("--postgres", default=os.environ.get("CONVERGE_POSTGRES_URL"))
    parser.add_argument(
        "--verifies", type=int, default=3, help="verify_store runs before and after (the least)"
    )
    parser.add_argument(
        "--window",
        type=float,
        default=WINDOW_MS / 1000,
        help="seconds of a batch's window (default 60: 6,000 records a batch; 1: 100)",
    )
    args = parser.parse_args()
    window_ms = round(args.window * 1000)
    print(machine())
    print(f"now {datetime.now(UTC).isoformat(timespec='seconds')}")
    print(f"batches of {window_ms / 1000:g} s: {POINTS * window_ms // 1000:,} records each\n")
    with tempfile.TemporaryDirectory() as name:
        tmp = Path(name)
        path = tmp / "delete.db"
        floor = sqlite_floor(path, tmp / "floor.db")
        figures = measure(
            str(path),
            floor,
            str(tmp / "archive.db"),
            tmp,
            args.readings,
            verifies=args.verifies,
            window_ms=window_ms,
        )
        report("SQLite", args.readings, figures)
        if args.postgres:
            with scratch_databases(args.postgres, 3) as (target, archive_target, copy):
                server = database_url(args.postgres)
                floor = postgres_floor(server, target, copy)
                figures = measure(
                    target,
                    floor,
                    archive_target,
                    tmp,
                    args.readings,
                    verifies=args.verifies,
                    window_ms=window_ms,
                )
            report(postgres_version(args.postgres), args.readings, figures)


if __name__ == "__main__":
    main()
