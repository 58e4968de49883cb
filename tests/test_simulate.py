"""Simulation values, files, and one end-to-end run against the real Modbus simulator."""

from __future__ import annotations

import asyncio
import random
import socket
from pathlib import Path

import pytest
from waiting import collecting, until

from engine.collect import CollectConfig, MemorySink
from engine.collect.limits import Backoff
from engine.compile import Inputs, compile_project
from engine.errors import FindingsError, Location
from engine.model import Point
from engine.plans.folder import write_plans
from engine.plugin_manager import make_plugin_manager
from engine.records import GapReason
from engine.simulate import (
    ValueModel,
    default_generator,
    load_faults,
    load_rules,
    load_sites,
    make_generator,
    running,
)

REPO = Path(__file__).resolve().parent.parent
BASEL = REPO / "examples" / "sites" / "plant-basel"


@pytest.fixture(scope="module")
def pm():
    return make_plugin_manager()


def point(name: str, **address) -> Point:
    return Point(name, None, None, address, Location("x"), Location("x"))


def test_generators_are_deterministic_functions_of_t():
    ramp = make_generator("ramp", {"start": 0, "step": 2, "max": 10})
    assert [ramp(t) for t in (0, 1, 4, 6)] == [0, 2, 8, 2]
    step = make_generator("step", {"values": [1, 2, 3], "every": "10s"})
    assert [step(t) for t in (0, 9.9, 10, 35)] == [1, 1, 2, 1]
    sine = make_generator("sine", {"mean": 5, "amplitude": 2, "period": "4s"})
    assert sine(1) == pytest.approx(7) and sine(3) == pytest.approx(3)
    noise = make_generator("noise", {"mean": 0, "sigma": 1, "seed": 9})
    assert noise(1.5) == noise(1.5) != noise(2.5)
    assert make_generator("constant", {"value": True})(99) is True


def test_defaults_derive_from_the_name_and_fit_the_address():
    a, b = default_generator(point("TT1")), default_generator(point("TT1"))
    assert [a(t) for t in range(0, 100, 7)] == [b(t) for t in range(0, 100, 7)]
    assert a(0) != default_generator(point("TT2"))(0)
    counts = default_generator(point("P", type="uint16", scale=0.001))
    assert all(0 <= counts(t) <= 65.535 for t in range(200))
    whole = default_generator(point("N", type="int16"))
    assert all(isinstance(whole(t), int) for t in range(50))
    flag = default_generator(point("RUN", table="coil", type="bool"))
    assert {flag(t) for t in range(0, 60)} == {True, False}


def test_rules_match_devices_and_points_by_glob(pm):
    site = load_sites(BASEL, pm)[0]
    model = ValueModel(site.devices, load_rules(BASEL / "simulation.yaml"))
    assert model.value_at("cleanroom-emu-1", "ALARM_STATE", 12.0) == 0
    assert model.value_at("reactor-7", "SC701_PV", 0) == pytest.approx(40)
    assert model.value_at("reactor-1-plc", "FQ101_TOT", 10) == 30


def test_simulation_file_errors_name_the_place(tmp_path):
    bad = tmp_path / "simulation.yaml"
    bad.write_text(
        "values:\n  - device: a\n    sine: {mean: 1, amplitude: 1}\n"
        "  - device: b\n    constant: {value: 1}\n    ramp: {start: 0, step: 1}\n"
    )
    with pytest.raises(FindingsError) as caught:
        load_rules(bad)
    places = sorted(str(f.location) for f in caught.value.findings)
    assert places == [f"{bad}:3:11", f"{bad}:4:5"], places


def test_faults_file_is_validated(pm, tmp_path):
    devices = load_sites(BASEL, pm)[0].devices
    assert [f.kind for _, f in load_faults(BASEL / "faults.yaml", devices)][:2] == ["stop", "start"]
    bad = tmp_path / "faults.yaml"
    bad.write_text(
        "faults:\n  - {at: 1s, device: nope, fault: stop}\n"
        "  - {at: 2s, device: reactor-7, fault: explode}\n"
    )
    with pytest.raises(FindingsError) as caught:
        load_faults(bad, devices)
    assert sorted(f.location.line for f in caught.value.findings) == [2, 3]


# --- end to end, against the real Modbus simulator -----------------------------------------

SITE = """\
site: e2e
timezone: Europe/Zurich
devices:
  - id: plc
    class: reactor
    protocol: modbus
    endpoint: {{host: 127.0.0.1, port: {port}, unit: 1}}
    limits: {{timeout: 300ms, max_connections: 1}}
    points:
      - {{name: T1, signal: temperature, address: {{table: holding, register: 0, type: int16}}}}
      - {{name: T2, signal: temperature, address: {{table: holding, register: 1, type: int16}}}}
"""
POLICY = """\
policy: e2e-capture
title: capture everything
owner: qa
applies:
  devices: {site: [e2e]}
capture: {every: 1s}
"""
FAULTS = """\
faults:
  - {at: 2s, device: plc, fault: stop}
  - {at: 3200ms, device: plc, fault: start}
"""
"""Stopped after 2 s, for 1.2 s: the collector, whose first 1 s slot is at most 1 s after it
starts, reads before the stop, and at least one slot falls into it."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_collects_from_the_modbus_simulator_through_a_stop_and_restart(pm, tmp_path):
    pytest.importorskip("plugins.modbus.simulator")
    (tmp_path / "site").mkdir()
    (tmp_path / "site" / "site.yaml").write_text(SITE.format(port=free_port()))
    (tmp_path / "policy.yaml").write_text(POLICY)
    (tmp_path / "faults.yaml").write_text(FAULTS)
    result = compile_project(Inputs([tmp_path / "policy.yaml"], [tmp_path / "site"]), pm)
    assert result.ok, [str(f) for f in result.findings]
    write_plans(tmp_path / "plans", result.plans, result.index())
    config = CollectConfig(
        reconnect=Backoff(base=0.05, cap=0.2, rng=random.Random(3)), breaker_cooldown_s=0.3
    )
    sink = MemorySink()

    async def scenario():
        async with (
            running(tmp_path / "site", tmp_path / "faults.yaml", pm=pm),
            collecting(tmp_path / "plans", pm, sink=sink, config=config) as run,
        ):
            await until(lambda: through(kinds_of(sink)), lambda: f"{kinds_of(sink)}")
        return run.summary

    summary = asyncio.run(scenario())
    assert summary.unaccounted() == {}
    kinds = kinds_of(sink)
    assert len(kinds) >= 4
    assert kinds[0] == (True, False)  # before the stop
    assert any(gap for _, gap in kinds)  # while stopped
    assert kinds[-1] == (True, False)  # recovered after the restart
    assert {g.reason for g in sink.gaps()} <= {GapReason.REFUSED, GapReason.TIMEOUT}


def kinds_of(sink: MemorySink) -> list[tuple[bool, bool]]:
    """Per slot, in time order: whether it has a reading, whether it has a gap."""
    slots = sorted({r.scheduled_at for r in sink.records})
    outcome = {s: {type(r).__name__ for r in sink.records if r.scheduled_at == s} for s in slots}
    return [("Reading" in o, "Gap" in o) for o in outcome.values()]


def through(kinds: list[tuple[bool, bool]]) -> bool:
    """Four slots or more, the last with readings only, after one with a gap."""
    return len(kinds) >= 4 and kinds[-1] == (True, False) and any(g for _, g in kinds[:-1])
