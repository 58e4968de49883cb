"""Benchmark: one point's 1,000,000 stored readings read through the access guard.

    python bench/query.py                       # 1,000,000 readings, SQLite (and PostgreSQL)
    python bench/query.py --readings 200000     # fewer
    python bench/query.py --every-ms 1000       # one reading a second: 60 to a batch
    python bench/query.py --postgres URL        # default: $CONVERGE_POSTGRES_URL

The store holds one device with one point read every 100 ms (``--every-ms``), signed by two
keys (qa-signing, site-integrity) in 60 s windows: 600 readings to a batch, 1,667 batches
for 1,000,000 readings. It is built through the collector's evidence sink (as
bench/ingest.py does), then read back whole, as CSV, by a principal whose role the plan
grants ``access.read``, three ways:

- ``converge query --format csv`` run as a command (a new process, its standard output to
  /dev/null; the figure includes starting Python), and the same command run in this
  process (:func:`engine.cli.main`, standard output to /dev/null);
- ``GET /v1/points/{device}/{point}/recorded?format=csv`` of a ``converge serve`` process
  on loopback, streamed by httpx in this process (which only counts the bytes);
- the floor: a raw SQL select of the same rows (batch, position, leaf) by the driver
  (PostgreSQL's in binary, as the command reads them), written as CSV by :mod:`csv` in this
  process, to /dev/null.

Each of the three reads every record's leaf, verifies each batch on its own (the leaves
hash to the signed root; both signatures verify under the trusted keys) and writes each
record as a line; the floor does none of that. The guard's own cost is timed apart: the
decision alone (:func:`engine.access.guard.decide`), and the decision with the lookups it
needs (the plans in force over the range: :func:`engine.access.ask`), per request; and
recording it (the ``access.decision`` audit entry).

Targets (issue 11): >= 200,000 records/s for the command, >= 100,000 records/s for the
API, and the guard's own cost under 1 ms per request.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import csv
import json
import os
import resource
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
from ingest import (  # bench/ is on the path when run as a script
    AUDIT_KEY,
    SIGNING_KEYS,
    BenchKeys,
    Clock,
    checkpoint,
    machine,
    postgres_version,
    scratch_databases,
)

from engine.access import Question, ask, record
from engine.access.guard import Request, Target, decide
from engine.api.tokens import TokenFile, tokens_path
from engine.audit import Actor, os_user
from engine.canonical import canonical_json
from engine.cli import main as converge
from engine.evidence import EvidenceSink
from engine.plans.body import PlanBody
from engine.plans.format import PLAN_FORMAT, read_plan, seal
from engine.plugin_manager import make_plugin_manager
from engine.principals import open_principals
from engine.records import Reading
from engine.sign.leaf import instant
from engine.store.spool import Spool
from engine.store.store import Store

DEVICE, POINT, ROLE, WHO = "line-1-plc", "FT101_PV", "qa", "alice@example.com"
WINDOW_MS = 60_000
TARGET_COMMAND = 200_000
TARGET_API = 100_000
TARGET_GUARD_MS = 1.0


# --- the store -------------------------------------------------------------------------


def plan() -> PlanBody:
    """The device's plan: one point, signed by both keys, readable by ``qa``."""
    signing = {"required": True, "keys": list(SIGNING_KEYS), "batch_window_ms": WINDOW_MS}
    body = {
        "format": PLAN_FORMAT,
        "site": "bench",
        "timezone": "UTC",
        "as_of": "2026-06-01",
        "device": {"id": DEVICE, "protocol": "modbus", "endpoint": {}, "limits": {}},
        "points": [{"name": POINT, "address": {}, "signing": signing, "access": {"read": [ROLE]}}],
        "read_groups": [],
    }
    _, data = seal({key: canonical_json(value) for key, value in body.items()})
    return read_plan(data)


@dataclass(frozen=True)
class Span:
    start: datetime
    end: datetime


def span_of(count: int, every_ms: int) -> Span:
    """Where the readings lie: whole windows ending an hour ago."""
    length = timedelta(milliseconds=count * every_ms)
    end = datetime.now(UTC).replace(second=0, microsecond=0) - timedelta(hours=1)
    return Span(end - length - timedelta(minutes=1), end)


@dataclass(frozen=True)
class Load:
    """The readings to store: how many, how often, from when."""

    count: int
    every_ms: int
    at: Span


async def _collect(store: Store, keys: BenchKeys, spool: Spool, load: Load) -> None:
    """Put every reading through the evidence sink, yielding to the loop once a window."""
    clock = Clock()
    sink = EvidenceSink([plan()], store, keys, spool, now=clock)  # type: ignore[arg-type]
    step = timedelta(milliseconds=load.every_ms)
    slot = load.at.start
    for i in range(load.count):
        clock.at = slot
        value = round(20 + (i % 10_000) * 0.001, 3)
        await sink.put(
            Reading(DEVICE, POINT, slot + timedelta(milliseconds=3), value, scheduled_at=slot)
        )
        slot += step
        if i % 600 == 599:
            await asyncio.sleep(0)
    await sink.close()


def build(target: str, workdir: Path, load: Load) -> tuple[BenchKeys, float]:
    """A store at ``target`` holding the readings of one point, signed, checkpointed."""
    keys = BenchKeys([*SIGNING_KEYS, AUDIT_KEY])
    store = Store.open(target, actor=Actor.job("bench-query"))
    store.deploy_plans([(plan(), None)], at=instant(load.at.start - timedelta(days=1)))
    store.record_keys([v for name in keys.names() for v in keys.versions(name)])
    spool = Spool(workdir / f"spool-{secrets.token_hex(4)}.db")
    started = time.perf_counter()
    try:
        asyncio.run(_collect(store, keys, spool, load))
    finally:
        spool.close()
    checkpoint(store, keys)
    store.close()
    return keys, time.perf_counter() - started


# --- the figures -----------------------------------------------------------------------


@dataclass(frozen=True)
class Setup:
    """What every reader is given: the store, the principals, a token, the trusted keys."""

    target: str
    principals: Path
    token: str
    public_keys: Path
    span: Span

    def query_args(self) -> list[str]:
        return [
            "query",
            f"{DEVICE}/{POINT}",
            "--db",
            self.target,
            "--principals",
            str(self.principals),
            "--as",
            WHO,
            "--from",
            instant(self.span.start),
            "--to",
            instant(self.span.end),
            "--public-keys",
            str(self.public_keys),
            "--format",
            "csv",
        ]


def setup(target: str, workdir: Path, keys: BenchKeys, at: Span) -> Setup:
    principals = workdir / "principals.yaml"
    principals.write_text(f"principals:\n  - {{id: {WHO}, kind: person, roles: [{ROLE}]}}\n")
    token = TokenFile(tokens_path(principals)).mint(WHO, timedelta(days=1), datetime.now(UTC))
    public = workdir / "public-keys.json"
    versions = [v.as_dict() for name in keys.names() for v in keys.versions(name)]
    public.write_text(json.dumps(versions))
    return Setup(target, principals, token.text, public, at)


@dataclass(frozen=True)
class Took:
    """Wall-clock seconds, and the CPU seconds of the process that did the work: on a
    machine others share, the second says what the first cannot."""

    wall: float
    cpu: float
    count: int


def cpu_seconds(pid: int | None) -> float:
    """CPU seconds used so far: by this process and its waited-for children (``None``: the
    command run here verifies in a worker process of its own), by its waited-for children
    alone (0), or by the process ``pid``."""
    used = resource.getrusage(resource.RUSAGE_CHILDREN)
    if pid is None:
        return time.process_time() + used.ru_utime + used.ru_stime
    if pid == 0:
        return used.ru_utime + used.ru_stime
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def timed(run: Callable[[], int], worker: int | None = None) -> Took:
    """How long ``run`` takes, what the process doing the work spends, and the records it
    says it wrote."""
    cpu, started = cpu_seconds(worker), time.perf_counter()
    count = run()
    return Took(time.perf_counter() - started, cpu_seconds(worker) - cpu, count)


def command_subprocess(s: Setup) -> int:
    converge_bin = shutil.which("converge", path=str(Path(sys.executable).parent)) or "converge"
    with open(os.devnull, "w") as null:
        done = subprocess.run([converge_bin, *s.query_args()], stdout=null, check=False)
    if done.returncode != 0:
        raise SystemExit(f"converge query exited {done.returncode}")
    return -1


def command_in_process(s: Setup) -> int:
    with open(os.devnull, "w") as null, contextlib.redirect_stdout(null):
        code = converge(s.query_args())
    if code != 0:
        raise SystemExit(f"converge query exited {code}")
    return -1


@contextlib.contextmanager
def serving(s: Setup) -> Iterator[tuple[str, int]]:
    """A ``converge serve`` process on a free loopback port: its URL and process id."""
    converge_bin = shutil.which("converge", path=str(Path(sys.executable).parent)) or "converge"
    process = subprocess.Popen(
        [
            converge_bin,
            "serve",
            "--db",
            s.target,
            "--principals",
            str(s.principals),
            "--port",
            "0",
            "--public-keys",
            str(s.public_keys),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None
        line = process.stdout.readline().split()
        if len(line) < 2:
            raise SystemExit("converge serve did not start")
        yield line[1].removesuffix("/v1/points"), process.pid
    finally:
        process.terminate()
        process.wait(60)


def api_csv(s: Setup, url: str) -> int:
    """Records streamed as CSV by the API (lines counted, the header not)."""
    path = f"/v1/points/{DEVICE}/{POINT}/recorded"
    query = {"start": instant(s.span.start), "end": instant(s.span.end), "format": "csv"}
    lines = 0
    with httpx.stream(
        "GET", url + path, params=query, headers={"Authorization": f"Bearer {s.token}"}, timeout=600
    ) as answer:
        if answer.status_code != 200:
            raise SystemExit(f"the API answered {answer.status_code}: {answer.read()[:300]!r}")
        for chunk in answer.iter_raw(1 << 16):
            lines += chunk.count(b"\n")
    return lines - 1


def floor(s: Setup) -> int:
    """The same rows selected by the driver alone and written as CSV, to /dev/null."""
    with Store.open_existing(s.target) as store, store.reading() as conn:
        driver = conn.connection.driver_connection
        postgres = conn.dialect.name == "postgresql"
        # binary: bytea as bytes, not hex text (the command reads it so too)
        cursor = driver.cursor("floor", binary=True) if postgres else driver.cursor()  # type: ignore[union-attr]
        mark = "%s" if postgres else "?"
        cursor.execute(
            "SELECT r.batch_id, r.position, r.leaf FROM readings r"
            f" JOIN batches b ON b.id = r.batch_id WHERE b.device = {mark}"
            " ORDER BY r.batch_id, r.position",
            (DEVICE,),
        )
        count = 0
        with open(os.devnull, "w", newline="") as null:
            writer = csv.writer(null, lineterminator="\n")
            while rows := cursor.fetchmany(20_000):
                writer.writerows([(b, p, bytes(leaf).decode()) for b, p, leaf in rows])
                count += len(rows)
        cursor.close()
    return count


@dataclass(frozen=True)
class Guard:
    decide_us: float
    ask_ms: float
    record_ms: float


def guard_cost(s: Setup, rounds: int = 200) -> Guard:
    """Per request: the decision alone, the decision with its lookups, and its audit entry."""
    resolver = open_principals(make_plugin_manager(), {"kind": "file", "path": s.principals})
    question = Question(WHO, "read", [DEVICE], [POINT], s.span.start, s.span.end)
    identity = resolver.resolve(WHO)
    request = Request(
        WHO,
        identity,
        os_user(),
        "read",
        [Target(DEVICE, POINT, [plan()])],
        principals=resolver.digest,
    )
    started = time.perf_counter()
    for _ in range(10_000):
        decide(request)
    decide_us = (time.perf_counter() - started) / 10_000 * 1e6
    with Store.open_existing(s.target) as store:
        with store.reading() as conn:
            ask(conn, resolver, question)  # warm: the plan is parsed once per process anyway
            started = time.perf_counter()
            for _ in range(rounds):
                decision = ask(conn, resolver, question)
            ask_ms = (time.perf_counter() - started) / rounds * 1e3
        if decision.outcome != "allow":
            raise SystemExit(f"the guard did not allow the read: {decision.payload()}")
        started = time.perf_counter()
        for _ in range(rounds // 4):
            record(store, decision)
        record_ms = (time.perf_counter() - started) / (rounds // 4) * 1e3
    return Guard(decide_us, ask_ms, record_ms)


def measure(s: Setup, count: int) -> None:
    guard = guard_cost(s)
    print(
        f"  guard, per request: decide {guard.decide_us:.1f} µs; ask (the plans in force over"
        f" the range, then decide) {guard.ask_ms:.2f} ms; record (the audit entry)"
        f" {guard.record_ms:.2f} ms"
    )
    ok = "PASS" if guard.ask_ms < TARGET_GUARD_MS else "FAIL"
    print(f"  {ok} guard {guard.ask_ms:.2f} ms per request (target < {TARGET_GUARD_MS:g} ms)")
    print(f"  {'':44s} {'wall s':>7s} {'records/s':>10s} {'CPU s':>7s} {'per CPU s':>10s}")
    base = timed(lambda: floor(s))
    if base.count != count:
        raise SystemExit(f"the floor read {base.count} rows, want {count}")
    report("floor (driver select, csv.writer)", base, count, base, None)
    took = timed(lambda: command_subprocess(s), worker=0)
    report("converge query --format csv (a process)", took, count, base, TARGET_COMMAND)
    took = timed(lambda: command_in_process(s))
    report("converge query --format csv (in process)", took, count, base, None)
    with serving(s) as (url, pid):
        took = timed(lambda: api_csv(s, url), worker=pid)
    if took.count != count:
        raise SystemExit(f"the API streamed {took.count} records, want {count}")
    report("GET .../recorded?format=csv (server CPU)", took, count, base, TARGET_API)


def report(what: str, took: Took, count: int, base: Took, target: int | None) -> None:
    rate, per_cpu = count / took.wall, count / took.cpu
    line = (
        f"  {what:44s} {took.wall:7.2f} {rate:>10,.0f} {took.cpu:7.2f} {per_cpu:>10,.0f}"
        f"  {base.wall / took.wall:4.0%} of the floor"
    )
    if target is not None:
        line += f"  {'PASS' if rate >= target else 'FAIL'} (target >= {target:,}/s)"
    print(line)


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--readings", type=int, default=1_000_000)
    parser.add_argument("--every-ms", type=int, default=100)
    parser.add_argument("--postgres", default=os.environ.get("CONVERGE_POSTGRES_URL"))
    args = parser.parse_args()
    print(machine())
    at = span_of(args.readings, args.every_ms)
    per_batch = WINDOW_MS // args.every_ms
    print(
        f"one point, {args.readings:,} readings every {args.every_ms} ms,"
        f" {per_batch} to a batch, {-(-args.readings // per_batch):,} batches\n"
    )
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        target = str(workdir / "evidence.db")
        load = Load(args.readings, args.every_ms, at)
        keys, built = build(target, workdir, load)
        print(f"SQLite (built in {built:.0f} s)")
        measure(setup(target, workdir, keys, at), args.readings)
        if args.postgres:
            with scratch_databases(args.postgres, 1) as (url,):
                keys, built = build(url, workdir, load)
                print(f"\n{postgres_version(url)} (built in {built:.0f} s)")
                measure(setup(url, workdir, keys, at), args.readings)


if __name__ == "__main__":
    main()
