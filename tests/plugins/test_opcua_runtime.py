"""OPC UA sessions against the real simulator: asyncua server and client on loopback.

Every test starts its own simulator on a free ephemeral port (tests run in
parallel under pytest-xdist) and runs under a hard time limit.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import socket
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator, Sequence
from datetime import UTC, datetime
from typing import Any

import pytest
from asyncua import ua
from plugin_builders import device, planned

from engine.errors import ConvergeError
from engine.model import PlannedPoint
from engine.plans.body import ReadGroup, parse_group
from engine.plugin_manager import make_plugin_manager
from engine.protocols import Fault
from engine.records import Gap, GapReason, Quality, Reading, Record, Value
from engine.testkit import plan_of
from plugins.opcua.plan import plan_read_groups
from plugins.opcua.session import OpcUaSession, record_of
from plugins.opcua.simulator import OpcUaSimulator

TEST_LIMIT_S = 90
"""Generous: starting a server takes seconds of CPU, more on a loaded machine."""
BAD_SENSOR_FAILURE = 0x808C0000  # ua.StatusCodes.BadSensorFailure


@pytest.fixture(autouse=True)
def quiet_asyncua():
    """asyncua logs every lost connection as a warning or a stack trace."""
    logger = logging.getLogger("asyncua")
    level = logger.level
    logger.setLevel(logging.CRITICAL)
    yield
    logger.setLevel(level)


def run(test: Coroutine[Any, Any, None]) -> None:
    asyncio.run(asyncio.wait_for(test, TEST_LIMIT_S))


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def wiggle(t: float) -> float:
    """0.1 up and down every tick (100 ms), and a jump of 5 every half second."""
    return 0.1 * (int(t * 10) % 2) + 5.0 * int(t / 0.5)


VALUES: dict[str, Callable[[float], Value]] = {
    "PT": lambda t: 4.25,
    "COUNT": lambda t: 7,
    "STATE": lambda t: "running",
    "DOOR": lambda t: True,
    "WIGGLE": wiggle,
    "WIGGLE_ALL": wiggle,
}


def value_at(device_id: str, point: str, t: float) -> Value:
    return VALUES[point](t)


READ_POINTS = [
    planned("PT", {"node": "ns=2;s=Filler2.PT201.PV"}),
    planned("COUNT", {"node": "ns=2;i=6017"}),
    planned("STATE", {"node": "ns=3;s=State"}),
    planned("DOOR", {"node": "ns=2;s=Door"}),
    planned("SERVER_STATE", {"node": "i=2259"}),
]
SUBSCRIBED_POINTS = [
    planned("WIGGLE", {"node": "ns=2;s=Wiggle"}, every_ms=100, deadband=1.0),
    planned("WIGGLE_ALL", {"node": "ns=2;s=WiggleAll", "mode": "subscribe"}, every_ms=100),
]


@contextlib.asynccontextmanager
async def running(
    points: Sequence[PlannedPoint], **limits: Any
) -> AsyncIterator[tuple[OpcUaSimulator, OpcUaSession, list[ReadGroup]]]:
    """A simulator serving ``points`` and a connected session with the plan of its device."""
    endpoint = {"url": f"opc.tcp://127.0.0.1:{free_port()}/", "security_mode": "None"}
    dev = device("opcua", points, endpoint, **limits)
    plan = plan_of(
        {
            "device": {
                "id": dev.id,
                "protocol": "opcua",
                "endpoint": endpoint,
                "limits": dev.limits.as_plan(),
            },
            "read_groups": plan_read_groups(dev, points).groups,
        }
    )
    groups = list(plan.read_groups)
    simulator = OpcUaSimulator([dev], value_at)
    session = OpcUaSession(plan)
    await simulator.start()
    try:
        await session.connect()
        yield simulator, session, groups
    finally:
        await session.close()
        await simulator.stop()


def group_of(groups: list[ReadGroup], point: str) -> ReadGroup:
    return next(g for g in groups if point in g.points)


async def until(condition: Callable[[], bool], timeout: float = 30.0) -> None:
    async with asyncio.timeout(timeout):
        while not condition():
            await asyncio.sleep(0.05)


def at() -> datetime:
    return datetime.now(UTC)


def readings(records: Sequence[Record]) -> list[Reading]:
    assert all(isinstance(r, Reading) for r in records), records
    return [r for r in records if isinstance(r, Reading)]


# --- reads ------------------------------------------------------------------------------


def test_bulk_read_returns_values_both_timestamps_and_good():
    async def test() -> None:
        async with running(READ_POINTS) as (_, session, groups):
            scheduled = at()
            records = readings(await session.read(group_of(groups, "PT"), scheduled))
        assert [(r.point, r.value) for r in records] == [
            ("PT", 4.25),
            ("COUNT", 7),
            ("STATE", "running"),
            ("DOOR", True),
            ("SERVER_STATE", 0),  # ServerState.Running, served by the server itself
        ]
        for r in records:
            assert (r.device, r.quality, r.raw_code, r.scheduled_at) == (
                "dev-1",
                Quality.GOOD,
                0,
                scheduled,
            )
            assert r.source_at is not None and r.source_at.tzinfo is not None
            assert r.server_at is not None and r.server_at.tzinfo is not None
            assert r.collected_at >= scheduled

    run(test())


def test_bad_status_gives_bad_readings_without_value_until_code_0():
    async def test() -> None:
        async with running(READ_POINTS[:2]) as (simulator, session, groups):
            group = group_of(groups, "PT")

            async def read_until(quality: Quality) -> list[Reading]:
                """Read until the simulator's next update (every 100 ms) made every point so."""
                async with asyncio.timeout(30):
                    while True:
                        got = readings(await session.read(group, at()))
                        if all(r.quality is quality for r in got):
                            return got
                        await asyncio.sleep(0.05)

            await simulator.inject(Fault("bad-status", "dev-1", {"code": "BadSensorFailure"}))
            bad = await read_until(Quality.BAD)
            await simulator.inject(Fault("bad-status", "dev-1", {"code": 0}))
            good = await read_until(Quality.GOOD)
        assert [(r.point, r.value, r.quality, r.raw_code) for r in bad] == [
            ("PT", None, Quality.BAD, BAD_SENSOR_FAILURE),
            ("COUNT", None, Quality.BAD, BAD_SENSOR_FAILURE),
        ]
        assert [(r.value, r.quality) for r in good] == [(4.25, Quality.GOOD), (7, Quality.GOOD)]

    run(test())


def test_uncertain_status_keeps_the_value():
    data = ua.DataValue(
        ua.Variant(1.5),
        ua.StatusCode(ua.UInt32(0x40000000)),  # Uncertain
    )
    record = record_of("dev-1", "PT", data, at(), None)
    assert isinstance(record, Reading)
    assert (record.value, record.quality, record.raw_code) == (1.5, Quality.UNCERTAIN, 0x40000000)


def test_a_value_that_is_no_scalar_is_a_malformed_gap():
    scheduled = at()
    data = ua.DataValue(ua.Variant([1.0, 2.0]))
    record = record_of("dev-1", "PT", data, at(), scheduled)
    assert isinstance(record, Gap)
    assert (record.reason, record.scheduled_at) == (GapReason.MALFORMED, scheduled)


@contextlib.contextmanager
def late_answers() -> Iterator[list[logging.LogRecord]]:
    """The warnings asyncua logs when an answer comes after its request timed out."""
    logger = logging.getLogger("asyncua.client.ua_client.UASocketProtocol")
    late: list[logging.LogRecord] = []

    class Late(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            if "is already done" in record.getMessage():
                late.append(record)

    handler, level, propagate = Late(), logger.level, logger.propagate
    logger.addHandler(handler)
    logger.setLevel(logging.WARNING)
    logger.propagate = False
    try:
        yield late
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
        logger.propagate = propagate


def test_delay_longer_than_the_timeout_gives_timeout_gaps():
    async def test() -> None:
        async with running(READ_POINTS[:2], timeout_ms=300) as (simulator, session, groups):
            group = group_of(groups, "PT")
            await simulator.inject(Fault("delay", "dev-1", {"seconds": 0.6}))
            with late_answers() as late:
                slow = await session.read(group, at())
                await simulator.inject(Fault("delay", "dev-1", {"seconds": 0}))
                # a request now would wait behind the late answer: wait for that to arrive
                await until(lambda: bool(late))
            await session.connect()
            fast = readings(await session.read(group, at()))
        assert [(r.point, r.reason) for r in slow if isinstance(r, Gap)] == [
            ("PT", GapReason.TIMEOUT),
            ("COUNT", GapReason.TIMEOUT),
        ]
        assert [r.quality for r in fast] == [Quality.GOOD, Quality.GOOD]

    run(test())


# --- subscriptions ----------------------------------------------------------------------


def test_subscription_delivers_changes_and_respects_the_deadband():
    async def test() -> None:
        got: dict[str, list[Reading]] = {"WIGGLE": [], "WIGGLE_ALL": []}

        async def deliver(record: Record) -> None:
            assert isinstance(record, Reading), record
            got[record.point].append(record)

        async with running(SUBSCRIBED_POINTS) as (_, session, groups):
            assert group_of(groups, "WIGGLE").spec["deadband"] == 1.0
            assert "deadband" not in group_of(groups, "WIGGLE_ALL").spec
            for group in groups:
                await session.subscribe(group, deliver)
            await until(lambda: len(got["WIGGLE"]) >= 4 and len(got["WIGGLE_ALL"]) >= 4)
        assert all(r.quality is Quality.GOOD and r.scheduled_at is None for r in got["WIGGLE"])
        assert all(r.source_at is not None for r in got["WIGGLE"])
        assert min(steps(got["WIGGLE"])) > 1.0  # the 0.1 wiggles are filtered out
        assert min(steps(got["WIGGLE_ALL"])) < 1.0  # without a deadband they are not

    run(test())


def steps(records: Sequence[Reading]) -> list[float]:
    values = [float(r.value) for r in records if isinstance(r.value, float)]
    return [abs(b - a) for a, b in itertools.pairwise(values)]


# --- connection loss and recovery -------------------------------------------------------


def test_server_stop_gives_refused_gaps_and_reconnect_recovers_reads_and_subscription():
    async def test() -> None:
        got: list[Record] = []

        async def deliver(record: Record) -> None:
            got.append(record)

        async with running([*READ_POINTS[:2], *SUBSCRIBED_POINTS[1:]]) as (sim, session, groups):
            await session.subscribe(group_of(groups, "WIGGLE_ALL"), deliver)
            await until(lambda: len(got) >= 2)
            await sim.inject(Fault("stop", "dev-1"))
            stopped = await session.read(group_of(groups, "PT"), at())
            assert not session.connected
            with pytest.raises(OSError):
                await session.connect()
            await sim.inject(Fault("start", "dev-1"))
            await session.connect()
            seen = len(got)
            restarted = readings(await session.read(group_of(groups, "PT"), at()))
            await until(lambda: len(got) >= seen + 2)
        assert [(r.point, r.reason) for r in stopped if isinstance(r, Gap)] == [
            ("PT", GapReason.REFUSED),
            ("COUNT", GapReason.REFUSED),
        ]
        good = [(4.25, Quality.GOOD), (7, Quality.GOOD)]
        assert [(r.value, r.quality) for r in restarted] == good
        assert all(isinstance(r, Reading) and r.point == "WIGGLE_ALL" for r in got[seen:])

    run(test())


def test_read_before_connect_is_refused_and_close_is_idempotent():
    async def test() -> None:
        plan = plan_of(
            {
                "device": {
                    "id": "dev-1",
                    "protocol": "opcua",
                    "endpoint": {"url": f"opc.tcp://127.0.0.1:{free_port()}/"},
                }
            }
        )
        session = OpcUaSession(plan)
        group = parse_group({"kind": "read", "nodes": ["ns=2;i=1"], "points": ["P"]})
        records = await session.read(group, at())
        assert [(r.point, r.reason) for r in records if isinstance(r, Gap)] == [
            ("P", GapReason.REFUSED)
        ]
        with pytest.raises(OSError):
            await session.connect()  # nothing listens
        await session.close()
        await session.close()

    run(test())


# --- simulator faults and hooks ---------------------------------------------------------


def test_unknown_fault_kind_or_device_is_an_error():
    async def test() -> None:
        dev = device("opcua", READ_POINTS[:1], {"url": "opc.tcp://127.0.0.1:4840/"})
        simulator = OpcUaSimulator([dev], value_at)
        with pytest.raises(ConvergeError, match="no fault 'malformed'"):
            await simulator.inject(Fault("malformed", "dev-1"))
        with pytest.raises(ConvergeError, match="does not serve"):
            await simulator.inject(Fault("stop", "other"))
        with pytest.raises(ConvergeError, match="not an OPC UA status code"):
            await simulator.inject(Fault("bad-status", "dev-1", {"code": "BadNonsense"}))

    run(test())


def test_hooks_make_sessions_and_simulators_for_opcua_only():
    pm = make_plugin_manager()
    plan = plan_of(
        {"device": {"id": "d", "protocol": "opcua", "endpoint": {"url": "opc.tcp://h:1/"}}}
    )
    assert isinstance(pm.hook.converge_open_session(plan=plan), OpcUaSession)
    dev = device("opcua", READ_POINTS[:1], {"url": "opc.tcp://127.0.0.1:4840/"})
    simulator = pm.hook.converge_simulator(protocol="opcua", devices=[dev], value_at=value_at)
    assert isinstance(simulator, OpcUaSimulator)
