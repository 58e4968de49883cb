"""The collector against the real simulators, one test per fault a device can have.

Each test compiles a small site (a faulty device and a healthy one), serves
it with the protocol plugins' simulators on free ports and, while
``run_plans`` collects, injects the fault, waits until the records show it,
ends the fault and waits until the device recovers (tests/waiting.py: each
step as soon as the records get there, however fast the machine is). Then it
checks three things: the faulty device's records say what happened (gap
reason or bad quality), it recovered once the fault ended, and the healthy
device kept collecting without a single gap.
"""

from __future__ import annotations

import asyncio
import math
import random
import socket
import textwrap
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

import pytest
from waiting import Collection, collecting, until

import engine.collect
from engine.collect import CollectConfig, MemorySink, Summary
from engine.collect.limits import Backoff
from engine.compile import Inputs, compile_project
from engine.plans.folder import write_plans
from engine.plugin_manager import make_plugin_manager
from engine.protocols import Fault
from engine.records import Gap, GapReason, Quality, Reading, Record
from engine.simulate import Simulation, running

Script = Callable[[Simulation, Collection], Awaitable[None]]
"""Injects faults and waits for what they do, while the run collects; the run ends after it."""


@pytest.fixture(scope="module")
def pm():
    return make_plugin_manager()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def modbus(device: str, *, limits: str = "{timeout: 300ms}") -> str:
    return f"""\
  - id: {device}
    protocol: modbus
    endpoint: {{host: 127.0.0.1, port: {free_port()}, unit: 1}}
    limits: {limits}
    points:
      - {{name: T1, address: {{table: holding, register: 0, type: int16}}}}
      - {{name: T2, address: {{table: holding, register: 1, type: int16}}}}
"""


def opcua(device: str) -> str:
    return f"""\
  - id: {device}
    protocol: opcua
    endpoint: {{url: "opc.tcp://127.0.0.1:{free_port()}/"}}
    limits: {{timeout: 500ms}}
    points:
      - {{name: N1, address: {{node: "ns=2;s={device}.N1"}}}}
"""


def mqtt(device: str, port: int, *, limits: str = "{timeout: 2s}") -> str:
    return f"""\
  - id: {device}
    protocol: mqtt
    endpoint: {{broker: "mqtt://127.0.0.1:{port}"}}
    limits: {limits}
    points:
      - {{name: M1, address: {{topic: "{device}/m1"}}}}
"""


def compile_site(tmp_path: Path, pm: Any, devices: str, every: str = "500ms") -> Path:
    site = tmp_path / "site"
    site.mkdir()
    (site / "site.yaml").write_text(f"site: faults\ntimezone: UTC\ndevices:\n{devices}")
    (tmp_path / "policy.yaml").write_text(
        textwrap.dedent(f"""\
        policy: capture-all
        title: capture everything
        owner: qa
        applies:
          devices: {{site: [faults]}}
        capture: {{every: {every}}}
        """)
    )
    result = compile_project(Inputs([tmp_path / "policy.yaml"], [site]), pm)
    assert result.ok, [str(f) for f in result.findings]
    write_plans(tmp_path / "plans", result.plans, result.index())
    return site


CONFIG = CollectConfig(
    retry=Backoff(base=0.02, cap=0.1, rng=random.Random(1)),
    reconnect=Backoff(base=0.05, cap=0.2, rng=random.Random(2)),
    breaker_cooldown_s=0.3,
)


def collect(
    tmp_path: Path, pm: Any, site: Path, script: Script, *, before: Sequence[Fault] = ()
) -> tuple[Summary, MemorySink]:
    """Serve ``site`` with the faults ``before`` in force, and collect while ``script`` runs
    and until the healthy device has a few records since its first reading."""
    sink = MemorySink()

    async def scenario() -> Summary:
        async with running(site, pm=pm) as sim:
            for fault in before:
                await sim.inject(fault)
            async with collecting(tmp_path / "plans", pm, sink=sink, config=CONFIG) as run:
                await script(sim, run)
                await until(
                    lambda: len(from_first_reading(of(sink, "good"))) >= 3,
                    "three records of 'good' from its first reading on",
                )
            return run.summary

    summary = asyncio.run(scenario())
    assert summary.unaccounted() == {}
    return summary, sink


async def seen(
    sink: MemorySink,
    device: str,
    want: Callable[[Record], bool],
    what: str,
    *,
    since: int = 0,
    least: int = 1,
) -> None:
    """Wait until ``least`` of the device's records from ``sink.records[since]`` on are ``want``."""

    def count() -> int:
        return sum(1 for r in of_records(sink.records[since:], device) if want(r))

    await until(lambda: count() >= least, lambda: f"{what} (seen {count()} of {least})")


def good(record: Record) -> bool:
    return isinstance(record, Reading) and record.quality is Quality.GOOD


def gap(reason: GapReason) -> Callable[[Record], bool]:
    return lambda record: isinstance(record, Gap) and record.reason is reason


def of(sink: MemorySink, device: str) -> list[Record]:
    """The device's records, but for a sample the end of the run cut short (``shutdown``)."""
    return of_records(sink.records, device)


def of_records(records: Sequence[Record], device: str) -> list[Record]:
    return [
        r
        for r in records
        if r.device == device and not (isinstance(r, Gap) and r.reason is GapReason.SHUTDOWN)
    ]


def healthy(sink: MemorySink, device: str = "good", least: int = 3) -> None:
    """No gap once the device has given a value; before it, only the slots of a subscribed
    point that has none yet to hold (its first message may come after its first slot, and on
    a loaded machine so may the connection)."""
    records = of(sink, device)
    since = from_first_reading(records)
    assert not [r for r in since if isinstance(r, Gap)], "the healthy device had gaps"
    before = [r for r in records[: len(records) - len(since)] if isinstance(r, Gap)]
    assert {(g.reason, g.detail) for g in before} <= NOTHING_TO_HOLD_YET, before
    assert len(since) >= least


NOTHING_TO_HOLD_YET = {
    (GapReason.REFUSED, "the subscription is down: not connected"),
    (GapReason.NO_DATA, "no value delivered since the subscription started"),
}
"""The gaps of a subscribed point's slots before it has a value to hold (docs/runtime.md)."""


def from_first_reading(records: list[Record]) -> list[Record]:
    """The records from the first reading on (none if there is none yet)."""
    first = next((i for i, r in enumerate(records) if isinstance(r, Reading)), len(records))
    return records[first:]


def delivered(records: list[Record]) -> list[Reading]:
    """The readings a subscription delivered, not the held ones recorded at its slots."""
    return [r for r in records if isinstance(r, Reading) and r.scheduled_at is None]


def recovered(records: list[Record]) -> None:
    """The device's last records (its last slot or message) are good readings."""
    assert records, "no records"
    last = records[-1]
    assert isinstance(last, Reading) and last.quality is Quality.GOOD, last


def reasons(records: list[Record]) -> set[GapReason]:
    return {r.reason for r in records if isinstance(r, Gap)}


def bad_quality(record: Record) -> bool:
    return isinstance(record, Reading) and record.quality is Quality.BAD


def last_is_good(sink: MemorySink, device: str, since: int) -> bool:
    """The device's last record from ``sink.records[since]`` on is a good reading."""
    records = of_records(sink.records[since:], device)
    return bool(records) and good(records[-1])


# --- Modbus -------------------------------------------------------------------------------


def test_modbus_server_down_at_start(pm, tmp_path):
    site = compile_site(tmp_path, pm, modbus("bad") + modbus("good"))

    async def script(sim: Simulation, run: Collection) -> None:
        refused = gap(GapReason.REFUSED)
        await seen(run.sink, "bad", refused, "two refused samples of T1 and T2", least=4)
        await sim.inject(Fault("start", "bad"))
        since = len(run.sink.records)
        await seen(run.sink, "bad", good, "a reading after the start", since=since)

    _, sink = collect(tmp_path, pm, site, script, before=[Fault("stop", "bad")])
    bad = of(sink, "bad")
    assert isinstance(bad[0], Gap) and bad[0].reason is GapReason.REFUSED
    assert reasons(bad) <= {GapReason.REFUSED, GapReason.TIMEOUT}
    recovered(bad)
    healthy(sink)


def test_modbus_restart_mid_run(pm, tmp_path):
    site = compile_site(tmp_path, pm, modbus("bad") + modbus("good"))

    async def script(sim: Simulation, run: Collection) -> None:
        await seen(run.sink, "bad", good, "a reading before the stop")
        await sim.inject(Fault("stop", "bad"))
        since = len(run.sink.records)
        await seen(run.sink, "bad", gap(GapReason.REFUSED), "a refused sample", since=since)
        await sim.inject(Fault("start", "bad"))
        since = len(run.sink.records)
        await seen(run.sink, "bad", good, "a reading after the restart", since=since)

    _, sink = collect(tmp_path, pm, site, script)
    bad = of(sink, "bad")
    assert isinstance(bad[0], Reading)
    assert GapReason.REFUSED in reasons(bad)
    assert reasons(bad) <= {GapReason.REFUSED, GapReason.TIMEOUT}
    recovered(bad)
    healthy(sink)


def test_modbus_answers_slower_than_the_timeout(pm, tmp_path):
    site = compile_site(tmp_path, pm, modbus("bad") + modbus("good"))

    async def script(sim: Simulation, run: Collection) -> None:
        await seen(run.sink, "bad", good, "a reading before the delay")
        await sim.inject(Fault("delay", "bad", {"seconds": 1.0}))
        since = len(run.sink.records)
        await seen(run.sink, "bad", gap(GapReason.TIMEOUT), "a timed-out sample", since=since)
        await sim.inject(Fault("delay", "bad", {"seconds": 0}))
        since = len(run.sink.records)
        await seen(run.sink, "bad", good, "a reading after the delay", since=since)

    _, sink = collect(tmp_path, pm, site, script)
    bad = of(sink, "bad")
    assert GapReason.TIMEOUT in reasons(bad)
    assert reasons(bad) <= {GapReason.TIMEOUT, GapReason.REFUSED}  # refused: breaker open
    recovered(bad)
    healthy(sink)


class CountingSessions:
    """Wraps every session the run opens, counting ``read`` calls per device."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.reads: dict[str, int] = {}
        real = engine.collect.open_session

        def open_session(pm: Any, plan: Any) -> Any:
            return Counting(real(pm, plan), plan.device.id, self.reads)

        monkeypatch.setattr(engine.collect, "open_session", open_session)


class Counting:
    def __init__(self, session: Any, device: str, reads: dict[str, int]) -> None:
        self.session, self.device, self.counts = session, device, reads

    def __getattr__(self, name: str) -> Any:
        return getattr(self.session, name)

    async def read(self, group: Any, scheduled_at: Any) -> list[Record]:
        self.counts[self.device] = self.counts.get(self.device, 0) + 1
        return list(await self.session.read(group, scheduled_at))


def test_modbus_exceptions_busy_is_retried_illegal_address_is_not(pm, tmp_path, monkeypatch):
    counting = CountingSessions(monkeypatch)
    site = compile_site(tmp_path, pm, modbus("busy") + modbus("illegal") + modbus("good"))
    faults = [Fault("exception", "busy", {"code": 6}), Fault("exception", "illegal", {"code": 2})]

    async def script(sim: Simulation, run: Collection) -> None:
        for device in ("busy", "illegal"):
            exception = gap(GapReason.EXCEPTION)
            await seen(run.sink, device, exception, f"two samples of {device} refused", least=4)
        await sim.inject(Fault("exception", "busy", {"code": 0}))
        await sim.inject(Fault("exception", "illegal", {"code": 0}))
        since = len(run.sink.records)
        for device in ("busy", "illegal"):
            await seen(run.sink, device, good, f"a reading of {device} after", since=since)

    summary, sink = collect(tmp_path, pm, site, script, before=faults)
    busy, illegal = of(sink, "busy"), of(sink, "illegal")
    # busy's retries spend its request budget: on a loaded machine a slot may find it spent
    for records, code, also in ((busy, 6, {GapReason.RATE_LIMITED}), (illegal, 2, set())):
        gaps = [r for r in records if isinstance(r, Gap)]
        refused = {g.raw_code for g in gaps if g.reason is GapReason.EXCEPTION}
        assert refused == {code}
        assert {g.reason for g in gaps} - {GapReason.EXCEPTION} <= also
        recovered(records)
    samples = {d: sum(summary.devices[d].scheduled.values()) // 2 for d in ("busy", "illegal")}
    # one request per sample when not retried (the last sample may be cut before its request)
    assert samples["illegal"] - 1 <= counting.reads["illegal"] <= samples["illegal"]
    assert counting.reads["busy"] >= samples["busy"] + 3  # busy: asked again within the slot
    healthy(sink)


# --- OPC UA -------------------------------------------------------------------------------


def test_opcua_bad_status_gives_bad_readings(pm, tmp_path):
    site = compile_site(tmp_path, pm, opcua("bad") + modbus("good"))

    async def script(sim: Simulation, run: Collection) -> None:
        await seen(run.sink, "bad", good, "a good reading before the fault")
        await sim.inject(Fault("bad-status", "bad", {"code": "BadSensorFailure"}))
        since = len(run.sink.records)
        await seen(run.sink, "bad", bad_quality, "a bad reading", since=since)
        await sim.inject(Fault("bad-status", "bad", {"code": 0}))
        since = len(run.sink.records)
        await until(lambda: last_is_good(run.sink, "bad", since), "a good reading after it")

    _, sink = collect(tmp_path, pm, site, script)
    bad = [r for r in of(sink, "bad") if isinstance(r, Reading)]
    faulty = [r for r in bad if r.quality is Quality.BAD]
    assert faulty and all(r.value is None and r.raw_code for r in faulty)
    assert not reasons(of(sink, "bad"))
    recovered(of(sink, "bad"))
    healthy(sink)


# --- MQTT ---------------------------------------------------------------------------------


def test_mqtt_malformed_payloads_give_bad_readings(pm, tmp_path):
    port = free_port()
    site = compile_site(tmp_path, pm, mqtt("bad", port) + mqtt("good", port))

    async def script(sim: Simulation, run: Collection) -> None:
        await seen(run.sink, "bad", good, "a reading before the fault")
        await sim.inject(Fault("malformed", "bad", {"n": 2}))
        since = len(run.sink.records)
        await seen(run.sink, "bad", bad_quality, "a malformed message", since=since)
        await until(lambda: last_is_good(run.sink, "bad", since), "a good message after them")

    _, sink = collect(tmp_path, pm, site, script)
    bad = of(sink, "bad")
    malformed = [r for r in bad if isinstance(r, Reading) and r.quality is Quality.BAD]
    assert malformed and {(r.value, r.raw_code) for r in malformed} == {(None, "malformed")}
    recovered(bad)
    healthy(sink)


def test_mqtt_broker_restart_resumes_deliveries(pm, tmp_path):
    site = compile_site(tmp_path, pm, mqtt("bad", free_port()) + mqtt("good", free_port()))

    async def script(sim: Simulation, run: Collection) -> None:
        await seen(run.sink, "bad", good, "a message before the stop")
        await sim.inject(Fault("stop", "bad"))
        since = len(run.sink.records)
        await seen(run.sink, "bad", gap(GapReason.REFUSED), "a refused slot", since=since)
        await sim.inject(Fault("start", "bad"))
        since = len(run.sink.records)
        await seen(run.sink, "bad", good, "a message after the restart", since=since)

    _, sink = collect(tmp_path, pm, site, script)
    bad = of(sink, "bad")
    first = next(i for i, r in enumerate(bad) if isinstance(r, Reading))
    # the subscription is down (refused), then up again, maybe a slot without a value yet
    assert GapReason.REFUSED in reasons(bad[first:])
    assert reasons(bad[first:]) <= {GapReason.REFUSED, GapReason.NO_DATA}
    silence = next(r for r in bad[first:] if isinstance(r, Gap)).scheduled_at
    assert any(isinstance(r, Reading) and r.collected_at > silence for r in bad)
    recovered(bad)
    healthy(sink)


def test_mqtt_flood_is_coalesced_to_min_interval(pm, tmp_path):
    aiomqtt = pytest.importorskip("aiomqtt")
    port = free_port()
    devices = mqtt("flood", port, limits="{timeout: 2s, min_interval: 1s}") + mqtt("good", port)
    site = compile_site(tmp_path, pm, devices, every="1s")

    async def flood(sim: Simulation, run: Collection) -> None:
        def received() -> int:
            return sum(r.coalesced or 1 for r in delivered(of(run.sink, "flood")))

        subscribed = run.summary.devices["flood"]
        await until(lambda: subscribed.state == "connected", "the collector to subscribe")
        async with aiomqtt.Client("127.0.0.1", port) as client:
            for i in range(50):
                await client.publish("flood/m1", str(i), qos=1)
                await asyncio.sleep(0.02)  # a flood: one message every 20 ms
        await until(lambda: received() == 50, lambda: f"all 50 messages (got {received()})")

    delay = Fault("delay", "flood", {"seconds": 60})  # only our client publishes
    _, sink = collect(tmp_path, pm, site, flood, before=[delay])
    readings = delivered(of(sink, "flood"))  # the slots' held readings repeat these
    # the first message at once, then one reading per 1 s window the others arrived in
    # (a reading is the last message it stands for: its time is when that one arrived)
    arrived = (readings[-1].collected_at - readings[0].collected_at).total_seconds()
    windows = math.ceil(arrived + 0.05)  # 0.05: the guard counts whole milliseconds
    assert 1 <= len(readings) <= 1 + windows, [(r.value, r.coalesced) for r in readings]
    assert sum(r.coalesced or 1 for r in readings) == 50  # every message accounted for
    assert readings[-1].value == 49
    healthy(sink)
