"""The collector's scheduler, limits and accounting, against an in-test protocol.

The ``fake`` protocol below answers deterministically (or times out, refuses,
answers busy...), so these tests exercise the engine's scheduling, not a
protocol. They use short intervals on the real clock, or a scaled clock, and
each run lasts until it has done what its test looks at (tests/waiting.py),
however fast or slow the machine is.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import random
import time
from collections import Counter
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from waiting import collecting, until

from engine.canonical import canonical_json
from engine.cli import main
from engine.collect import (
    CollectConfig,
    JsonLinesSink,
    MemorySink,
    ScaledClock,
    Summary,
    run_plans,
)
from engine.collect.backfill import missed
from engine.collect.limits import Backoff, CircuitBreaker, TokenBucket, retryable
from engine.collect.onchange import changed
from engine.collect.scheduler import Schedule, interval_slot, next_cron
from engine.collect.sinks import record_json
from engine.errors import PlanRejected
from engine.hookspecs import hookimpl
from engine.plans.format import INDEX_FORMAT, PLAN_FORMAT, seal
from engine.plugin_manager import make_plugin_manager
from engine.records import Gap, GapReason, Quality, Reading
from engine.testkit import plan_of

ZURICH = ZoneInfo("Europe/Zurich")


# --- an in-test protocol ------------------------------------------------------------------


class FakeSession:
    def __init__(self, plan, behaviour, events):
        self.device = plan.device.id
        self.behaviour = behaviour
        self.events = events
        self.reads: list[float] = []
        self.units: list[int | None] = []
        self.connects = 0
        self.connected = False
        self.published = 0

    async def connect(self):
        self.connects += 1
        if self.behaviour.get("refuse"):
            raise ConnectionRefusedError("refused")
        self.connected = True

    async def read(self, group, scheduled_at):
        self.reads.append(asyncio.get_running_loop().time())
        self.events.append(("sent", self.device, scheduled_at))
        self.units.append(group.unit)
        # behaviour of the group's unit, e.g. {"units": {2: {"hang": 10}}}, overrides the device's
        behaviour = {**self.behaviour, **self.behaviour.get("units", {}).get(group.unit, {})}
        if behaviour.get("hang"):
            await asyncio.sleep(behaviour["hang"])
        if behaviour.get("decode"):
            await asyncio.sleep(0)  # the answer arrives...
            time.sleep(behaviour["decode"])  # ...and decoding it takes CPU
            self.events.append(("decoded", self.device, scheduled_at))
        if "values" in behaviour:
            values = behaviour["values"]
            return [
                Reading(self.device, p, datetime.now(UTC), values(p, len(self.reads)))
                for p in group.points
            ]
        code = behaviour.get("code")
        busy = behaviour.get("busy_times", 0)
        now = datetime.now(UTC)
        if code is not None and (busy == 0 or len(self.reads) <= busy):
            return [
                Gap(self.device, p, scheduled_at, GapReason.EXCEPTION, raw_code=code)
                for p in group.points
            ]
        return [Reading(self.device, p, now, len(self.reads)) for p in group.points]

    async def subscribe(self, group, deliver):
        async def feed():
            if self.connects > 1:
                await asyncio.sleep(self.behaviour.get("later", 0))  # a reconnected feed
            for i in range(self.behaviour.get("messages", 0)):
                await asyncio.sleep(self.behaviour.get("every", 0.02))
                for p in group.points:
                    await deliver(self.message(p, i))
                self.published += 1
            if self.behaviour.get("drop_after_messages"):
                await asyncio.sleep(self.behaviour.get("linger", 0))
                self.connected = False  # the broker went away; nothing else tells the collector

        asyncio.get_running_loop().create_task(feed())

    def message(self, point, i):
        now = datetime.now(UTC)
        if self.behaviour.get("deliver_gap"):
            return Gap(self.device, point, now, GapReason.MALFORMED, "not a scalar", raw_code=7)
        return Reading(self.device, point, now, i, source_at=self.behaviour.get("source_at"))

    async def close(self):
        self.connected = False


class FakeProtocol:
    def __init__(self, behaviours=None):
        self.behaviours = behaviours or {}
        self.sessions: dict[str, FakeSession] = {}
        self.events: list[tuple[str, str, datetime]] = []

    @hookimpl
    def converge_protocol_names(self):
        return ["fake"]

    @hookimpl
    def converge_open_session(self, plan):
        if plan.device.protocol != "fake":
            return None
        session = FakeSession(plan, self.behaviours.get(plan.device.id, {}), self.events)
        self.sessions[session.device] = session
        return session


def plan_body(
    device, groups, *, limits=None, timezone="Europe/Zurich", valid_until=None, capture=None
):
    names = [p for g in groups for p in g["points"]]
    capture = capture or {}
    body = {
        "format": PLAN_FORMAT,
        "site": "test",
        "timezone": timezone,
        "as_of": "2026-06-01",
        "device": {
            "id": device,
            "protocol": "fake",
            "endpoint": {},
            "limits": {"max_connections": 1, "max_gap": 0, **(limits or {})},
        },
        "points": [
            {"name": n, "address": {}, **({"capture": capture[n]} if n in capture else {})}
            for n in names
        ],
        "read_groups": groups,
    }
    if valid_until:
        body["valid_until"] = valid_until
    return body


def write_plans(folder: Path, bodies) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    entries = []
    for body in bodies:
        digest, data = seal({k: canonical_json(v) for k, v in body.items()})
        name = f"{body['device']['id']}.plan.json"
        (folder / name).write_bytes(data)
        entries.append(
            {
                "device": body["device"]["id"],
                "file": name,
                "digest": digest,
                "points": len(body["points"]),
            }
        )
    index = {"format": INDEX_FORMAT, "as_of": {}, "plans": entries, "ungoverned": []}
    (folder / "index.json").write_bytes(canonical_json(index))
    return folder


@dataclass
class Seen:
    """What a run has done so far: its records, the fake's sessions, the run's counters."""

    sink: MemorySink
    protocol: FakeProtocol
    summary: Summary

    def reads(self, device: str = "d") -> list[float]:
        session = self.protocol.sessions.get(device)
        return session.reads if session else []

    def connects(self, device: str = "d") -> int:
        session = self.protocol.sessions.get(device)
        return session.connects if session else 0

    def scheduled(self, device: str = "d") -> int:
        stats = self.summary.devices.get(device)
        return sum(stats.scheduled.values()) if stats else 0


def collect(tmp_path, bodies, done, behaviours=None, **kwargs):
    """Collect ``bodies`` from the fake protocol until ``done(seen)`` holds, then stop the run."""
    protocol = FakeProtocol(behaviours)
    pm = make_plugin_manager(load_entry_points=False, extra=[protocol])
    sink = MemorySink()
    plans = write_plans(tmp_path / "plans", bodies)

    async def run() -> Summary:
        async with collecting(plans, pm, sink=sink, **kwargs) as run:
            seen = Seen(sink, protocol, run.summary)
            await until(lambda: done(seen), lambda: f"the run to get there: {counts(seen)}")
        return run.summary

    summary = asyncio.run(run())
    assert sink.closed
    assert summary.unaccounted() == {}, "scheduled samples != readings + gaps"
    return summary, sink, protocol


def counts(seen: Seen) -> str:
    stats = {name: s.as_dict() for name, s in seen.summary.devices.items()}
    reads = {name: len(s.reads) for name, s in seen.protocol.sessions.items()}
    return f"{len(seen.sink.records)} records, requests {reads}, {stats}"


class ScaledFromFirstUse(ScaledClock):
    """A :class:`ScaledClock` at ``start`` when the run first reads it, not when it was made:
    the set-up before the run, however long it takes, takes no clock time."""

    def __init__(self, start: float, speed: float) -> None:
        super().__init__(start, speed)
        self.origin = None

    def now(self) -> float:
        if self.origin is None:
            self.origin = time.monotonic()
        return super().now()


def fast_config(**kwargs):
    return CollectConfig(
        retry=Backoff(base=0.01, cap=0.05, rng=random.Random(1)),
        reconnect=Backoff(base=0.05, cap=0.2, rng=random.Random(2)),
        breaker_cooldown_s=0.3,
        **kwargs,
    )


# --- pure scheduling ----------------------------------------------------------------------


def test_interval_slots_are_floor_aligned():
    assert interval_slot(12_345, 1000) == 12_000
    schedule = Schedule(250, (), ZURICH)
    assert schedule.next_after(12_345) == 12_500
    assert schedule.first_at_or_after(12_500) == 12_500


def local(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, ZURICH).isoformat()


def fires(expression: str, start: datetime, n: int) -> list[int]:
    out, t = [], int(start.timestamp() * 1000)
    for _ in range(n):
        t = next_cron(expression, ZURICH, t)
        out.append(t)
    return out


def test_cron_in_spring_forward_fires_after_the_missing_hour():
    daily = fires("0 2 * * *", datetime(2026, 3, 28, 12, tzinfo=ZURICH), 2)
    assert [local(t) for t in daily] == ["2026-03-29T03:00:00+02:00", "2026-03-30T02:00:00+02:00"]
    hourly = fires("30 * * * *", datetime(2026, 3, 29, 0, tzinfo=ZURICH), 4)
    assert {b - a for a, b in itertools.pairwise(hourly)} == {3_600_000}


def test_cron_in_fall_back_fires_fixed_hours_once_and_every_real_hour():
    daily = fires("0 2 * * *", datetime(2026, 10, 24, 12, tzinfo=ZURICH), 2)
    assert [local(t) for t in daily] == ["2026-10-25T02:00:00+02:00", "2026-10-26T02:00:00+01:00"]
    hourly = fires("30 * * * *", datetime(2026, 10, 25, 0, tzinfo=ZURICH), 5)
    assert {b - a for a, b in itertools.pairwise(hourly)} == {3_600_000}
    assert local(hourly[2]) == "2026-10-25T02:30:00+02:00"
    assert local(hourly[3]) == "2026-10-25T02:30:00+01:00"


def test_a_run_across_the_dst_change_samples_at_local_cron_times(tmp_path):
    # 01:50 CET on the spring-forward day; one clock hour per real second.
    start = datetime(2026, 3, 29, 1, 50, tzinfo=ZURICH).timestamp()
    group = {"points": ["p"], "cron": ["*/15 * * * *"]}
    body = plan_body("d", [group], limits={"timeout_ms": 3_600_000})
    _, sink, _ = collect(
        tmp_path,
        [body],
        lambda seen: len(seen.sink.records) >= 3,
        clock=ScaledFromFirstUse(start, speed=3600),
    )
    slots = [r.scheduled_at.astimezone(ZURICH).strftime("%H:%M") for r in sink.records]
    fires = ["03:00", "03:15", "03:30", "03:45", "04:00"]  # none in the missing hour
    assert len(slots) >= 3 and slots == fires[: len(slots)]


# --- limits -------------------------------------------------------------------------------


def test_backoff_grows_exponentially_within_jitter_and_cap():
    backoff = Backoff(base=0.1, cap=2.0, jitter=0.5, rng=random.Random(7))
    for attempt in range(12):
        ceiling = min(2.0, 0.1 * 2**attempt)
        for _ in range(20):
            assert ceiling * 0.5 <= backoff.delay(attempt) <= ceiling <= 2.0


def test_token_bucket_never_exceeds_its_rate():
    bucket, now, sent = TokenBucket(rate=4.0), 0.0, []
    while now < 10:
        now += bucket.delay(now)
        bucket.take(now)
        sent.append(now)
        now += 0.001
    windows = [sum(1 for s in sent if t <= s < t + 1) for t in sent]
    assert max(windows) <= 5 and len(sent) in range(39, 42)


def test_circuit_breaker_opens_cools_down_and_closes():
    breaker = CircuitBreaker(threshold=3, cooldown=5.0)
    assert not breaker.failure(0) and not breaker.failure(1)
    assert breaker.failure(2) and not breaker.allow(3)
    assert breaker.allow(7.5)  # half-open: one trial
    assert breaker.failure(7.5) and not breaker.allow(8)
    breaker.success()
    assert breaker.allow(8) and not breaker.is_open


def test_only_busy_and_gateway_codes_are_retryable():
    at = datetime(2026, 1, 1, tzinfo=UTC)
    for code, expected in (
        (6, True),
        (0x0A, True),
        (0x0B, True),
        (1, False),
        (2, False),
        (3, False),
    ):
        assert retryable([Gap("d", "p", at, GapReason.EXCEPTION, raw_code=code)]) is expected
    assert retryable([Gap("d", "p", at, GapReason.TIMEOUT)])
    assert not retryable([Gap("d", "p", at, GapReason.REFUSED)])


# --- runs ---------------------------------------------------------------------------------


def test_polled_samples_are_aligned_and_accounted(tmp_path):
    body = plan_body("d", [{"points": ["a", "b"], "every_ms": 100}])
    summary, sink, protocol = collect(
        tmp_path, [body], lambda seen: len(seen.sink.readings()) >= 10
    )
    readings = sink.readings()
    assert len(readings) >= 10 and not sink.gaps()
    assert all(r.scheduled_at.timestamp() * 1000 % 100 == 0 for r in readings)
    assert len(protocol.sessions["d"].reads) == len(readings) // 2  # one request per group
    stats = summary.devices["d"]
    assert stats.percentile(0.99) < 200  # generous: CI machines are loaded; bench/ measures


def test_busy_answers_are_retried_within_the_slot(tmp_path):
    body = plan_body("d", [{"points": ["a"], "every_ms": 300}])
    _, sink, protocol = collect(
        tmp_path,
        [body],
        lambda seen: seen.sink.records,
        {"d": {"code": 6, "busy_times": 2}},
        config=fast_config(),
    )
    first = sink.records[0]
    assert isinstance(first, Reading) and first.value == 3
    assert len(protocol.sessions["d"].reads) >= 3


def test_illegal_address_is_never_retried(tmp_path):
    body = plan_body("d", [{"points": ["a"], "every_ms": 200}])
    _, sink, protocol = collect(
        tmp_path,
        [body],
        lambda seen: len(seen.sink.gaps()) >= 2,
        {"d": {"code": 2}},
        config=fast_config(),
    )
    assert {(g.reason, g.raw_code) for g in sink.gaps()} == {(GapReason.EXCEPTION, 2)}
    assert len(protocol.sessions["d"].reads) == len(sink.gaps())


def test_a_hanging_device_does_not_delay_another(tmp_path):
    slow = plan_body("slow", [{"points": ["a"], "every_ms": 100}], limits={"timeout_ms": 60})
    fast = plan_body("fast", [{"points": ["b"], "every_ms": 100}])

    def done(seen: Seen) -> bool:
        reasons = {g.reason for g in seen.sink.gaps() if g.device == "slow"}
        fast_readings = [r for r in seen.sink.readings() if r.device == "fast"]
        return {GapReason.TIMEOUT, GapReason.REFUSED} <= reasons and len(fast_readings) >= 5

    summary, sink, _ = collect(
        tmp_path,
        [slow, fast],
        done,
        {"slow": {"hang": 10}},
        config=fast_config(breaker_threshold=3),
    )
    reasons = {g.reason for g in sink.gaps() if g.device == "slow"}
    assert GapReason.TIMEOUT in reasons and GapReason.REFUSED in reasons  # then breaker open
    assert not [g for g in sink.gaps() if g.device == "fast"]
    assert summary.devices["fast"].percentile(0.99) < 200  # not stalled by the 10 s hang


@pytest.mark.parametrize("dead", [{"hang": 10}, {"code": 0x0B}], ids=["timeout", "gateway"])
def test_a_dead_unit_behind_a_gateway_does_not_stall_the_others(tmp_path, dead):
    groups = [
        {"unit": 1, "points": ["a"], "every_ms": 100},
        {"unit": 2, "points": ["b"], "every_ms": 100},
    ]
    body = plan_body("gw", groups, limits={"timeout_ms": 30})

    def done(seen: Seen) -> bool:
        a = [r for r in seen.sink.readings() if r.point == "a"]
        opened = [g for g in seen.sink.gaps() if g.detail == "circuit breaker open"]
        return len(a) >= 7 and any(g.point == "b" for g in opened)

    summary, sink, protocol = collect(
        tmp_path,
        [body],
        done,
        {"gw": {"units": {2: dead}}},
        config=fast_config(breaker_threshold=3),
    )
    dead_gaps = [g for g in sink.gaps() if g.point == "b"]
    assert dead_gaps and not [r for r in sink.readings() if r.point == "b"]
    assert {(g.reason, g.detail) for g in dead_gaps} >= {
        (GapReason.REFUSED, "circuit breaker open")
    }
    assert not [g for g in sink.gaps() if g.point == "a"]
    slots = sorted(int(r.scheduled_at.timestamp() * 1000) for r in sink.readings())
    assert len(slots) >= 7 and {b - a for a, b in itertools.pairwise(slots)} == {100}
    session = protocol.sessions["gw"]
    assert session.connects == 1  # the gateway's connection was never dropped
    assert session.units.count(2) < len(dead_gaps)  # an open breaker sends nothing
    assert summary.devices["gw"].percentile(0.99) < 200


def test_a_device_without_units_keeps_one_breaker_that_drops_the_connection(tmp_path):
    groups = [{"points": ["a"], "every_ms": 100}, {"points": ["b"], "every_ms": 100}]
    body = plan_body("d", groups, limits={"timeout_ms": 30})

    def done(seen: Seen) -> bool:
        opened = {g.point for g in seen.sink.gaps() if g.detail == "circuit breaker open"}
        return opened == {"a", "b"} and seen.connects() >= 2

    _, sink, protocol = collect(
        tmp_path, [body], done, {"d": {"hang": 10}}, config=fast_config(breaker_threshold=3)
    )
    assert not sink.readings()
    opened = [g for g in sink.gaps() if g.detail == "circuit breaker open"]
    assert {g.point for g in opened} == {"a", "b"}  # one breaker for both groups
    assert protocol.sessions["d"].connects >= 2  # opening it dropped the connection


def test_a_refusing_device_reconnects_with_backoff(tmp_path):
    body = plan_body("d", [{"points": ["a"], "every_ms": 20}])
    _, sink, protocol = collect(
        tmp_path,
        [body],
        lambda seen: len(seen.sink.gaps()) >= 25 and seen.connects() >= 3,  # ~0.5 s of slots
        {"d": {"refuse": True}},
        config=fast_config(),
    )
    reasons = Counter(g.reason for g in sink.gaps())
    # on a loaded machine a slot's deadline may pass while a connection is being refused
    assert set(reasons) <= {GapReason.REFUSED, GapReason.TIMEOUT}
    assert reasons[GapReason.REFUSED] > reasons[GapReason.TIMEOUT]
    assert 3 <= protocol.sessions["d"].connects < len(sink.gaps()) / 2


def test_request_spacing_and_rate_are_respected(tmp_path):
    groups = [{"points": [f"p{i}"], "every_ms": 200} for i in range(3)]
    body = plan_body(
        "d", groups, limits={"min_request_spacing_ms": 40, "max_requests_per_second": 10}
    )
    _, sink, protocol = collect(tmp_path, [body], lambda seen: len(seen.reads()) >= 6)
    reads = protocol.sessions["d"].reads
    assert min(b - a for a, b in itertools.pairwise(reads)) >= 0.095
    assert {g.reason for g in sink.gaps()} <= {GapReason.RATE_LIMITED, GapReason.SHUTDOWN}


def test_a_sample_in_flight_at_stop_is_a_shutdown_gap(tmp_path):
    body = plan_body("d", [{"points": ["a", "b"], "every_ms": 100}], limits={"timeout_ms": 5000})
    _, sink, _ = collect(tmp_path, [body], lambda seen: seen.reads(), {"d": {"hang": 5}})
    assert [g.reason for g in sink.gaps()] == [GapReason.SHUTDOWN] * 2


def test_a_subscription_that_loses_its_server_is_reconnected(tmp_path):
    group = {"kind": "subscribe", "points": ["s"], "expect_every_ms": 1000}
    behaviour = {"messages": 2, "drop_after_messages": True}
    _, sink, protocol = collect(
        tmp_path,
        [plan_body("d", [group])],
        lambda seen: seen.connects() >= 2 and len(seen.sink.readings()) >= 4,
        {"d": behaviour},
    )
    assert protocol.sessions["d"].connects >= 2
    assert len(sink.readings()) >= 4  # the second connection subscribed again


def test_silent_subscriptions_get_no_data_gaps(tmp_path):
    group = {"kind": "subscribe", "points": ["s"], "expect_every_ms": 50}
    body = plan_body("d", [group], capture={"s": {"every_ms": 50}})

    def stale_so_far(seen: Seen) -> list[Gap]:  # gaps at slots after the third, last message
        delivered = [r for r in seen.sink.readings() if r.scheduled_at is None]
        if len(delivered) < 3:
            return []
        return [g for g in seen.sink.gaps() if g.scheduled_at > delivered[-1].collected_at]

    _, sink, _ = collect(
        tmp_path, [body], lambda seen: len(stale_so_far(seen)) >= 4, {"d": {"messages": 3}}
    )
    delivered = [r for r in sink.readings() if r.scheduled_at is None]
    assert [r.value for r in delivered] == [0, 1, 2]
    held = [r for r in sink.readings() if r.scheduled_at is not None]
    assert held and all(r.held and r.value in (0, 1, 2) for r in held)
    last = delivered[-1].collected_at.timestamp()
    stale = [g for g in sink.gaps() if g.scheduled_at.timestamp() > last]
    assert len(stale) >= 4 and {g.reason for g in stale} == {GapReason.NO_DATA}
    times = [g.scheduled_at.timestamp() for g in stale]
    assert all(abs((b - a) - 0.05) < 0.001 for a, b in itertools.pairwise(times))  # every slot
    assert all(g.detail.startswith("stale: ") for g in stale)
    assert min(times) - last > 0.149  # held for 3 x 50 ms after the last message, then stale


def test_plan_expiring_during_the_run_gives_plan_expired_gaps(tmp_path):
    now = datetime.now(UTC).timestamp()
    until = datetime.fromtimestamp(int(now) + 2, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    body = plan_body("d", [{"points": ["a"], "every_ms": 500}], valid_until=until)
    clock = ScaledFromFirstUse(now, speed=4)

    def done(seen: Seen) -> bool:
        return GapReason.PLAN_EXPIRED in {g.reason for g in seen.sink.gaps()}

    _, sink, _ = collect(tmp_path, [body], done, clock=clock)
    assert GapReason.PLAN_EXPIRED in {g.reason for g in sink.gaps()}
    assert sink.readings()


def test_expired_and_tampered_plans_are_refused(tmp_path):
    expired = plan_body(
        "d", [{"points": ["a"], "every_ms": 500}], valid_until="2020-01-01T00:00:00Z"
    )
    with pytest.raises(PlanRejected, match="recompile"):
        collect(tmp_path / "x", [expired], lambda seen: True)
    folder = write_plans(tmp_path / "y", [plan_body("d", [{"points": ["a"], "every_ms": 500}])])
    plan = folder / "d.plan.json"
    plan.write_bytes(plan.read_bytes().replace(b'"every_ms":500', b'"every_ms":400'))
    pm = make_plugin_manager(load_entry_points=False, extra=[FakeProtocol()])
    with pytest.raises(PlanRejected, match="digest does not verify"):
        asyncio.run(run_plans(folder, pm, duration=0.1, sink=MemorySink()))


def test_cli_run_refuses_an_expired_plan(tmp_path, capsys):
    expired = plan_body(
        "d", [{"points": ["a"], "every_ms": 500}], valid_until="2020-01-01T00:00:00Z"
    )
    folder = write_plans(tmp_path / "plans", [expired])
    assert main(["run", "--plans", str(folder), "--for", "1s"]) == 2
    assert "recompile" in capsys.readouterr().err


def test_json_lines_are_canonical_records(tmp_path):
    body = plan_body("d", [{"points": ["a"], "every_ms": 100}])
    pm = make_plugin_manager(load_entry_points=False, extra=[FakeProtocol({"d": {"code": 2}})])
    out = tmp_path / "out.jsonl"
    sink = JsonLinesSink(out)

    async def run() -> None:
        async with collecting(write_plans(tmp_path / "p", [body]), pm, sink=sink):
            await until(lambda: sink.count >= 3, "three records")

    asyncio.run(run())
    lines = out.read_bytes().splitlines()
    assert lines
    for line in lines:
        record = json.loads(line)
        assert canonical_json(record) == line
        assert record["type"] == "gap" and record["reason"] == "exception"
        assert record["raw_code"] == 2 and record["scheduled_at"].endswith("Z")


# --- all requests of a slot leave before any answer is decoded ----------------------------


def test_every_request_of_a_slot_is_sent_before_any_answer_is_decoded(tmp_path):
    bodies = [plan_body(f"d{i}", [{"points": ["a"], "every_ms": 300}]) for i in range(12)]
    behaviours = {f"d{i}": {"decode": 0.005} for i in range(12)}

    def done(seen: Seen) -> bool:  # three slots whose every request was sent and decoded
        per_slot = Counter(at for _, _, at in seen.protocol.events)
        return sum(n == 24 for n in per_slot.values()) >= 3

    _, _, protocol = collect(tmp_path, bodies, done, behaviours)
    slots = sorted({at for _, _, at in protocol.events})
    assert len(slots) >= 3
    for slot in slots[:-1]:  # the last slot may be cut by the end of the run
        kinds = [kind for kind, _, at in protocol.events if at == slot]
        assert kinds == ["sent"] * 12 + ["decoded"] * 12, (slot, kinds)


# --- on_change between scheduled samples (polled protocols) ---------------------------------


def test_changes_are_reported_between_samples_beyond_the_deadband(tmp_path):
    # "a" moves by 2 every third read, "b" by 2 every read but has a deadband of 10
    def values(point, n):
        return n // 3 * 2 if point == "a" else n * 2

    capture = {
        "a": {"every_ms": 600, "on_change": {"deadband": 1.5}},
        "b": {"every_ms": 600, "on_change": {"deadband": 10}},
    }
    body = plan_body(
        "d",
        [{"points": ["a", "b"], "every_ms": 600}],
        capture=capture,
        limits={"min_interval_ms": 100},
    )

    def done(seen: Seen) -> bool:
        scheduled = [r for r in seen.sink.readings() if r.scheduled_at is not None]
        between = [r for r in seen.sink.readings() if r.scheduled_at is None]
        return len(scheduled) >= 4 and any(r.point == "a" for r in between)

    summary, sink, protocol = collect(tmp_path, [body], done, {"d": {"values": values}})
    assert not sink.gaps()
    scheduled = [r for r in sink.readings() if r.scheduled_at is not None]
    assert len(scheduled) == sum(summary.devices["d"].scheduled.values()) >= 4
    between = [r for r in sink.readings() if r.scheduled_at is None]
    assert {r.point for r in between} <= {"a", "b"} and any(r.point == "a" for r in between)
    assert len(protocol.sessions["d"].reads) > len(scheduled) // 2  # there were extra polls
    for point, band in (("a", 1.5), ("b", 10)):
        last = None
        for r in (r for r in sink.readings() if r.point == point):
            if r.scheduled_at is None and last is not None:
                assert changed(r.value, last, band) and abs(r.value - last) >= band
            last = r.value


def test_on_change_polls_spend_only_spare_budget_and_never_make_gaps(tmp_path):
    capture = {"a": {"every_ms": 300, "on_change": {"deadband": 0}}}
    body = plan_body(
        "d",
        [{"points": ["a"], "every_ms": 300}],
        capture=capture,
        limits={"min_interval_ms": 50, "max_requests_per_second": 8},
    )
    summary, sink, protocol = collect(
        tmp_path,
        [body],
        lambda seen: seen.scheduled() >= 3 and len(seen.reads()) > seen.scheduled(),
        {"d": {"values": lambda p, n: n}},
    )
    reads = protocol.sessions["d"].reads
    assert min(b - a for a, b in itertools.pairwise(reads)) >= 0.1  # 8/s, no burst
    assert len(reads) > sum(summary.devices["d"].scheduled.values())  # there were extra polls
    assert {g.reason for g in sink.gaps()} <= {GapReason.SHUTDOWN}
    # a failing device: its extra polls fail too, but only scheduled samples are gaps
    failing = plan_body(
        "e", [{"points": ["a"], "every_ms": 300}], capture=capture, limits={"min_interval_ms": 50}
    )
    summary, sink, protocol = collect(
        tmp_path / "e",
        [failing],
        lambda seen: seen.scheduled("e") >= 3 and len(seen.reads("e")) > seen.scheduled("e"),
        {"e": {"code": 2}},
    )
    assert len(sink.gaps()) == sum(summary.devices["e"].scheduled.values())
    assert len(protocol.sessions["e"].reads) > len(sink.gaps())


def test_values_that_are_not_numbers_are_reported_when_they_differ():
    assert changed("open", "closed", 5) and not changed("open", "open", 0)
    assert changed(True, False, 10) and changed(None, 3.0, 1) and changed(1, None, 0)
    assert changed(3.0, 1.0, 2) and not changed(3.0, 1.5, 2) and not changed(2, 2, 0)


# --- the flood guard (subscriptions) --------------------------------------------------------


def test_a_flooding_subscription_is_coalesced_to_its_min_interval(tmp_path):
    group = {"kind": "subscribe", "points": ["s"]}
    behaviour = {"messages": 30, "every": 0.02}
    body = plan_body("d", [group], limits={"min_interval_ms": 200})
    # until all 30 are sent: the end of the run delivers what the guard still holds
    _, sink, _ = collect(
        tmp_path, [body], lambda seen: seen.protocol.sessions["d"].published == 30, {"d": behaviour}
    )
    readings = sink.readings()
    # ~0.6 s of messages at one per 200 ms window (more windows if the machine is loaded)
    assert 2 <= len(readings) <= 10, [(r.value, r.coalesced) for r in readings]
    assert sum(r.coalesced or 1 for r in readings) == 30  # nothing lost silently
    assert readings[0].coalesced == 0 and readings[-1].value == 29  # the latest value wins
    unguarded = plan_body("d", [group])
    _, sink, _ = collect(
        tmp_path / "u", [unguarded], lambda seen: len(seen.sink.readings()) == 30, {"d": behaviour}
    )
    assert [r.value for r in sink.readings()] == list(range(30))
    assert not any(r.coalesced for r in sink.readings())


def test_coalesced_is_written_only_when_set():
    at = datetime(2026, 6, 1, 12, tzinfo=UTC)
    assert record_json(Reading("d", "p", at, 1.5, coalesced=7))["coalesced"] == 7
    assert "coalesced" not in record_json(Reading("d", "p", at, 1.5))


# --- the slots of subscribed points ---------------------------------------------------------


def held_in(sink: MemorySink) -> list[Reading]:
    """The held readings (a subscription's latest value, recorded at a slot) so far."""
    return [r for r in sink.readings() if r.held]


def test_a_subscribed_point_holds_its_latest_value_at_every_slot(tmp_path):
    """No bound (no ``expect_every_ms``, as OPC UA): a value holds while the subscription is up."""
    group = {"kind": "subscribe", "points": ["s"]}
    body = plan_body("d", [group], capture={"s": {"every_ms": 50}})
    source = datetime(2026, 6, 1, tzinfo=UTC)
    behaviour = {"messages": 1, "every": 0.12, "source_at": source}
    summary, sink, _ = collect(
        tmp_path, [body], lambda seen: len(held_in(seen.sink)) >= 6, {"d": behaviour}
    )
    (delivered,) = [r for r in sink.readings() if r.scheduled_at is None]
    slots = [r for r in sink.records if r.scheduled_at is not None and r not in [delivered]]
    first = next(i for i, r in enumerate(slots) if isinstance(r, Reading))
    assert first >= 1 and {r.reason for r in slots[:first]} == {GapReason.NO_DATA}
    held = slots[first:]
    assert len(held) >= 6 and all(isinstance(r, Reading) and r.held for r in held)
    assert {(r.value, r.collected_at, r.source_at) for r in held} == {
        (delivered.value, delivered.collected_at, source)
    }
    assert {b.scheduled_at - a.scheduled_at for a, b in itertools.pairwise(slots)} == {
        timedelta(milliseconds=50)
    }
    counts = summary.devices["d"].point_counts("s")
    assert counts == {
        "slots": len(slots),
        "readings": len(held),
        "held": len(held),
        "gaps": first,
        "extra": 1,
    }


def test_a_subscription_that_is_down_or_restarted_gives_refused_then_no_data(tmp_path):
    group = {"kind": "subscribe", "points": ["s"]}
    body = plan_body("d", [group], capture={"s": {"every_ms": 40}})
    behaviour = {"messages": 1, "drop_after_messages": True, "linger": 0.2, "later": 0.3}
    config = CollectConfig(reconnect=Backoff(base=0.2, cap=0.2, jitter=0))

    def turns(sink: MemorySink) -> list[str]:  # what filled the slots, in turn
        slots = [r for r in sink.records if r.scheduled_at is not None]
        kinds = [r.reason.value if isinstance(r, Gap) else "held" for r in slots]
        return [kind for kind, _ in itertools.groupby(kinds)]

    def done(seen: Seen) -> bool:  # no value yet after the reconnection that followed the drop
        runs = turns(seen.sink)
        refused = runs.index("refused") if "refused" in runs else len(runs)
        return seen.connects() >= 2 and "no-data" in runs[refused:]

    _, sink, protocol = collect(tmp_path, [body], done, {"d": behaviour}, config=config)
    assert protocol.sessions["d"].connects >= 2
    slots = [r for r in sink.records if r.scheduled_at is not None]
    runs = turns(sink)
    # at each connection: no value yet, then the delivered one held until the session drops it
    assert "refused" in runs and runs.index("refused") > runs.index("held")
    after = runs[runs.index("refused") :]
    assert "no-data" in after, runs
    no_data = [r for r in slots if isinstance(r, Gap) and r.reason is GapReason.NO_DATA]
    assert {g.detail for g in no_data} == {"no value delivered since the subscription started"}


def test_a_point_captured_on_change_only_has_no_slots(tmp_path):
    group = {"kind": "subscribe", "points": ["s", "t"]}
    body = plan_body("d", [group], capture={"s": {"every_ms": 50}})

    def done(seen: Seen) -> bool:  # all three messages of t, and a slot of s
        on_change = [r for r in seen.sink.readings() if r.point == "t"]
        return len(on_change) >= 3 and any(r.scheduled_at for r in seen.sink.records)

    summary, sink, _ = collect(tmp_path, [body], done, {"d": {"messages": 3}})
    assert {r.point for r in sink.records if r.scheduled_at is not None} == {"s"}
    assert len([r for r in sink.readings() if r.point == "t"]) == 3
    assert summary.devices["d"].point_counts("t") == {
        "slots": 0,
        "readings": 0,
        "held": 0,
        "gaps": 0,
        "extra": 3,
    }


def test_a_gap_a_subscription_delivers_is_kept_as_a_bad_reading(tmp_path):
    group = {"kind": "subscribe", "points": ["s"]}
    body = plan_body("d", [group], capture={"s": {"every_ms": 50}})
    behaviour = {"messages": 1, "deliver_gap": True}
    _, sink, _ = collect(tmp_path, [body], lambda seen: held_in(seen.sink), {"d": behaviour})
    (delivered,) = [r for r in sink.readings() if r.scheduled_at is None]
    assert (delivered.value, delivered.quality, delivered.raw_code) == (None, Quality.BAD, 7)
    held = [r for r in sink.readings() if r.held]
    assert held and {(r.quality, r.raw_code) for r in held} == {(Quality.BAD, 7)}


def test_a_cron_schedule_spans_its_fires_and_an_interval_counts_its_slots():
    every = Schedule(5000, (), ZURICH)
    assert every.span(1, 20_001) == (5000, 20_000, 4)
    assert every.span(5000, 5001) == (5000, 5000, 1)
    assert every.span(5001, 10_000) is None
    day = datetime(2026, 3, 29, tzinfo=ZURICH)  # spring forward: 02:00-03:00 does not exist
    hourly = Schedule(None, ("0 * * * *",), ZURICH)
    start, end = int(day.timestamp() * 1000), int((day + timedelta(days=1)).timestamp() * 1000)
    first, last, count = hourly.span(start, end)
    assert (local(first), local(last), count) == (
        "2026-03-29T00:00:00+01:00",
        "2026-03-29T23:00:00+02:00",
        23,
    )


def test_backfill_gives_one_record_per_point_for_its_missed_slots():
    polled = {"points": ["a", "b"], "every_ms": 1000}
    subscribed = {"kind": "subscribe", "points": ["s", "t"]}
    body = plan_body("d", [polled, subscribed], capture={"s": {"every_ms": 250}})
    plan = plan_of(body)
    gaps = missed(plan, 10_500, 3_600_000 * 24 * 7 + 10_500, fallback_every_ms=1000)
    assert [(g.point, g.slots) for g in gaps] == [
        ("s", 7 * 86_400 * 4),  # its first slot, 10.5 s, comes first
        ("a", 7 * 86_400),
        ("b", 7 * 86_400),
    ]  # t is captured on change only: no slots
    s, a, _ = gaps
    assert (a.scheduled_at, a.last_scheduled_at) == (
        datetime.fromtimestamp(11, UTC),
        datetime.fromtimestamp(7 * 86_400 + 10, UTC),
    )
    assert s.scheduled_at == datetime.fromtimestamp(10.5, UTC)
    assert {g.reason for g in gaps} == {GapReason.SHUTDOWN}
    alone = missed(plan, 10_900, 11_001, fallback_every_ms=1000)  # the slots at 11 s only
    assert {(g.point, g.slots, g.last_scheduled_at) for g in alone} == {
        ("a", 1, None),
        ("b", 1, None),
        ("s", 1, None),
    }
