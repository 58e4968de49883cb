"""The collector against the real simulators, one test per fault a device can have.

Each test compiles a small site (a faulty device and a healthy one), serves
it with the protocol plugins' simulators on free ports, injects the fault on
the real clock while ``run_plans`` collects for a few seconds, and checks
three things: the faulty device's records say what happened (gap reason or
bad quality), it recovers once the fault ends, and the healthy device kept
collecting without a single gap.
"""

from __future__ import annotations

import asyncio
import random
import socket
import textwrap
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

import engine.collect
from engine.collect import CollectConfig, MemorySink, Summary, run_plans
from engine.collect.limits import Backoff
from engine.compile import Inputs, compile_project
from engine.plans.folder import write_plans
from engine.plugin_manager import make_plugin_manager
from engine.protocols import Fault
from engine.records import Gap, GapReason, Quality, Reading, Record
from engine.simulate import Simulation, running

Script = Callable[[Simulation], Awaitable[None]]


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
    tmp_path: Path, pm: Any, site: Path, seconds: float, script: Script
) -> tuple[Summary, MemorySink]:
    """Serve ``site``, run ``script`` (the faults) and collect for ``seconds``, together."""
    sink = MemorySink()

    async def scenario() -> Summary:
        async with running(site, pm=pm) as sim:
            faults = asyncio.create_task(script(sim))
            summary = await run_plans(
                tmp_path / "plans", pm, duration=seconds, sink=sink, config=CONFIG
            )
            await faults
            return summary

    summary = asyncio.run(scenario())
    assert summary.unaccounted() == {}
    return summary, sink


def at(seconds: float, *faults: Fault) -> Script:
    """A script injecting ``faults`` in turn, each after waiting its ``params['after']``."""

    async def script(sim: Simulation) -> None:
        await asyncio.sleep(seconds)
        for fault in faults:
            await asyncio.sleep(float(fault.params.get("after", 0)))
            await sim.inject(fault)

    return script


def of(sink: MemorySink, device: str) -> list[Record]:
    """The device's records, but for a sample the end of the run cut short (``shutdown``)."""
    return [
        r
        for r in sink.records
        if r.device == device and not (isinstance(r, Gap) and r.reason is GapReason.SHUTDOWN)
    ]


def healthy(sink: MemorySink, device: str = "good", least: int = 3) -> None:
    """No gap once the device has given a value; before it, only the slots of a subscribed
    point that has none yet to hold (its first message may come after its first slot)."""
    records = of(sink, device)
    first = next((i for i, r in enumerate(records) if isinstance(r, Reading)), len(records))
    assert not [r for r in records[first:] if isinstance(r, Gap)], "the healthy device had gaps"
    assert reasons(records[:first]) <= {GapReason.NO_DATA}
    assert len(records) - first >= least


def recovered(records: list[Record]) -> None:
    """The device's last records (its last slot or message) are good readings."""
    assert records, "no records"
    last = records[-1]
    assert isinstance(last, Reading) and last.quality is Quality.GOOD, last


def reasons(records: list[Record]) -> set[GapReason]:
    return {r.reason for r in records if isinstance(r, Gap)}


# --- Modbus -------------------------------------------------------------------------------


def test_modbus_server_down_at_start(pm, tmp_path):
    site = compile_site(tmp_path, pm, modbus("bad") + modbus("good"))
    script = at(0, Fault("stop", "bad"), Fault("start", "bad", {"after": 1.5}))
    _, sink = collect(tmp_path, pm, site, 3.2, script)
    bad = of(sink, "bad")
    assert isinstance(bad[0], Gap) and bad[0].reason is GapReason.REFUSED
    assert reasons(bad) <= {GapReason.REFUSED, GapReason.TIMEOUT}
    recovered(bad)
    healthy(sink)


def test_modbus_restart_mid_run(pm, tmp_path):
    site = compile_site(tmp_path, pm, modbus("bad") + modbus("good"))
    script = at(1.0, Fault("stop", "bad"), Fault("start", "bad", {"after": 1.2}))
    _, sink = collect(tmp_path, pm, site, 4.0, script)
    bad = of(sink, "bad")
    assert isinstance(bad[0], Reading)
    assert GapReason.REFUSED in reasons(bad)
    assert reasons(bad) <= {GapReason.REFUSED, GapReason.TIMEOUT}
    recovered(bad)
    healthy(sink)


def test_modbus_answers_slower_than_the_timeout(pm, tmp_path):
    site = compile_site(tmp_path, pm, modbus("bad") + modbus("good"))
    script = at(
        0.8,
        Fault("delay", "bad", {"seconds": 1.0}),
        Fault("delay", "bad", {"seconds": 0, "after": 1.2}),
    )
    _, sink = collect(tmp_path, pm, site, 4.0, script)
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
    script = at(
        0,
        Fault("exception", "busy", {"code": 6}),
        Fault("exception", "illegal", {"code": 2}),
        Fault("exception", "busy", {"code": 0, "after": 1.6}),
        Fault("exception", "illegal", {"code": 0}),
    )
    summary, sink = collect(tmp_path, pm, site, 3.0, script)
    busy, illegal = of(sink, "busy"), of(sink, "illegal")
    for records, code in ((busy, 6), (illegal, 2)):
        gaps = [r for r in records if isinstance(r, Gap)]
        assert gaps and {(g.reason, g.raw_code) for g in gaps} == {(GapReason.EXCEPTION, code)}
        recovered(records)
    samples = {d: sum(summary.devices[d].scheduled.values()) // 2 for d in ("busy", "illegal")}
    # one request per sample when not retried (the last sample may be cut before its request)
    assert samples["illegal"] - 1 <= counting.reads["illegal"] <= samples["illegal"]
    assert counting.reads["busy"] >= samples["busy"] + 3  # busy: asked again within the slot
    healthy(sink)


# --- OPC UA -------------------------------------------------------------------------------


def test_opcua_bad_status_gives_bad_readings(pm, tmp_path):
    site = compile_site(tmp_path, pm, opcua("bad") + modbus("good"))
    script = at(
        0.8,
        Fault("bad-status", "bad", {"code": "BadSensorFailure"}),
        Fault("bad-status", "bad", {"code": 0, "after": 1.5}),
    )
    _, sink = collect(tmp_path, pm, site, 4.0, script)
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
    _, sink = collect(tmp_path, pm, site, 3.0, at(1.0, Fault("malformed", "bad", {"n": 2})))
    bad = of(sink, "bad")
    malformed = [r for r in bad if isinstance(r, Reading) and r.quality is Quality.BAD]
    assert malformed and {(r.value, r.raw_code) for r in malformed} == {(None, "malformed")}
    recovered(bad)
    healthy(sink)


def test_mqtt_broker_restart_resumes_deliveries(pm, tmp_path):
    site = compile_site(tmp_path, pm, mqtt("bad", free_port()) + mqtt("good", free_port()))
    script = at(1.0, Fault("stop", "bad"), Fault("start", "bad", {"after": 2.0}))
    _, sink = collect(tmp_path, pm, site, 5.0, script)
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

    async def flood(sim: Simulation) -> None:
        await sim.inject(Fault("delay", "flood", {"seconds": 60}))  # only our client publishes
        await asyncio.sleep(1.0)  # the collector has subscribed
        async with aiomqtt.Client("127.0.0.1", port) as client:
            for i in range(50):
                await client.publish("flood/m1", str(i), qos=1)
                await asyncio.sleep(0.02)

    _, sink = collect(tmp_path, pm, site, 4.0, flood)
    delivered = [r for r in of(sink, "flood") if isinstance(r, Reading) and not r.scheduled_at]
    readings = delivered  # the slots' held readings repeat these
    assert 1 <= len(readings) <= 3, [(r.value, r.coalesced) for r in readings]
    assert sum(r.coalesced or 1 for r in readings) == 50  # every message accounted for
    assert readings[-1].value == 49
    healthy(sink)
