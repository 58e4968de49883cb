"""Every slot accounted for: across a kill before the first batch, and a long outage.

A collector that starts again writes a ``shutdown`` gap record for every slot
no sealed record accounts for, of every point (polled or subscribed) of every
device of its plans, whether or not the device had a batch yet: from the end
of its last sealed batch, or from the first recorded start of a run that was to
collect it. A run of missed slots of one point is one record, so a long outage
costs at most one batch per device per window. Tests run on a SQLite file and
on a fresh PostgreSQL database.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import itertools
import json
import logging
import os
import random
import secrets
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections import Counter, defaultdict
from collections.abc import Awaitable, Callable, Iterable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aiomqtt
import pytest
from evidence_kit import (
    T0,
    Site,
    checking_clocks_later,
    collect,
    missed_slots,
    open_store,
    records,
    shutdown_gaps,
    slots_taken,
    stored_leaves,
    verify,
)
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import func, select
from waiting import collecting, until, wait_until

from engine.audit import Actor
from engine.collect import CollectConfig, Summary
from engine.collect.limits import Backoff
from engine.collect.status import DeviceStats, JsonLogReporter
from engine.compile import Inputs, compile_project
from engine.errors import StoreError
from engine.evidence import EvidenceConfig, EvidenceSink, EvidenceTarget, open_evidence
from engine.plans.body import PlanBody
from engine.plans.folder import load_plans, write_plans
from engine.protocols import Fault
from engine.sign.batch import epoch_ms
from engine.simulate import Simulation, running
from engine.store.spool import Spool
from engine.store.store import Store
from engine.store.tables import AUDIT, BATCHES

MS = timedelta(milliseconds=1)
PAST = EvidenceConfig(grace_ms=86_400_000)
"""Records of an hour ago are put as if live: no window is closed by the clock meanwhile."""


def batch_windows(store: Store, after_id: int) -> Counter[tuple[str, str]]:
    """How many batches stored after batch ``after_id`` each (device, window) has."""
    query = select(BATCHES.c.device, BATCHES.c.window_start).where(BATCHES.c.id > after_id)
    with store.reading() as conn:
        return Counter((device, start) for device, start in conn.execute(query))


def last_batch_id(store: Store) -> int:
    with store.reading() as conn:
        return int(conn.execute(select(func.coalesce(func.max(BATCHES.c.id), 0))).scalar_one())


# --- a long outage ------------------------------------------------------------------------


@pytest.mark.parametrize("outage", [timedelta(hours=6), timedelta(days=3)], ids=["hours", "days"])
def test_a_long_outage_restarts_into_one_batch_per_device_per_window(
    evidence_site, backend, tmp_path, outage
):
    start = T0 - outage - timedelta(seconds=150)
    store = open_store(evidence_site, backend)
    spool = Spool(tmp_path / "spool.db")
    asyncio.run(collect(evidence_site, store, spool, list(records(evidence_site, 150, start))))
    before, last = last_batch_id(store), start + timedelta(seconds=149)

    async def restart() -> int:
        keys = evidence_site.key_store()
        sink = EvidenceSink(evidence_site.plans, store, keys, spool, config=PAST)
        put = await sink.backfill(evidence_site.plans, T0, fallback_every_ms=1000)
        for record in records(evidence_site, 120, T0):  # collecting again (an hour ago)
            await sink.put(record)
        await sink.close()
        return put

    put = asyncio.run(restart())
    windows = batch_windows(store, before)
    assert windows and max(windows.values()) == 1, windows.most_common(3)
    # the outage's gap records are in one or two windows per device, then 2 minutes of data
    assert len(windows) <= len(evidence_site.plans) * 5
    expected = missed_slots(evidence_site.plans, last, T0)
    assert shutdown_gaps(store) == expected
    assert put == sum(map(len, expected.values()))
    runs = [r for r in stored_leaves(store) if r.get("slots")]
    assert len(runs) == len(expected)  # one record per point, whatever the outage's length
    report = verify(evidence_site, store)
    assert report.ok, report.problems
    spool.close()


# --- a first run killed before its first batch ----------------------------------------------


def first_run_killed(site: Site, target: EvidenceTarget) -> datetime:
    """Start a run (its start recorded), put 20 s of records, none sealed, and die: the
    records in memory are lost. When it started, as its ``collector.started`` entry says."""

    async def run() -> None:
        sink = open_evidence(site.plans, site.plans_dir, target, site.key_store(), EvidenceConfig())
        this_minute = datetime.now(UTC).replace(second=0, microsecond=0)  # one open window
        for record in records(site, 20, this_minute):
            await sink.put(record)
        assert sink.stats["stored"] == sink.stats["spooled"] == 0
        sink.sealer = None  # no close: everything in memory dies with the run

    asyncio.run(run())
    with Store.open_existing(target.db) as store:
        assert store.counts()["batches"] == 0
    (started,) = starts(target.db) or []
    return datetime.fromisoformat(started)


@pytest.mark.parametrize("restart", ["store-up", "store-away", "spool-lost"])
def test_a_first_run_killed_before_its_first_batch_is_accounted_for(
    evidence_site, backend, tmp_path, monkeypatch, restart
):
    open_store(evidence_site, backend).close()
    target = EvidenceTarget(backend, tmp_path / "spool.db", tmp_path / "witness.jsonl")
    started = first_run_killed(evidence_site, target)
    until = started + timedelta(hours=1)  # the badge gateway is sampled every 15 min
    keys = evidence_site.key_store()
    checking_clocks_later(monkeypatch, until + timedelta(seconds=1))

    def later() -> datetime:
        """The restart's clock: it comes an hour after the kill (so its batches and their
        checkpoints are sealed after the windows of the slots it accounts for)."""
        return until + timedelta(seconds=1)

    async def again() -> int:
        if restart == "store-away":  # only the spool knows where the devices stand
            store = Store.attach(backend, Actor.job("test"))
            spool = Spool(target.spool)
            sink = EvidenceSink(
                evidence_site.plans, store, keys, spool, store_error="away", now=later
            )
        else:
            store = Store.open(backend, Actor.job("test"), target.witness)
            spool = Spool(tmp_path / "new-spool.db" if restart == "spool-lost" else target.spool)
            sink = EvidenceSink(evidence_site.plans, store, keys, spool, now=later)
        put = await sink.backfill(evidence_site.plans, until, fallback_every_ms=1000)
        await sink.close()
        return put

    put = asyncio.run(again())
    with Store.open_existing(backend) as store:
        found = shutdown_gaps(store)
        report = verify(evidence_site, store)
    expected = missed_slots(evidence_site.plans, started - MS, until)
    assert {device for device, _ in expected} == {p.device.id for p in evidence_site.plans}
    assert found == expected
    assert put == sum(map(len, expected.values()))
    assert report.ok, report.problems


# --- the summary agrees with the store, on each protocol ------------------------------------

CONFIG = CollectConfig(
    retry=Backoff(base=0.02, cap=0.1, rng=random.Random(1)),
    reconnect=Backoff(base=0.05, cap=0.2, rng=random.Random(2)),
    breaker_cooldown_s=0.3,
)
POLICY = """\
policy: capture-all
title: capture everything, and changes between
owner: qa
applies:
  devices: {site: [slots]}
capture: {every: 500ms, on_change: {deadband: 0}}
"""


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


DEVICES = {
    "modbus": """\
  - id: plc
    protocol: modbus
    endpoint: {{host: 127.0.0.1, port: {port}, unit: 1}}
    limits: {{timeout: 300ms, min_interval: 100ms}}
    points:
      - {{name: T1, address: {{table: holding, register: 0, type: int16}}}}
      - {{name: T2, address: {{table: holding, register: 1, type: int16}}}}
""",
    "opcua": """\
  - id: ua
    protocol: opcua
    endpoint: {{url: "opc.tcp://127.0.0.1:{port}/"}}
    limits: {{timeout: 500ms, min_interval: 100ms}}
    points:
      - {{name: READ, address: {{node: "ns=2;s=ua.READ", mode: read}}}}
      - {{name: SUB, address: {{node: "ns=2;s=ua.SUB"}}}}
""",
    "mqtt": """\
  - id: gw
    protocol: mqtt
    endpoint: {{broker: "mqtt://127.0.0.1:{port}"}}
    limits: {{timeout: 2s}}
    points:
      - {{name: M1, address: {{topic: "gw/m1"}}}}
      - {{name: M2, address: {{topic: "gw/m2"}}}}
""",
}


def compiled(tmp_path: Path, pm: Any, devices: str) -> tuple[Path, list[PlanBody]]:
    site = tmp_path / "site"
    site.mkdir()
    (site / "site.yaml").write_text(f"site: slots\ntimezone: UTC\ndevices:\n{devices}")
    (tmp_path / "policy.yaml").write_text(POLICY)
    result = compile_project(Inputs([tmp_path / "policy.yaml"], [site]), pm)
    assert result.ok, [str(f) for f in result.findings]
    write_plans(tmp_path / "plans", result.plans, result.index())
    return site, load_plans(tmp_path / "plans", time.time())


def tally(leaves: Iterable[dict[str, Any]]) -> dict[str, dict[str, int]]:
    """Per point, what the stored records say: slots, the readings (held among them) and gap
    records' slots that fill them, and the readings beyond them."""
    counts: dict[str, Counter[str]] = defaultdict(Counter)
    for leaf in leaves:
        count = counts[leaf["point"]]
        if leaf["type"] == "gap":
            count["gaps"] += leaf.get("slots", 1)
        elif "scheduled_at" not in leaf:
            count["extra"] += 1
        else:
            count["readings"] += 1
            count["held"] += leaf.get("held", False)
    return {
        point: {"slots": c["readings"] + c["gaps"], **{k: c[k] for k in KINDS}}
        for point, c in counts.items()
    }


KINDS = ("readings", "held", "gaps", "extra")


@pytest.mark.parametrize("protocol", ["modbus", "opcua", "mqtt"])
def test_the_summary_counts_per_point_what_the_store_holds(
    evidence_site, converge_pm, tmp_path, protocol
):
    site, plans = compiled(tmp_path, converge_pm, DEVICES[protocol].format(port=free_port()))
    (device,) = {p.device.id for p in plans}
    store = store_for(evidence_site, plans, tmp_path)
    subscribed = {p for p in plans[0].read_groups if not p.polled for p in p.points}

    async def scenario(sink: EvidenceSink, reporter: JsonLogReporter) -> Summary:
        async with (
            running(site, pm=converge_pm) as sim,
            collecting(plans, converge_pm, sink=sink, config=CONFIG, reporter=reporter) as run,
        ):
            await stop_and_start(sim, run.summary.devices[device], plans[0], subscribed)
        return run.summary

    with quiet("asyncua"):
        stored = collected_as_stored(evidence_site, plans, store, tmp_path, scenario)
    for point, counts in stored.items():  # 3 readings before the stop, 2 gaps, 3 readings after
        assert counts["slots"] >= 8 and counts["readings"] and counts["gaps"], (point, counts)
    assert sum(c["extra"] for c in stored.values()), "no on-change or delivered readings"
    assert all(stored[p]["held"] for p in subscribed)
    report = verify(evidence_site, store)
    assert report.ok, report.problems
    store.close()


Scenario = Callable[[EvidenceSink, JsonLogReporter], Awaitable[Summary]]


def store_for(site: Site, plans: list[PlanBody], tmp_path: Path) -> Store:
    """A SQLite store with ``plans`` deployed and the site's keys logged (so it verifies)."""
    store = Store.open(str(tmp_path / "evidence.db"), Actor.job("test"))
    store.deploy_plans([(p, None) for p in plans])
    keys = site.key_store()
    store.record_keys([v for name in keys.names() for v in keys.versions(name)])
    return store


def collected_as_stored(
    site: Site, plans: list[PlanBody], store: Store, tmp_path: Path, scenario: Scenario
) -> dict[str, dict[str, int]]:
    """Run ``scenario`` into ``store``; check that the summary, and the JSON ``summary``
    event, count for each point exactly what the store holds; what it holds."""
    events = io.StringIO()

    async def main() -> Summary:
        sink = EvidenceSink(plans, store, site.key_store(), Spool(tmp_path / "spool.db"))
        return await scenario(sink, JsonLogReporter(events))

    summary = asyncio.run(main())
    assert summary.unaccounted() == {}
    (device,) = {p.device.id for p in plans}
    stats = summary.devices[device]
    stored = tally(stored_leaves(store))
    assert {p: stats.point_counts(p) for p in {*stats.scheduled, *stats.extra}} == stored
    reported = [json.loads(line) for line in events.getvalue().splitlines()]
    (final,) = [e for e in reported if e["event"] == "summary"]
    assert final["points"] == stored
    assert final["slots"] == final["readings"] + final["gaps"]
    return stored


MOSQUITTO = os.environ.get("CONVERGE_MOSQUITTO")
METER = """\
  - id: meter
    protocol: mqtt
    endpoint: {{broker: "{broker}", qos: 1}}
    points:
      - {{name: power, address: {{topic: "{prefix}/power", field: kw, timestamp_field: ts}}}}
"""


@pytest.mark.skipif(not (MOSQUITTO or os.environ.get("CI")), reason="no Mosquitto: make test")
def test_a_topic_that_falls_silent_is_held_then_stale_on_mosquitto(
    evidence_site, converge_pm, tmp_path
):
    """A meter publishing every 200 ms (once the collector subscribed, and a slot had no value
    yet) stops after 2 s; its slots (every 500 ms) hold the last value, with the meter's own
    time, for 3 x 500 ms (the group's expect_every_ms), then are stale: no-data gaps."""
    assert MOSQUITTO, "CI runs this against Mosquitto: make test starts it"
    prefix = f"converge-test/{secrets.token_hex(4)}"
    meter = METER.format(broker=MOSQUITTO, prefix=prefix)
    _, plans = compiled(tmp_path, converge_pm, meter)
    store = store_for(evidence_site, plans, tmp_path)
    broker = urlsplit(MOSQUITTO)
    sent: list[tuple[float, str]] = []

    async def publish() -> None:
        async with aiomqtt.Client(str(broker.hostname), int(broker.port or 1883)) as client:
            for i in range(10):
                ts = datetime.now(UTC).isoformat()
                await client.publish(f"{prefix}/power", json.dumps({"kw": i, "ts": ts}), qos=1)
                sent.append((float(i), ts))
                await asyncio.sleep(0.2)  # the meter's pace

    async def scenario(sink: EvidenceSink, reporter: JsonLogReporter) -> Summary:
        async with collecting(
            plans, converge_pm, sink=sink, config=CONFIG, reporter=reporter
        ) as run:
            meter = run.summary.devices["meter"]
            await until(
                lambda: meter.state == "connected" and meter.slot_gaps["power"] > 0,
                lambda: f"the meter subscribed, and a slot without a value: {meter.as_dict()}",
            )
            await publish()
            await until(
                lambda: meter.extra["power"] == len(sent),
                lambda: f"{len(sent)} messages delivered: {meter.as_dict()}",
            )
            held = meter.slot_gaps["power"]
            await until(
                lambda: meter.slot_gaps["power"] > held,
                lambda: f"a slot after the last message without a value: {meter.as_dict()}",
            )
        return run.summary

    stored = collected_as_stored(evidence_site, plans, store, tmp_path, scenario)
    assert stored["power"]["extra"] == len(sent) == 10
    slots = sorted(
        (leaf for leaf in stored_leaves(store) if "scheduled_at" in leaf),
        key=lambda leaf: leaf["scheduled_at"],
    )
    kinds = [leaf.get("reason", "held") for leaf in slots]
    assert [kind for kind, _ in itertools.groupby(kinds)] == ["no-data", "held", "no-data"]
    held = [leaf for leaf in slots if leaf.get("held")]
    times = {datetime.fromisoformat(ts) for _, ts in sent}
    assert all(datetime.fromisoformat(leaf["source_at"]) in times for leaf in held)
    last = max(times)
    stale = [leaf for leaf in slots[kinds.index("held") :] if leaf["type"] == "gap"]
    assert stale and all(leaf["detail"].startswith("stale: ") for leaf in stale)
    assert datetime.fromisoformat(stale[0]["scheduled_at"]) - last > timedelta(seconds=1.4)
    report = verify(evidence_site, store)
    assert report.ok, report.problems
    store.close()


async def stop_and_start(
    sim: Simulation, stats: DeviceStats, plan: PlanBody, subscribed: set[str]
) -> None:
    """The device's server goes away once each point has 3 readings (held ones for a
    subscribed point) and extra readings came; it comes back once each point has 2 more slots
    filled by gap records; then each point has 3 more readings."""
    points = [p for group in plan.read_groups for p in group.points]

    def counts() -> str:
        return f"{stats.device}: {[stats.point_counts(p) for p in points]}"

    def readings(point: str) -> int:
        return stats.point_counts(point)["readings"]

    await until(
        lambda: (
            all(readings(p) >= 3 for p in points)
            and all(stats.held[p] for p in subscribed)
            and sum(stats.extra.values()) > 0
        ),
        lambda: f"readings of each point, held and extra ones: {counts()}",
    )
    await sim.inject(Fault("stop", stats.device))
    gaps = {p: stats.slot_gaps[p] for p in points}
    await until(
        lambda: all(stats.slot_gaps[p] >= gaps[p] + 2 for p in points),
        lambda: f"gap records for each point while stopped: {counts()}",
    )
    await sim.inject(Fault("start", stats.device))
    since = {p: readings(p) for p in points}
    await until(
        lambda: all(readings(p) >= since[p] + 3 for p in points),
        lambda: f"readings of each point after the start: {counts()}",
    )


@contextlib.contextmanager
def quiet(name: str) -> Iterator[None]:
    """A library that logs every lost connection as a warning or a stack trace."""
    logger = logging.getLogger(name)
    level = logger.level
    logger.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        logger.setLevel(level)


# --- a real collector killed before its first batch -----------------------------------------

CONVERGE = [sys.executable, "-m", "engine.cli"]
KILL_SITE = """\
site: killed
timezone: UTC
devices:
  - id: plc
    protocol: modbus
    endpoint: {{host: 127.0.0.1, port: {modbus}}}
    points:
      - {{name: T1, address: {{table: holding, register: 0, type: int16}}}}
      - {{name: T2, address: {{table: holding, register: 1, type: int16}}}}
  - id: gw
    protocol: mqtt
    endpoint: {{broker: "mqtt://127.0.0.1:{mqtt}"}}
    points:
      - {{name: M1, address: {{topic: gw/m1}}}}
"""
KILL_POLICY = """\
policy: every-second
title: Capture every second
owner: qa
applies: {}
capture: {every: 1s}
signing: {required: false, batch_window: 1h}
"""


def listening(port: int) -> bool:
    with socket.socket() as probe:
        return probe.connect_ex(("127.0.0.1", port)) == 0


def collected(port: int) -> Counter[str]:
    """Per device, the readings and gap records a collector's ``--metrics`` (at ``port``) say
    it collected; none while it does not answer yet."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as answer:
            text = answer.read().decode()
    except OSError:
        return Counter()
    records: Counter[str] = Counter()
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name in ("converge_readings_total", "converge_gaps_total"):
                records[sample.labels["device"]] += int(sample.value)
    return records


def starts(db: str) -> list[str] | None:
    """The times of the store's ``collector.started`` entries, once there is a store."""
    try:
        with Store.open_existing(db) as store, store.reading() as conn:
            query = select(AUDIT.c.time).where(AUDIT.c.kind == "collector.started")
            return sorted(conn.scalars(query)) or None
    except StoreError:
        return None


def test_a_collector_killed_before_its_first_batch_leaves_no_slot_unaccounted(
    evidence_site, backend, tmp_path
):
    ports = {"modbus": free_port(), "mqtt": free_port()}
    (tmp_path / "sites/s").mkdir(parents=True)
    (tmp_path / "sites/s/site.yaml").write_text(KILL_SITE.format(**ports))
    (tmp_path / "p.yaml").write_text(KILL_POLICY)
    plan = [*CONVERGE, "plan", "-p", "p.yaml", "-s", "sites/s", "-o", "plans"]
    subprocess.run(plan, cwd=tmp_path, check=True, capture_output=True, timeout=60)
    keys = ["--keys", str(evidence_site.keys_dir)]
    run = [*CONVERGE, "run", "--plans", "plans", "--db", backend, *keys, "--spool", "spool.db"]
    metrics = free_port()
    simulator = subprocess.Popen(
        [*CONVERGE, "simulate", "sites/s"],
        cwd=tmp_path,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        for port in ports.values():
            wait_until(lambda port=port: listening(port), f"the simulator on port {port}")
        second = time.time() % 3600
        if second > 3600 - 40:  # the first run must not live into a second window (an hour)
            time.sleep(3600 - second)
        first = subprocess.Popen(
            [*run, "--metrics", f"127.0.0.1:{metrics}"],
            cwd=tmp_path,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wait_until(lambda: starts(backend), "the first run's start in the store", within=60)
        (killed,) = starts(backend) or []
        # it collects for 3 slots (of plc's 2 points, and gw's), then dies with every record
        # in memory
        wait_until(
            lambda: collected(metrics)["plc"] >= 2 * 3 and collected(metrics)["gw"] >= 3,
            lambda: f"the first run's records of 3 slots: {collected(metrics)}",
        )
        first.kill()
        first.wait(timeout=30)
        assert first.returncode == -signal.SIGKILL
        with Store.open_existing(backend) as store:
            assert store.counts()["batches"] == 0, "the first run sealed a batch: too late"
        again = subprocess.run(
            [*run, "--for", "4s"],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
    finally:
        simulator.send_signal(signal.SIGINT)
        simulator.wait(timeout=30)
    assert again.returncode == 0, again.stderr
    _, restarted = starts(backend) or []
    with Store.open_existing(backend) as store:
        taken = slots_taken(stored_leaves(store))
        report = verify(evidence_site, store)
    assert report.ok, report.problems
    start = datetime.fromisoformat(killed)
    end = epoch_ms(datetime.fromisoformat(restarted)) + 2000  # the restart collected beyond
    want = list(range((epoch_ms(start) + 999) // 1000 * 1000, end, 1000))
    for point in ("plc", "T1"), ("plc", "T2"), ("gw", "M1"):
        slots = taken[point]
        assert len(slots) == len(set(slots)), f"{point}: a slot recorded twice"
        assert [s for s in slots if s < end] == want, point
