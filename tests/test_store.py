"""The evidence store as a user relies on it: nothing stored twice, nothing torn, nothing lost.

Tests run on a SQLite file and on a fresh PostgreSQL database where that makes
sense. Failures are real ones: SQLite's own SQLITE_FULL (``max_page_count``),
PostgreSQL behind a TCP proxy that is stopped and started again, a writer
process killed with SIGKILL mid-write, and ``converge simulate`` and
``converge run`` as processes for the end-to-end run.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import random
import re
import selectors
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Literal, TypeVar

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.config import Config
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from evidence_kit import (
    KEY_NAMES,
    PASSPHRASE,
    REPO,
    T0,
    Site,
    agree,
    collect,
    missed_slots,
    open_store,
    public_keys,
    records,
    shutdown_gaps,
    verify,
)
from sqlalchemy import Connection, event, select, text
from sqlalchemy.engine import make_url
from store_proxy import TcpProxy
from waiting import until, wait_until

from engine import audit
from engine.audit import Actor
from engine.cli import main
from engine.errors import StoreError
from engine.evidence import EvidenceConfig, EvidenceSink, EvidenceTarget, open_evidence
from engine.evidence.batcher import Batcher
from engine.plans.body import PlanBody
from engine.records import Reading, Record
from engine.sign.batch import Batch, Statement, epoch_ms, record_time, sign_batch
from engine.sign.leaf import instant
from engine.store import auditlog
from engine.store.database import MIGRATIONS, SCHEMA, connect, writing
from engine.store.sealed import SealedBatch
from engine.store.spool import Spool
from engine.store.store import Store
from engine.store.tables import BATCHES, METADATA
from engine.verify.report import Report

CONVERGE = [sys.executable, "-m", "engine.cli"]
DAY_MS = 86_400_000
MINUTE = timedelta(minutes=1)
T = TypeVar("T")


# --- helpers ---------------------------------------------------------------------------


def by_record(**settings: Any) -> EvidenceConfig:
    """A sink that closes a window only when the device's next window starts (or at close),
    and tries the store again at once after a failure: every batch boundary is known."""
    return EvidenceConfig(grace_ms=DAY_MS, retry_s=0, **settings)


def seal(site: Site, items: Iterable[Record]) -> list[SealedBatch]:
    """The batches a collector seals of ``items``: chained from the zero root, signed."""
    keys = site.key_store()
    now = datetime.now(UTC)
    signers = {name: keys.signer(name, now) for name in KEY_NAMES}
    sealed: list[SealedBatch] = []

    def keep(batch: Batch) -> None:
        sealed.append(SealedBatch.of(batch, sign_batch(batch, signers)))

    async def put_all() -> None:
        batcher = Batcher(site.plans, keep)
        for record in items:
            await batcher.put(record)
        await batcher.close()

    asyncio.run(put_all())
    return sealed


def sealed_while_putting(site: Site, items: Iterable[Record]) -> int:
    """How many batches a :func:`by_record` sink seals while ``items`` (in time order) are put:
    every window of each device but its last."""
    window = {p.device.id: p.window_ms for p in site.plans}
    windows: dict[str, set[int]] = defaultdict(set)
    for record in items:
        windows[record.device].add(epoch_ms(record_time(record)) // window[record.device])
    return sum(len(w) - 1 for w in windows.values())


async def delivered(sink: EvidenceSink, count: int) -> None:
    """Wait until the sink's writer has stored, spooled or dropped ``count`` live batches."""
    await until(
        lambda: sum(sink.stats[k] for k in ("stored", "spooled", "dropped", "duplicates")) >= count,
        lambda: f"the writer to handle {count} batches (it handled {sink.stats})",
    )


def audit_signer(site: Site) -> audit.Seal:
    """Signs checkpoints with the audit key, as the evidence sink does."""
    return audit.seal_with(site.key_store(), "audit-log", datetime.now(UTC))


def stored_roots(store: Store) -> list[bytes]:
    """The root of every stored batch, in the order they were stored."""
    with store.reading() as conn:
        return [bytes(r) for r in conn.scalars(select(BATCHES.c.root).order_by(BATCHES.c.id))]


def entries_of(store: Store, kind: str) -> list[audit.AuditEntry]:
    with store.reading() as conn:
        return list(auditlog.entries(conn, [kind]))


def stored_records(report: Report) -> int:
    """Readings and gap records the verifier found."""
    return int(report.counts["readings"] + report.counts["gap records"])


def audit_log_json(capsys: pytest.CaptureFixture[str], db: str, kind: str) -> list[dict[str, Any]]:
    """``converge audit log --kind KIND --format json``: the payload of each entry."""
    assert main(["audit", "log", "--db", db, "--kind", kind, "--format", "json"]) == 0
    return [json.loads(line)["payload"] for line in capsys.readouterr().out.splitlines()]


# --- outages ---------------------------------------------------------------------------


def _no_growth(dbapi_connection: sqlite3.Connection, _record: object) -> None:
    dbapi_connection.execute("PRAGMA max_page_count = 1")  # SQLite keeps it at the current size


class DiskFull:
    """SQLite's own SQLITE_FULL: while it lasts, the store's connections cannot grow the file."""

    def __init__(self, target: str) -> None:
        self.target = target

    def begin(self, store: Store) -> None:
        event.listen(store.engine, "connect", _no_growth)
        store.engine.dispose()  # pooled connections would keep their old limit

    def end(self, store: Store) -> None:
        event.remove(store.engine, "connect", _no_growth)
        store.engine.dispose()


class ServerDown:
    """PostgreSQL reached through a proxy; while it lasts, connections are refused and cut."""

    def __init__(self, proxy: TcpProxy, target: str) -> None:
        self.proxy, self.target = proxy, target
        self.where = f"127.0.0.1:{proxy.port}"

    def begin(self, store: Store | None = None) -> None:
        self.proxy.stop()

    def end(self, store: Store | None = None) -> None:
        self.proxy.start()


@contextlib.contextmanager
def server_down(request: pytest.FixtureRequest) -> Iterator[ServerDown]:
    """A fresh PostgreSQL database behind a proxy, for :class:`ServerDown`."""
    url = make_url(request.getfixturevalue("fresh_postgres_url"))
    with TcpProxy((str(url.host), int(url.port or 5432))) as proxy:
        through = url.set(host="127.0.0.1", port=proxy.port, query={"connect_timeout": "2"})
        yield ServerDown(proxy, through.render_as_string(hide_password=False))


@pytest.fixture(params=["sqlite-disk-full", "postgresql-down"])
def outage(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[DiskFull | ServerDown]:
    if request.param == "sqlite-disk-full":
        yield DiskFull(str(tmp_path / "evidence.db"))
        return
    with server_down(request) as down:
        yield down


# --- at least once, stored once --------------------------------------------------------


def test_a_batch_written_twice_is_stored_once(evidence_site, backend):
    store = open_store(evidence_site, backend)
    items = list(records(evidence_site, 90))
    batches = seal(evidence_site, items)
    assert all(store.write(b) for b in batches)
    counts = store.counts()
    assert [store.write(b) for b in batches] == [False] * len(batches)
    assert store.counts() == counts
    store.checkpoint(audit_signer(evidence_site))
    report = verify(evidence_site, store)
    assert report.ok, report.problems
    assert report.counts["batches"] == len(batches) == len(entries_of(store, "batch.stored"))
    assert stored_records(report) == len(items)
    store.close()


def test_replaying_a_spooled_batch_that_was_already_stored_stores_nothing_twice(
    evidence_site, backend, tmp_path
):
    store = open_store(evidence_site, backend)
    earlier = list(records(evidence_site, 120))
    first = seal(evidence_site, earlier)
    for sealed in first:
        assert store.write(sealed)
    # a collector stored these, then died before taking them out of its spool
    spool = Spool(tmp_path / "spool.db")
    for sealed in first[-3:]:
        assert spool.put(sealed, instant(datetime.now(UTC)))
    later = list(records(evidence_site, 60, start=T0 + 2 * MINUTE))
    sink = asyncio.run(collect(evidence_site, store, spool, later, by_record()))
    assert (sink.stats["duplicates"], sink.stats["replayed"], len(spool)) == (3, 0, 0)
    report = verify(evidence_site, store)
    assert report.ok, report.problems
    assert report.counts["batches"] == len(first) + sink.stats["stored"]
    assert stored_records(report) == len(earlier) + len(later)
    spool.close()


# --- atomic batches: a writer killed mid-write ------------------------------------------

WRITER = """
import sys
from engine.store.sealed import SealedBatch
from engine.audit import Actor
from engine.store.store import Store

store = Store.open(sys.argv[1], actor=Actor.job("killed-writer"))
with open(sys.argv[2], "rb") as batches:
    for line in batches:
        if store.write(SealedBatch.from_bytes(line)):
            print("stored", flush=True)
print("all stored", flush=True)
sys.stdin.read()  # wait to be killed
"""
PER_BATCH = 5_000


def dense_readings(plan: PlanBody, windows: int) -> Iterator[Reading]:
    """:data:`PER_BATCH` readings of the plan's device in each of ``windows`` minutes from T0."""
    device, points = plan.device.id, [p.name for p in plan.points]
    step = MINUTE / PER_BATCH
    for i in range(windows * PER_BATCH):
        at = T0 + i * step
        yield Reading(device, points[i % len(points)], at, float(i % 997), scheduled_at=at)


def write_until_killed(target: str, batches: Path, delay: float) -> list[str]:
    """Start a process storing ``batches`` (skipping stored ones); SIGKILL it ``delay`` s after
    its first new batch is stored. What it printed: a line per batch it saw stored."""
    writer = subprocess.Popen(
        [sys.executable, "-c", WRITER, target, str(batches)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert writer.stdout is not None
    with selectors.DefaultSelector() as waiting:
        waiting.register(writer.stdout, selectors.EVENT_READ)
        said_something = waiting.select(timeout=30)  # never hang the suite
    first = writer.stdout.readline() if said_something else b""
    if first == b"stored\n":
        time.sleep(delay)
    writer.kill()
    out, err = writer.communicate(timeout=30)
    assert first == b"stored\n", err.decode()
    return (first + out).decode().splitlines()


def test_a_writer_killed_mid_write_leaves_only_whole_batches(evidence_site, backend, tmp_path):
    open_store(evidence_site, backend).close()
    plan = next(p for p in evidence_site.plans if p.device.id == "reactor-1-plc")
    batches = seal(evidence_site, dense_readings(plan, windows=24))
    stream = tmp_path / "batches.jsonl"
    stream.write_bytes(b"".join(b.to_bytes() + b"\n" for b in batches))
    rng = random.Random(5_000)
    delays = [round(rng.uniform(0.005, 0.05), 3) for _ in range(5)]
    said = [write_until_killed(backend, stream, delay) for delay in delays]
    assert not any("all stored" in lines for lines in said), "a writer ran out of batches"
    with contextlib.closing(Store.open(backend, actor=Actor.job("test"))) as store:
        store.checkpoint(audit_signer(evidence_site))
        roots = stored_roots(store)
        logged = entries_of(store, "batch.stored")
        report = verify(evidence_site, store)
    assert report.ok, (delays, report.problems)
    assert roots == [b.head.root for b in batches[: len(roots)]]
    assert [e.payload["root"] for e in logged] == [r.hex() for r in roots]
    assert report.counts["readings"] == PER_BATCH * len(roots)
    # every batch a writer saw stored is there; a kill after a commit may add one per round
    acknowledged = sum(len(lines) for lines in said)
    assert acknowledged <= len(roots) <= acknowledged + len(delays)


# --- store and forward -----------------------------------------------------------------


def across_outage(
    site: Site,
    store: Store,
    spool: Spool,
    outage: DiskFull | ServerDown,
    *,
    during: list[Record],
    after: list[Record],
    config: EvidenceConfig,
    seen: Callable[[], T],
) -> tuple[EvidenceSink, T]:
    """Put ``during`` while the store is away and, once its sealed batches are delivered,
    note what ``seen`` says; then put ``after`` with the store back, and close."""

    async def scenario() -> tuple[EvidenceSink, T]:
        sink = EvidenceSink(site.plans, store, site.key_store(), spool, config=config)
        outage.begin(store)
        for record in during:
            await sink.put(record)
        await delivered(sink, sealed_while_putting(site, during))
        noted = seen()
        outage.end(store)
        for record in after:
            await sink.put(record)
        await sink.close()
        return sink, noted

    return asyncio.run(scenario())


def test_an_outage_spools_batches_and_replays_them_oldest_first_beside_live_data(
    evidence_site, outage, tmp_path
):
    store = open_store(evidence_site, outage.target)
    spool = Spool(tmp_path / "spool.db")
    during = list(records(evidence_site, 180))
    after = list(records(evidence_site, 180, start=T0 + 3 * MINUTE))

    sink, backlog = across_outage(
        evidence_site,
        store,
        spool,
        outage,
        during=during,
        after=after,
        config=by_record(replay_chunk=1),
        seen=lambda: [sealed.head.root for _, sealed, _ in spool.oldest(len(spool))],
    )
    assert sink.stats["stored"] > len(backlog) == sink.stats["spooled"] > 0
    order = stored_roots(store)
    # after the outage each live batch is stored first, then one spooled batch, oldest first
    recovery = order[: 2 * len(backlog)]
    assert recovery[1::2] == backlog
    assert not set(recovery[0::2]) & set(backlog)
    assert (sink.stats["replayed"], sink.stats["dropped"], len(spool)) == (len(backlog), 0, 0)
    report = verify(evidence_site, store)
    assert report.ok, report.problems
    assert stored_records(report) == len(during) + len(after)
    spool.close()


def a_moment_passes() -> None:
    """Return once the clock has moved on: what follows is stamped strictly later than what
    came before (a key version's end after the batches it signed, and so on)."""
    mark = datetime.now(UTC)
    wait_until(lambda: datetime.now(UTC) > mark, "the clock to move on", every=0.001)


def test_a_batch_spooled_before_a_key_rotation_verifies_when_replayed_after_it(
    evidence_site, outage, tmp_path
):
    """Its signatures are judged when it was sealed and spooled, not when it was replayed."""
    site = dataclasses.replace(evidence_site, keys_dir=tmp_path / "keys")
    shutil.copytree(evidence_site.keys_dir, site.keys_dir)
    store = open_store(site, outage.target)
    spool = Spool(tmp_path / "spool.db")
    during = list(records(site, 150))

    async def spooled() -> None:
        sink = EvidenceSink(site.plans, store, site.key_store(), spool, config=by_record())
        outage.begin(store)
        for record in during:
            await sink.put(record)
        await sink.close()

    asyncio.run(spooled())
    assert len(spool) > 0
    outage.end(store)
    a_moment_passes()
    keys = site.key_store()
    for name in ("qa-signing", "site-integrity", "ops-signing"):
        keys.rotate(name)  # the versions that signed the spooled batches end now
    store.record_keys([v for name in keys.names() for v in keys.versions(name)])
    a_moment_passes()
    after = list(records(site, 60, start=T0 + timedelta(seconds=150)))
    sink = asyncio.run(collect(site, store, spool, after, by_record()))
    assert len(spool) == 0 and sink.stats["replayed"] > 0
    report = verify(site, store)
    assert report.ok, report.problems
    assert stored_records(report) == len(during) + len(after)
    spool.close()


def test_a_spool_from_before_batches_kept_their_time_is_still_replayed(evidence_site, tmp_path):
    sealed = seal(evidence_site, records(evidence_site, 90))[0]
    old = sqlite3.connect(tmp_path / "spool.db")
    old.execute(
        "CREATE TABLE spooled (id INTEGER PRIMARY KEY, size INTEGER NOT NULL, batch BLOB NOT NULL)"
    )
    data = sealed.to_bytes()
    old.execute("INSERT INTO spooled (size, batch) VALUES (?, ?)", (len(data), data))
    old.commit()
    old.close()
    spool = Spool(tmp_path / "spool.db")
    assert [(b.statement, at) for _, b, at in spool.oldest(5)] == [(sealed.statement, None)]
    spool.put(sealed, "2026-06-01T12:00:00.000000Z")
    assert [at for _, _, at in spool.oldest(5)] == [None, "2026-06-01T12:00:00.000000Z"]
    spool.close()


SPOOL_BOUND = 300_000
"""Bytes of spool: room for the first few batches of a three-minute outage, not all."""


def test_a_full_spool_drops_batches_and_the_audit_log_says_which(
    evidence_site, outage, tmp_path, capsys
):
    store = open_store(evidence_site, outage.target)
    spool = Spool(tmp_path / "spool.db", max_bytes=SPOOL_BOUND)
    during = list(records(evidence_site, 180))
    after = list(records(evidence_site, 60, start=T0 + 3 * MINUTE))

    sink, dropped = across_outage(
        evidence_site,
        store,
        spool,
        outage,
        during=during,
        after=after,
        config=by_record(),
        seen=lambda: [Statement.parse(d.statement) for d in spool.dropped()],
    )
    assert sink.stats["spooled"] > 0 and sink.stats["dropped"] == len(dropped) > 0
    logged = audit_log_json(capsys, outage.target, "batch.dropped")
    assert [(p["device"], p["window_start"], p["count"], p["root"]) for p in logged] == [
        (d.device, d.window_start, d.count, d.root.hex()) for d in dropped
    ]
    [full] = audit_log_json(capsys, outage.target, "spool.full")
    assert (full["dropped"], full["max_bytes"]) == (len(dropped), SPOOL_BOUND)
    report = verify(evidence_site, store)
    assert report.ok, report.problems  # each chain is excused across its dropped batches
    assert stored_records(report) == len(during) + len(after) - sum(d.count for d in dropped)
    spool.close()


class FolderAway:
    """A SQLite store on a mount that is not there: its folder is moved away and back."""

    def __init__(self, folder: Path) -> None:
        self.folder, self.target = folder, str(folder / "evidence.db")
        self.where = self.target
        folder.mkdir()

    def begin(self) -> None:
        self.folder.rename(self.folder.with_name("unmounted"))

    def end(self) -> None:
        self.folder.with_name("unmounted").rename(self.folder)


@pytest.fixture(params=["sqlite-folder-away", "postgresql-down"])
def away(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[FolderAway | ServerDown]:
    """A store that is away from the start (``begin``) until ``end``."""
    if request.param == "sqlite-folder-away":
        yield FolderAway(tmp_path / "mnt")
        return
    with server_down(request) as down:
        yield down


def run_target(away: FolderAway | ServerDown, tmp_path: Path) -> EvidenceTarget:
    return EvidenceTarget(away.target, tmp_path / "spool.db", tmp_path / "witness.jsonl")


def test_a_collector_starts_and_stops_while_the_store_is_away_and_loses_nothing(
    evidence_site, away, tmp_path
):
    """Four runs: the store up; away at start, back mid-run; away all run; away at start and
    back before the first batch, which the sealer process then records it all into."""
    target, keys = run_target(away, tmp_path), evidence_site.key_store()
    parts = [
        list(records(evidence_site, 90, start=T0 + timedelta(seconds=90 * k))) for k in range(5)
    ]
    errors: list[str | None] = []

    async def run(
        *pieces: list[Record],
        back_after: int | None = None,
        writer: Literal["thread", "process"] = "thread",
    ) -> EvidenceSink:
        sink = open_evidence(
            evidence_site.plans, evidence_site.plans_dir, target, keys, by_record(writer=writer)
        )
        errors.append(sink.store_error)
        for i, piece in enumerate(pieces):
            if i == back_after:
                if i:  # what was sealed meanwhile went to the spool
                    await delivered(sink, sealed_while_putting(evidence_site, pieces[i - 1]))
                away.end()
            for record in piece:
                await sink.put(record)
        await sink.close()
        return sink

    asyncio.run(run(parts[0]))
    away.begin()
    returned = asyncio.run(run(parts[1], parts[2], back_after=1))
    away.begin()
    absent = asyncio.run(run(parts[3], writer="process"))
    spool = Spool(target.spool)
    assert len(spool) == absent.stats["spooled"] > 0 and len(spool.deferred()) == 2
    spool.close()
    between = instant(datetime.now(UTC))
    last = asyncio.run(run(parts[4], back_after=0, writer="process"))  # still away at start

    assert errors[0] is None
    for error in errors[1:]:  # a run that starts while the store is away names it, and why
        assert error and away.where in error
    assert returned.stats["spooled"] > 0 and returned.stats["replayed"] > 0
    assert last.stats["replayed"] == absent.stats["spooled"]
    with Store.open_existing(away.target) as store:
        report = verify(evidence_site, store)
        assert report.ok, report.problems
        assert stored_records(report) == sum(map(len, parts))
        marks = {"collector.started": "(", "batch.stored": "b", "collector.stopped": ")"}
        with store.reading() as conn:
            log = "".join(marks[e.kind] for e in auditlog.entries(conn, list(marks)))
        deployed = entries_of(store, "plan.deployed")
        stops = entries_of(store, "collector.stopped")
    assert stops[2].time < between < stops[3].time  # logged late, dated when it happened
    # every run's start and stop are logged, in order, and no batch outside a run
    assert re.fullmatch(r"(\(b*\)){4}", log), log
    assert len(deployed) == len(evidence_site.plans)  # each plan once, by the first run
    spool = Spool(target.spool)
    assert (len(spool), spool.deferred()) == (0, [])
    spool.close()


def test_a_first_run_cannot_start_while_the_store_is_away(evidence_site, away, tmp_path, capsys):
    """Without the store, only the spool could say where each device's chain ends."""
    target = run_target(away, tmp_path)
    away.begin()
    with pytest.raises(StoreError, match="does not know where the chains of") as refused:
        open_evidence(
            evidence_site.plans,
            evidence_site.plans_dir,
            target,
            evidence_site.key_store(),
            EvidenceConfig(),
        )
    for plan in evidence_site.plans:
        assert plan.device.id in str(refused.value)
    spool = Spool(target.spool)
    assert (len(spool), spool.deferred(), spool.heads()) == (0, [], {})
    spool.close()


def test_a_collector_that_switches_spools_continues_every_chain(evidence_site, backend, tmp_path):
    """A new spool holds no head, one used before holds stale ones: the store's decide."""
    store = open_store(evidence_site, backend)
    first, second = Spool(tmp_path / "first.db"), Spool(tmp_path / "second.db")
    for k, spool in enumerate([first, second, first]):  # the first's heads are stale by then
        start = T0 + timedelta(seconds=90 * k)
        asyncio.run(collect(evidence_site, store, spool, list(records(evidence_site, 90, start))))
    report = verify(evidence_site, store)
    assert report.ok, report.problems
    assert stored_records(report) == 3 * len(list(records(evidence_site, 90)))

    async def killed_before_its_first_batch(spool: Spool) -> None:
        sink = EvidenceSink(evidence_site.plans, store, evidence_site.key_store(), spool)
        sink.task.cancel()

    third = Spool(tmp_path / "third.db")
    asyncio.run(killed_before_its_first_batch(third))
    assert third.heads() == store.heads()  # a later run may start while the store is away
    for spool in (first, second, third):
        spool.close()
    store.close()


def test_a_chain_that_ends_in_an_earlier_window_is_continued_from_its_end(
    evidence_site, backend, tmp_path
):
    """A window reopened for a late record, then a clock set back: the chain's last batch is
    not of its latest window, and the spool's head (not the store's guess) is followed."""
    store = open_store(evidence_site, backend)
    spool = Spool(tmp_path / "spool.db")
    items = list(records(evidence_site, 120))
    late = next(r for r in items if isinstance(r, Reading))

    async def with_a_late_record() -> None:
        sink = EvidenceSink(evidence_site.plans, store, evidence_site.key_store(), spool)
        for record in items:
            await sink.put(record)
        await sink.batcher.flush(T0 + timedelta(hours=1))  # every window closed by time
        await sink.put(dataclasses.replace(late, value=99.0))  # reopens the first window
        await sink.close()

    asyncio.run(with_a_late_record())
    ahead = T0 + timedelta(minutes=40)  # a collector whose clock was ahead, then set right
    for start in (T0 + timedelta(seconds=120), ahead, T0 + timedelta(seconds=180)):
        asyncio.run(collect(evidence_site, store, spool, list(records(evidence_site, 60, start))))
    report = verify(evidence_site, store)
    assert report.ok, report.problems
    spool.close()


def test_the_store_knows_a_chains_newest_batch_across_a_dropped_one(evidence_site, backend):
    only = [r for r in records(evidence_site, 180) if r.device == "reactor-7"]
    first, _dropped, newest = seal(evidence_site, only)
    with contextlib.closing(open_store(evidence_site, backend)) as store:
        assert store.write(newest)  # live, after the outage
        assert store.write(first)  # replayed from the spool; the batch between was dropped
        assert store.heads()["reactor-7"].root == newest.head.root


# --- restart: shutdown gaps for the slots missed ----------------------------------------


def test_a_restarted_collector_stores_a_shutdown_gap_for_every_missed_slot(
    evidence_site, backend, tmp_path
):
    store = open_store(evidence_site, backend)
    spool = Spool(tmp_path / "spool.db")
    asyncio.run(collect(evidence_site, store, spool, list(records(evidence_site, 150))))
    last, until = T0 + timedelta(seconds=149), T0 + 5 * MINUTE

    async def restart() -> int:
        sink = EvidenceSink(evidence_site.plans, store, evidence_site.key_store(), spool)
        put = await sink.backfill(evidence_site.plans, until, fallback_every_ms=1000)
        await sink.close()
        return put

    put = asyncio.run(restart())
    expected = missed_slots(evidence_site.plans, last, until)
    found = shutdown_gaps(store)
    assert found == expected
    assert put == sum(map(len, expected.values()))
    # 150 s missed: 30 slots of the 5 s groups, 15 of the 10 s one, 2 of the 60 s ones
    assert sorted({len(slots) for slots in found.values()}) == [2, 15, 30]
    assert found[("reactor-1-plc", "TT101_PV")][:2] == [
        epoch_ms(T0) + 150_000,
        epoch_ms(T0) + 155_000,
    ]
    report = verify(evidence_site, store)
    assert report.ok, report.problems
    spool.close()


# --- migrations ------------------------------------------------------------------------


def alembic_version(conn: Connection) -> list[str]:
    return list(conn.scalars(text("SELECT version_num FROM alembic_version")))


def test_a_new_store_gets_the_schema_of_the_tables_through_alembic(backend):
    with (
        contextlib.closing(Store.open(backend, actor=Actor.job("test"))) as store,
        store.reading() as conn,
    ):
        context = MigrationContext.configure(conn, opts={"compare_type": True})
        assert compare_metadata(context, METADATA) == []
        assert alembic_version(conn) == ["0005"]
        origin = auditlog.origin(conn)
    with contextlib.closing(Store.open(backend, actor=Actor.job("test"))) as again:
        with again.reading() as conn:
            assert alembic_version(conn) == ["0005"]
            assert auditlog.origin(conn) == origin
            (made,) = auditlog.entries(conn)
        assert again.counts()["audit_entries"] == 1  # made once, with the log
    assert (made.seq, made.kind) == (0, "log.created")
    assert made.payload == {"origin": origin, "audit_key": "audit-log"}
    assert origin is not None and origin.startswith("converge/audit/audit-log/")


def test_a_store_of_before_point_maps_gains_the_column_and_keeps_its_batches(backend):
    """Migration 0005 adds ``batches.point_map`` to a store at 0004. Its batches' statements
    (converge.batch/v1) sign no map, so none is made for them: they keep NULL (and verifiers
    refuse them, docs/records.md)."""
    engine = connect(backend)
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    with writing(engine) as conn:
        config.attributes["connection"] = conn
        command.upgrade(config, "0004")
        conn.execute(
            text(
                "INSERT INTO batches (device, window_start, window_end, count, root,"
                " previous_root, plan_digest, statement, keys, waiver, audit_seq) VALUES"
                " ('d', 's', 'e', 0, :h, :h, 'p', :h, '[]', '[]', 0)"
            ),
            {"h": bytes(32)},
        )
    engine.dispose()
    with (
        contextlib.closing(Store.open(backend, actor=Actor.job("test"))) as store,
        store.reading() as conn,
    ):
        assert alembic_version(conn) == [SCHEMA]
        kept = conn.execute(select(BATCHES.c.device, BATCHES.c.point_map)).all()
    assert [tuple(row) for row in kept] == [("d", None)]


def test_the_schema_readers_expect_is_alembics_head():
    """Readers compare the store's revision with ``SCHEMA`` without importing Alembic: it
    must name the newest migration."""
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    assert ScriptDirectory.from_config(config).get_current_head() == SCHEMA


def test_reading_a_sqlite_store_leaves_it_writable(evidence_site, tmp_path):
    db = tmp_path / "evidence.db"
    with contextlib.closing(open_store(evidence_site, str(db))) as store, store.reading() as conn:
        conn.execute(select(BATCHES.c.id)).all()  # an auditor reading
        with contextlib.closing(sqlite3.connect(db, timeout=0, isolation_level=None)) as writer:
            writer.execute("BEGIN IMMEDIATE")  # a collector starting to write
            writer.execute("ROLLBACK")


# --- errors a user sees ----------------------------------------------------------------


def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def audit_verify(capsys: pytest.CaptureFixture[str], site: Site, db: str) -> tuple[int, str]:
    code = main(["audit", "verify", "--db", db, "--keys", str(site.keys_dir)])
    return code, capsys.readouterr().err


@pytest.mark.parametrize(
    "db, named",
    [
        ("/nonexistent/dir/x.db", "sqlite:////nonexistent/dir/x.db"),
        ("postgresql://converge@127.0.0.1:{port}/x?connect_timeout=2", "127.0.0.1:{port}/x"),
    ],
    ids=["sqlite-missing-folder", "postgresql-closed-port"],
)
def test_an_unreachable_store_is_an_error_naming_it(evidence_site, capsys, db, named):
    port = closed_port()
    code, err = audit_verify(capsys, evidence_site, db.format(port=port))
    assert code == 2
    assert err.startswith("converge: error: cannot open the store at "), err
    assert named.format(port=port) in err.splitlines()[0]


def test_the_error_for_a_refused_postgresql_connection_is_one_line(evidence_site, capsys):
    db = f"postgresql://converge@127.0.0.1:{closed_port()}/x?connect_timeout=2"
    code, err = audit_verify(capsys, evidence_site, db)
    assert code == 2
    assert len(err.strip().splitlines()) == 1, err


@pytest.mark.parametrize(
    "db",
    [
        "://nothing",
        "postgresql://converge@127.0.0.1:notaport/db",
        "nosuchdb://host/db",
    ],
    ids=["no-scheme", "port-not-a-number", "unknown-dialect"],
)
def test_a_malformed_db_url_is_an_error(evidence_site, capsys, db):
    code, err = audit_verify(capsys, evidence_site, db)
    assert code == 2
    assert err.startswith("converge: error: --db "), err
    assert len(err.strip().splitlines()) == 1, err


# --- end to end: converge simulate, converge run --db, converge audit verify ---------------


def plant_on_free_ports(folder: Path) -> Path:
    """A copy of the example plant whose endpoints are on ports free now (not its fixed ones,
    which a parallel test or a developer's own simulator may hold)."""
    site = shutil.copytree(REPO / "examples/sites/plant-basel", folder)
    yaml = site / "site.yaml"
    fixed = sorted(set(re.findall(r"(?:port: |127\.0\.0\.1:)(\d+)", yaml.read_text())))
    probes = [socket.socket() for _ in fixed]
    for probe in probes:
        probe.bind(("127.0.0.1", 0))
    free = {old: str(p.getsockname()[1]) for old, p in zip(fixed, probes, strict=True)}
    for probe in probes:
        probe.close()
    yaml.write_text(
        re.sub(r"(port: |127\.0\.0\.1:)(\d+)", lambda m: m[1] + free[m[2]], yaml.read_text())
    )
    return site


def ports_of(site: Path) -> list[int]:
    return [
        int(p)
        for p in re.findall(r"(?:port: |127\.0\.0\.1:)(\d+)", (site / "site.yaml").read_text())
    ]


def listening(port: int) -> bool:
    with socket.socket() as probe:
        return probe.connect_ex(("127.0.0.1", port)) == 0


def wait_listening(ports: Iterable[int]) -> None:
    for port in ports:
        wait_until(lambda port=port: listening(port), f"the simulator to listen on {port}")


def flip_one_byte_of_a_reading(db: Path) -> int:
    """Change one byte of the first stored reading's leaf; the id of its batch."""
    with sqlite3.connect(db) as conn:
        row_id, batch_id, leaf = conn.execute(
            "SELECT id, batch_id, leaf FROM readings ORDER BY id LIMIT 1"
        ).fetchone()
        changed = bytearray(leaf)
        changed[len(changed) // 2] ^= 0x01
        conn.execute("UPDATE readings SET leaf = ? WHERE id = ?", (bytes(changed), row_id))
    return int(batch_id)


Run = subprocess.CompletedProcess[str]


def runs_until(
    collected: Callable[[Run], bool], run: Callable[[], Run], most: int = 5
) -> list[Run]:
    """``run()`` (a ``converge run --for``), again until one ``collected`` what the test needs.

    How much a run of some seconds collects depends on the machine; what it
    printed or stored shows only at its end, so the test waits for that by
    running again (``most`` times at most, and not after a failed run; once on
    any sane machine).
    """
    done = [run()]
    while done[-1].returncode == 0 and not collected(done[-1]) and len(done) < most:
        done.append(run())
    return done


def stored_readings(db: Path) -> int:
    if not db.exists():  # the run failed: its exit code says why
        return 0
    with contextlib.closing(sqlite3.connect(db)) as conn:
        return int(conn.execute("SELECT count(*) FROM readings").fetchone()[0])


def spooled(done: Run) -> int:
    """The batches the run put into the spool, as its evidence line says."""
    said = re.search(r"(\d+) spooled", done.stderr)
    return int(said[1]) if said else 0  # no evidence line: the run failed, its exit code says why


def test_run_collects_the_simulated_plant_into_a_store_that_verifies(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("CONVERGE_KEY_PASSPHRASE", PASSPHRASE)
    site = plant_on_free_ports(tmp_path / "plant")
    keys, plans = tmp_path / "keys", tmp_path / "plans"
    for name in KEY_NAMES:
        assert main(["keys", "generate", name, "--keys", str(keys)]) == 0
    assert (
        main(
            [
                "plan",
                "-p",
                str(REPO / "policies"),
                "-s",
                str(site),
                "-o",
                str(plans),
                "--keys",
                str(keys),
            ]
        )
        == 0
    )
    mount = tmp_path / "mnt"
    mount.mkdir()
    db, witness = mount / "evidence.db", tmp_path / "witness.jsonl"

    def run(seconds: int) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [
                *CONVERGE,
                "run",
                "--plans",
                str(plans),
                "--keys",
                str(keys),
                "--db",
                str(db),
                "--spool",
                str(tmp_path / "spool.db"),
                "--witness",
                str(witness),
                "--for",
                f"{seconds}s",
            ],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )

    simulator = subprocess.Popen(
        [*CONVERGE, "simulate", str(site)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        wait_listening(ports_of(site))
        first = runs_until(lambda _: stored_readings(db) > 0, lambda: run(6))
        mount.rename(tmp_path / "unmounted")  # the store's disk is away for the second run
        second = runs_until(lambda done: spooled(done) > 0, lambda: run(3))
        (tmp_path / "unmounted").rename(mount)
        third = run(2)
    finally:
        simulator.send_signal(signal.SIGINT)
        simulator.wait(timeout=20)
    for done in (*first, *second, third):
        assert done.returncode == 0, done.stderr
        assert "evidence:" in done.stderr and "0 dropped" in done.stderr, done.stderr
    assert "warning:" not in "".join(done.stderr for done in (*first, third))
    warning = rf"warning: cannot open the store at .*{re.escape(str(db))}: .*; collecting into"
    assert all(re.search(warning, done.stderr) for done in second), second
    outage = sum(spooled(done) for done in second)
    assert outage > 0 and f"{outage} replayed from the spool" in third.stderr, third.stderr
    capsys.readouterr()
    verify_cli = [
        "audit",
        "verify",
        "--db",
        str(db),
        "--keys",
        str(keys),
        "--witness",
        str(witness),
    ]
    assert main(verify_cli) == 0
    out = capsys.readouterr().out
    agree(True, str(db), public_keys(keys), witness=witness)
    assert "verified" in out
    assert int(re.search(r"([\d,]+) readings", out)[1].replace(",", "")) > 0, out
    batch = flip_one_byte_of_a_reading(db)
    assert main(verify_cli) == 1
    out = capsys.readouterr().out
    agree(False, str(db), public_keys(keys), witness=witness)
    assert re.search(rf"FAIL batch {batch} \(.*\): its records do not hash", out), out
