"""The MQTT session and simulator against real embedded amqtt brokers.

Each test compiles a small site (one broker on a free loopback port, shared
by two devices), starts the simulator through the ``converge_simulator``
hook, opens sessions through ``converge_open_session`` and waits, with a
timeout, for the readings it expects. pytest-asyncio is not used: every
test runs its scenario with ``asyncio.run``.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import aiomqtt
import pluggy
import pytest

from engine.errors import ConvergeError
from engine.model import Device
from engine.plans.body import ReadGroup, parse_group
from engine.protocols import Fault, Simulator, ValueAt
from engine.records import Quality, Reading, Record
from engine.testkit import ProjectBuilder, plan_of
from plugins import mqtt as mqtt_plugin
from plugins.mqtt.session import MqttSession, decode
from plugins.mqtt.simulator import MqttSimulator, concrete_topic, messages

SCENARIO_TIMEOUT_S = 90.0
WAIT_S = 30.0
"""How long to wait for a reading; both generous, as a loaded machine is slow."""

SITE = """
    site: test-plant
    timezone: Europe/Zurich
    devices:
      - id: boiler
        protocol: mqtt
        endpoint: {{broker: "mqtt://127.0.0.1:{port}", client_id: converge-boiler}}
        points:
          - {{name: temp, address: {{topic: plant/boiler/telemetry, field: data.temp,
              timestamp_field: ts}}}}
          - {{name: pressure, address: {{topic: plant/boiler/telemetry, field: data.pressure}}}}
          - {{name: burner, address: {{topic: plant/+/burner}}}}
          - {{name: starts, address: {{topic: plant/boiler/starts, payload: raw}}}}
      - id: badge
        protocol: mqtt
        endpoint: {{broker: "mqtt://127.0.0.1:{port}"}}
        points:
          - {{name: last_badge, address: {{topic: gate/badge, field: id}}}}
    """

POLICY = """
    policy: utility-capture
    title: Utility capture
    owner: energy
    applies:
      devices: {protocol: mqtt}
    capture:
      every: 1s
    """

VALUES: dict[str, Any] = {
    "temp": 21.5,
    "pressure": 2,
    "burner": "on",
    "starts": 7,
    "last_badge": "B-17",
}


def value_at(device: str, point: str, t: float) -> Any:
    return VALUES[point]


@pytest.fixture(autouse=True)
def quiet_amqtt() -> Iterator[None]:
    """amqtt logs every connection and every shutdown at INFO and above."""
    loggers = [logging.getLogger(name) for name in ("amqtt", "transitions", "plugins.mqtt")]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.CRITICAL)
    yield
    for logger, level in zip(loggers, levels, strict=True):
        logger.setLevel(level)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


class Site:
    """A compiled site on a free port: its devices and plans, and the plugin hooks."""

    def __init__(self, project: ProjectBuilder, pm: pluggy.PluginManager) -> None:
        self.port = free_port()
        project.write(
            {"policies/capture.yaml": POLICY, "sites/test/site.yaml": SITE.format(port=self.port)}
        )
        outcome = project.compile()
        outcome.assert_success()
        self.devices: list[Device] = list(outcome.compilation.project.sites[0].devices)
        self.plans = {d.id: outcome.plan_body(d.id) for d in self.devices}
        self.pm = pm
        self.value_at: ValueAt = value_at

    def simulator(self) -> Simulator:
        simulator: Simulator = self.pm.hook.converge_simulator(
            protocol="mqtt", devices=self.devices, value_at=self.value_at
        )
        return simulator

    def session(self, device: str) -> MqttSession:
        session = self.pm.hook.converge_open_session(plan=self.plans[device])
        assert isinstance(session, MqttSession)
        return session

    def groups(self, device: str) -> list[ReadGroup]:
        return list(self.plans[device].read_groups)


@pytest.fixture
def site(converge_project: ProjectBuilder, converge_pm: pluggy.PluginManager) -> Site:
    return Site(converge_project, converge_pm)


class Inbox:
    """A ``deliver`` target that tests can wait on."""

    def __init__(self) -> None:
        self.records: list[Record] = []

    async def deliver(self, record: Record) -> None:
        self.records.append(record)

    async def next(
        self, want: Callable[[Reading], bool], *, since: int = 0, timeout: float = WAIT_S
    ) -> Reading:
        """The first reading from index ``since`` on that ``want`` accepts, waiting for it."""
        async with asyncio.timeout(timeout):
            while True:
                for record in self.records[since:]:
                    if isinstance(record, Reading) and want(record):
                        return record
                await asyncio.sleep(0.02)

    def mark(self) -> int:
        return len(self.records)


def point(name: str, quality: Quality = Quality.GOOD) -> Callable[[Reading], bool]:
    return lambda r: r.point == name and r.quality is quality


Opener = Callable[[str], Awaitable[tuple[MqttSession, Inbox]]]
"""Opens a connected session of a device, subscribed to all its groups, and its inbox."""
Scenario = Callable[[Simulator, Opener], Awaitable[None]]


def run(site: Site, scenario: Scenario) -> None:
    """Start the simulator, run ``scenario`` with a session opener, and clean up, with a timeout."""

    async def main() -> None:
        simulator = site.simulator()
        sessions: list[MqttSession] = []

        async def open_session(device: str) -> tuple[MqttSession, Inbox]:
            session, inbox = site.session(device), Inbox()
            sessions.append(session)
            await session.connect()
            for group in site.groups(device):
                await session.subscribe(group, inbox.deliver)
            return session, inbox

        await simulator.start()
        try:
            async with asyncio.timeout(SCENARIO_TIMEOUT_S):
                await scenario(simulator, open_session)
        finally:
            for session in sessions:
                await session.close()
            await simulator.stop()

    asyncio.run(main())


# --- against the broker ----------------------------------------------------------------------


def test_json_fields_and_payload_timestamps(site: Site) -> None:
    async def scenario(simulator: Simulator, open_session: Opener) -> None:
        _, inbox = await open_session("boiler")
        temp = await inbox.next(point("temp"))
        pressure = await inbox.next(point("pressure"))
        assert (temp.device, temp.value, pressure.value) == ("boiler", 21.5, 2)
        assert temp.source_at is not None and temp.source_at.tzinfo is not None
        assert abs(temp.collected_at - temp.source_at) < timedelta(seconds=2)
        assert temp.collected_at.utcoffset() == timedelta(0)
        assert pressure.source_at is None, "no timestamp_field: no source time"
        assert temp.scheduled_at is None and temp.raw_code is None

    run(site, scenario)


def test_raw_payloads_and_a_second_device_on_the_same_broker(site: Site) -> None:
    async def scenario(simulator: Simulator, open_session: Opener) -> None:
        _, boiler = await open_session("boiler")
        _, badge = await open_session("badge")
        assert (await boiler.next(point("starts"))).value == 7
        assert (await boiler.next(point("burner"))).value == "on"
        assert (await badge.next(point("last_badge"))).value == "B-17"
        assert {r.device for r in badge.records} == {"badge"}

    run(site, scenario)


def test_a_wildcard_subscription_takes_every_matching_topic(site: Site) -> None:
    async def scenario(simulator: Simulator, open_session: Opener) -> None:
        _, inbox = await open_session("boiler")
        await inbox.next(point("burner"))  # the simulator's concrete topic plant/boiler/burner
        async with aiomqtt.Client("127.0.0.1", site.port) as publisher:
            await publisher.publish("plant/boiler-2/burner", b"off", qos=1)
            await publisher.publish("plant/boiler-2/burner/extra", b"ignored", qos=1)
        reading = await inbox.next(lambda r: r.point == "burner" and r.value == "off")
        assert reading.quality is Quality.GOOD
        assert not [r for r in inbox.records if isinstance(r, Reading) and r.value == "ignored"]

    run(site, scenario)


def test_a_malformed_message_is_a_bad_reading_and_collection_goes_on(site: Site) -> None:
    async def scenario(simulator: Simulator, open_session: Opener) -> None:
        session, inbox = await open_session("boiler")
        await inbox.next(point("temp"))
        await simulator.inject(Fault("malformed", "boiler", {"n": 1}))
        since = inbox.mark()
        for name in ("temp", "pressure", "starts", "burner"):
            bad = await inbox.next(point(name, Quality.BAD), since=since)
            assert (bad.value, bad.raw_code, bad.source_at) == (None, "malformed", None)
        await inbox.next(point("temp"), since=inbox.mark())
        assert session.connected

    run(site, scenario)


def test_broker_loss_is_noticed_and_connect_resubscribes(site: Site) -> None:
    async def scenario(simulator: Simulator, open_session: Opener) -> None:
        session, inbox = await open_session("boiler")
        await inbox.next(point("temp"))
        await simulator.inject(Fault("stop", "boiler"))
        async with asyncio.timeout(WAIT_S):
            while session.connected:
                await asyncio.sleep(0.02)
        with pytest.raises(OSError):
            await session.connect()
        await simulator.inject(Fault("start", "boiler"))
        await session.connect()
        assert session.connected
        since = inbox.mark()
        await inbox.next(point("temp"), since=since)
        await inbox.next(point("burner"), since=since)

    run(site, scenario)


def test_a_delay_silences_the_device_until_it_is_lifted(site: Site) -> None:
    rounds: list[float] = []  # when the simulator published the boiler's rounds

    def stamped(device: str, name: str, t: float) -> Any:
        """The values, but temp (the last message of a round) says when its round was."""
        if device == "boiler" and name == "temp":
            rounds.append(t)
            return t
        return value_at(device, name, t)

    site.value_at = stamped

    async def scenario(simulator: Simulator, open_session: Opener) -> None:
        _, inbox = await open_session("boiler")
        await inbox.next(point("temp"))
        await simulator.inject(Fault("delay", "boiler", {"seconds": 30}))
        # a round already under way still arrives: the last one published before the delay
        await inbox.next(lambda r: r.point == "temp" and r.value == rounds[-1])
        since, published = inbox.mark(), len(rounds)
        await asyncio.sleep(1.1)  # two rounds' time of silence: what the test is about
        assert inbox.records[since:] == [] and len(rounds) == published
        await simulator.inject(Fault("delay", "boiler", {"seconds": 0}))
        await inbox.next(point("temp"), since=since)

    run(site, scenario)


def test_read_refuses_and_close_is_idempotent(site: Site) -> None:
    async def scenario(simulator: Simulator, open_session: Opener) -> None:
        session, _ = await open_session("boiler")
        with pytest.raises(ConvergeError, match="subscriptions"):
            await session.read(site.groups("boiler")[0], datetime.now(UTC))
        ghost = parse_group({"kind": "subscribe", "topic": "x", "qos": 1, "points": ["ghost"]})
        with pytest.raises(ConvergeError, match="no address"):
            await session.subscribe(ghost, Inbox().deliver)
        await session.close()
        await session.close()
        assert not session.connected
        with pytest.raises(ConvergeError, match="cannot inject"):
            await simulator.inject(Fault("exception", "boiler"))
        with pytest.raises(ConvergeError):
            await simulator.inject(Fault("stop", "nobody"))

    run(site, scenario)


def test_connect_without_a_broker_raises_oserror(site: Site) -> None:
    async def main() -> None:
        session = site.session("boiler")
        with pytest.raises(OSError):
            await asyncio.wait_for(session.connect(), WAIT_S)
        await session.close()

    asyncio.run(main())


def test_a_port_in_use_is_a_converge_error(site: Site) -> None:
    async def main() -> None:
        simulator = site.simulator()
        with pytest.raises(ConvergeError, match=r"cannot serve .* the port is in use"):
            await simulator.start()
        await simulator.stop()

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", site.port))
        taken.listen()
        asyncio.run(main())


def test_hooks_answer_only_for_mqtt(site: Site) -> None:
    boiler = site.plans["boiler"]
    plan = replace(boiler, device=replace(boiler.device, protocol="modbus"))
    assert mqtt_plugin.plugin.converge_open_session(plan) is None
    assert mqtt_plugin.plugin.converge_simulator("modbus", [], value_at) is None
    assert isinstance(site.session("boiler"), MqttSession)
    assert isinstance(site.simulator(), MqttSimulator)


# --- decoding, without a broker --------------------------------------------------------------

JSON = {"topic": "t", "field": "data.temp", "timestamp_field": "ts"}
TS = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    ("body", "source_at"),
    [
        (b'{"data": {"temp": 1.5}, "ts": "2026-06-01T12:00:00Z"}', TS),
        (b'{"data": {"temp": 1.5}, "ts": "2026-06-01T14:00:00+02:00"}', TS),
        (b'{"data": {"temp": 1.5}, "ts": "2026-06-01T12:00:00"}', TS),
        (b'{"data": {"temp": 1.5}, "ts": 1780315200}', TS),
        (b'{"data": {"temp": 1.5}, "ts": 1780315200000}', TS),
    ],
)
def test_json_values_and_timestamps(body: bytes, source_at: datetime) -> None:
    assert decode(JSON, body) == (1.5, source_at)


@pytest.mark.parametrize(
    ("address", "body", "value"),
    [
        ({"topic": "t"}, b"42", 42),
        ({"topic": "t"}, b" -3.25\n", -3.25),
        ({"topic": "t", "payload": "raw"}, b"running", "running"),
        ({"topic": "t"}, b"nan", "nan"),
        ({"topic": "t", "field": "ok"}, b'{"ok": true}', True),
        ({"topic": "t", "field": "v.1"}, b'{"v": [10, 20]}', 20),
        ({"topic": "t", "payload": "json"}, b'"whole"', "whole"),
    ],
)
def test_scalar_values(address: dict[str, Any], body: bytes, value: Any) -> None:
    assert decode(address, body) == (value, None)


@pytest.mark.parametrize(
    "body",
    [
        b"not json",
        b'{"data": {}}',
        b'{"data": {"temp": {"nested": 1}}, "ts": 0}',
        b'{"data": {"temp": [1]}, "ts": 0}',
        b'{"data": {"temp": null}, "ts": 0}',
        b'{"data": {"temp": NaN}, "ts": 0}',
        b'{"data": {"temp": 1}}',
        b'{"data": {"temp": 1}, "ts": "yesterday"}',
        b'{"data": {"temp": 1}, "ts": true}',
        b"\xff",
    ],
)
def test_malformed_messages(body: bytes) -> None:
    session = MqttSession(
        plan_of(
            {
                "device": {"id": "d", "endpoint": {"broker": "mqtt://127.0.0.1"}},
                "points": [{"name": "p", "address": JSON}],
            }
        )
    )
    reading = session._reading("p", JSON, body, TS)
    assert reading == Reading("d", "p", TS, None, Quality.BAD, raw_code="malformed")


def test_simulated_messages_share_one_document_per_topic(site: Site) -> None:
    boiler = next(d for d in site.devices if d.id == "boiler")
    sent = dict(messages(boiler, value_at, 0.0, TS))
    assert sent["plant/boiler/telemetry"] == (
        b'{"data": {"temp": 21.5, "pressure": 2}, "ts": "2026-06-01T12:00:00+00:00"}'
    )
    assert sent["plant/boiler/burner"] == b"on"
    assert sent["plant/boiler/starts"] == b"7"
    assert concrete_topic("a/+/b/#", "dev", "pt") == "a/dev/b/pt"
