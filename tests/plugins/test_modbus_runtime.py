"""Modbus at run time: the codec, and sessions reading the real simulator on loopback.

Every simulator test serves a compiled site on a free ephemeral port of
127.0.0.1 and runs under ``asyncio.run`` with an overall timeout, so the tests
run in parallel (pytest-xdist) and never hang.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import math
import socket
import struct
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any, TypeVar

import pytest
from hypothesis import given
from hypothesis import strategies as st

import plugins.modbus as modbus_plugin
from engine.errors import ConvergeError
from engine.model import Device
from engine.plans.body import PlanBody, ReadGroup, parse_group
from engine.protocols import Fault
from engine.records import Gap, GapReason, Quality, Reading, Record
from engine.testkit import ProjectBuilder
from plugins.modbus.codec import decode_group, decode_registers, encode_registers, merge_bit
from plugins.modbus.session import RETRYABLE_EXCEPTION_CODES, ModbusSession, is_retryable
from plugins.modbus.simulator import ModbusSimulator

T = TypeVar("T")
ORDERS = st.sampled_from(["big", "little"])
INT_RANGES = {
    "int16": (-(2**15), 2**15 - 1),
    "uint16": (0, 2**16 - 1),
    "int32": (-(2**31), 2**31 - 1),
    "uint32": (0, 2**32 - 1),
    "int64": (-(2**63), 2**63 - 1),
    "uint64": (0, 2**64 - 1),
}


# --- codec ------------------------------------------------------------------------------------


def holding(kind: str, register: int = 0, **extra: Any) -> dict[str, Any]:
    return {"table": "holding", "register": register, "type": kind, **extra}


@st.composite
def typed_values(draw: st.DrawFn) -> tuple[dict[str, Any], Any]:
    """An address of any register type and order, and a value of that type."""
    orders = {"byte_order": draw(ORDERS), "word_order": draw(ORDERS)}
    kind = draw(st.sampled_from([*INT_RANGES, "float32", "float64", "bool", "string"]))
    if kind in INT_RANGES:
        low, high = INT_RANGES[kind]
        return holding(kind, **orders), draw(st.integers(low, high))
    if kind == "bool":
        bit = draw(st.none() | st.integers(0, 15))
        extra = {} if bit is None else {"bit": bit}
        return holding(kind, **orders, **extra), draw(st.booleans())
    if kind == "string":
        length = draw(st.integers(1, 8))
        ascii_ = st.characters(min_codepoint=32, max_codepoint=126)
        text = draw(st.text(ascii_, max_size=2 * length).map(lambda s: s.strip(" ")))
        return holding(kind, length=length, **orders), text
    return holding(kind, **orders), draw(st.floats(allow_nan=False, width=int(kind[5:])))


@given(typed_values())
def test_decode_inverts_encode_for_every_type_and_order(case):
    address, value = case
    registers = encode_registers(address, value)
    assert all(0 <= r <= 0xFFFF for r in registers)
    decoded = decode_registers(address, registers)
    assert decoded == value
    assert type(decoded) is type(value)


@given(
    st.sampled_from([*INT_RANGES, "float32", "float64"]),
    st.integers(-30000, 30000),
    st.sampled_from([0.1, 0.5, 2, 0.0036169]),
    st.sampled_from([0, -10, 273.15]),
)
def test_scale_and_offset_round_trip_within_float_precision(kind, raw, scale, offset):
    low, _ = INT_RANGES.get(kind, (-(2**15), 0))
    value = max(raw, low) * scale + offset
    address = holding(kind, scale=scale, offset=offset)
    decoded = decode_registers(address, encode_registers(address, value))
    assert math.isclose(decoded, value, rel_tol=1e-6, abs_tol=1e-9)


def test_known_encodings_match_the_manuals():
    assert decode_registers(holding("float32"), [0x41A4, 0x0000]) == 20.5
    assert decode_registers(holding("float32", word_order="little"), [0x0000, 0x41A4]) == 20.5
    assert decode_registers(holding("uint16", byte_order="little"), [0x3412]) == 0x1234
    assert decode_registers(holding("int16"), [0xFFFF]) == -1
    assert decode_registers(holding("uint64", word_order="little"), [1, 0, 0, 0]) == 1
    assert decode_registers(holding("string", length=3), [0x4142, 0x4300, 0x0000]) == "ABC"
    assert decode_registers(holding("bool", bit=3), [0b1000]) is True
    assert decode_registers(holding("bool"), [0x0100]) is True
    assert decode_registers(holding("int16", scale=0.5, offset=-10), [40]) == 10.0


@given(st.dictionaries(st.integers(0, 15), st.booleans()), ORDERS)
def test_bits_sharing_a_register_decode_independently(bits, byte_order):
    register = 0
    for bit, on in bits.items():
        register = merge_bit(register, holding("bool", bit=bit, byte_order=byte_order), on)
    for bit, on in bits.items():
        assert decode_registers(holding("bool", bit=bit, byte_order=byte_order), [register]) is on


def test_wrong_register_count_is_a_value_error():
    group = {"table": "holding", "start": 0, "count": 2, "points": ["a"]}
    with pytest.raises(ValueError, match="expected 2 registers, got 3"):
        decode_group(group, {"a": holding("int32")}, [0, 0, 0])
    with pytest.raises(ValueError, match="expected 2 registers"):
        decode_registers(holding("float32"), [0])
    with pytest.raises(ValueError, match="16-bit"):
        decode_registers(holding("uint16"), [0x10000])


def test_bit_groups_accept_the_padding_of_the_last_byte_only():
    group = {"table": "coil", "start": 10, "count": 3, "points": ["a", "c"]}
    addresses = {"a": {"table": "coil", "register": 10}, "c": {"table": "coil", "register": 12}}
    assert decode_group(
        group, addresses, [True, False, False, False, False, False, False, False]
    ) == [True, False]
    with pytest.raises(ValueError, match="expected 3 bits"):
        decode_group(group, addresses, [True] * 9)
    with pytest.raises(ValueError, match="expected 3 bits"):
        decode_group(group, addresses, [True] * 2)


def test_values_that_do_not_fit_are_value_errors():
    with pytest.raises(ValueError, match="does not fit"):
        encode_registers(holding("uint16"), -1)
    with pytest.raises(ValueError, match="longer than 4"):
        encode_registers(holding("string", length=2), "ABCDE")
    with pytest.raises(ValueError):
        decode_registers(holding("string", length=1), [0xC3A9])  # not ASCII


@pytest.mark.parametrize(
    ("record", "retryable"),
    [
        (Gap("d", "p", datetime.now(UTC), GapReason.TIMEOUT), True),
        (Gap("d", "p", datetime.now(UTC), GapReason.REFUSED), False),
        (Gap("d", "p", datetime.now(UTC), GapReason.MALFORMED), False),
        *[
            (Gap("d", "p", datetime.now(UTC), GapReason.EXCEPTION, raw_code=c), c in {6, 10, 11})
            for c in range(1, 12)
        ],
        (Reading("d", "p", datetime.now(UTC), 1), False),
    ],
)
def test_only_timeouts_and_busy_or_gateway_exceptions_are_retryable(record, retryable):
    assert is_retryable(record) is retryable
    assert {6, 0x0A, 0x0B} == RETRYABLE_EXCEPTION_CODES


# --- a compiled site served by the simulator --------------------------------------------------

SITE = """
    site: sim-plant
    timezone: Europe/Zurich
    devices:
      - id: plc
        class: reactor
        protocol: modbus
        endpoint: {host: 127.0.0.1, port: PORT, unit: 1}
        limits: {timeout: 500ms}
        points:
          - {name: I16, address: {table: holding, register: 0, type: int16}}
          - {name: U16, address: {table: holding, register: 1, type: uint16, scale: 0.1}}
          - {name: I32, address: {table: holding, register: 2, type: int32, word_order: little}}
          - {name: U32, address: {table: holding, register: 4, type: uint32, byte_order: little}}
          - {name: I64, address: {table: holding, register: 6, type: int64}}
          - name: U64
            address: {table: holding, register: 10, type: uint64, word_order: little,
                      byte_order: little}
          - {name: F32, address: {table: holding, register: 14, type: float32}}
          - {name: F64, address: {table: holding, register: 16, type: float64, word_order: little}}
          - {name: BIT0, address: {table: holding, register: 20, type: bool, bit: 0}}
          - {name: BIT3, address: {table: holding, register: 20, type: bool, bit: 3}}
          - {name: NAME, address: {table: holding, register: 21, type: string, length: 4}}
          - {name: A30, address: {table: holding, register: 30, type: uint16}}
          - {name: A32, address: {table: holding, register: 32, type: uint16}}
          - name: LEVEL
            address: {table: input, register: 0, type: int16, scale: 0.5, offset: -10}
          - {name: TICKS, address: {table: input, register: 1, type: uint32}}
          - {name: RUN, address: {table: coil, register: 0}}
          - {name: DOOR, address: {table: discrete, register: 5}}
    """

POLICY = """
    policy: capture-all
    title: Capture all
    owner: qa
    applies:
      devices: {class: reactor}
    capture:
      every: 1s
    """

VALUES: dict[str, Any] = {
    "I16": -1234,
    "U16": 6553.5,
    "I32": -123456789,
    "U32": 3_000_000_000,
    "I64": -(2**40) - 7,
    "U64": 2**50 + 3,
    "F32": 20.5,
    "F64": math.pi,
    "BIT0": False,
    "BIT3": True,
    "NAME": "R-101",
    "A30": 30,
    "A32": 32,
    "LEVEL": 17.5,
    "RUN": True,
    "DOOR": True,
}


def value_at(device: str, point: str, t: float) -> Any:
    """Fixed values, and a counter of tenths of seconds that shows refreshing."""
    return int(t * 10) if point == "TICKS" else VALUES[point]


def free_port() -> int:
    """A port the kernel just handed out, so parallel tests never collide."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Rig:
    plan: PlanBody
    device: Device

    def groups(self, *points: str) -> list[ReadGroup]:
        return [g for g in self.plan.read_groups if set(points) & set(g.points)]

    def group(self, point: str) -> ReadGroup:
        (group,) = self.groups(point)
        return group


@pytest.fixture
def rig(converge_project: ProjectBuilder) -> Rig:
    site = SITE.replace("PORT", str(free_port()))
    files = {"policies/p.yaml": POLICY, "sites/s/site.yaml": site}
    outcome = converge_project.write(files).compile()
    outcome.assert_success()
    (device,) = outcome.compilation.project.sites[0].devices
    return Rig(outcome.plan_body("plc"), device)


def run(main: Callable[[], Awaitable[T]], timeout: float = 60) -> T:
    async def bounded() -> T:
        return await asyncio.wait_for(main(), timeout)

    return asyncio.run(bounded())


@contextlib.asynccontextmanager
async def serving(rig: Rig) -> AsyncIterator[tuple[ModbusSimulator, ModbusSession]]:
    simulator = ModbusSimulator([rig.device], value_at)
    session = ModbusSession(rig.plan)
    await simulator.start()
    try:
        await session.connect()
        yield simulator, session
    finally:
        await session.close()
        await simulator.stop()


async def read(session: ModbusSession, group: ReadGroup | dict[str, Any]) -> list[Record]:
    typed = group if isinstance(group, ReadGroup) else parse_group(group)
    return await session.read(typed, datetime.now(UTC))


def values(records: list[Record]) -> dict[str, Any]:
    assert all(isinstance(r, Reading) and r.quality is Quality.GOOD for r in records), records
    return {r.point: r.value for r in records if isinstance(r, Reading)}


def gaps(records: list[Record], reason: GapReason) -> list[Gap]:
    assert records, "no records"
    assert all(isinstance(r, Gap) and r.reason is reason for r in records), records
    return [r for r in records if isinstance(r, Gap)]


def test_every_type_reads_back_as_simulated(rig):
    async def main() -> dict[str, Any]:
        async with serving(rig) as (_, session):
            got: dict[str, Any] = {}
            for group in rig.plan.read_groups:
                records = await read(session, group)
                assert [r.point for r in records] == list(group.points)
                got |= values(records)
            return got

    got = run(main)
    expected = {**VALUES, "U16": pytest.approx(6553.5), "F64": math.pi}
    assert {k: v for k, v in got.items() if k != "TICKS"} == expected
    assert type(got["I64"]) is int
    assert type(got["U64"]) is int


def test_readings_carry_the_send_time_and_the_scheduled_slot(rig):
    scheduled = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)

    async def main() -> tuple[datetime, list[Record], datetime]:
        async with serving(rig) as (_, session):
            before = datetime.now(UTC)
            records = await session.read(rig.group("I16"), scheduled)
            return before, records, datetime.now(UTC)

    before, records, after = run(main)
    for record in records:
        assert isinstance(record, Reading)
        assert before <= record.collected_at <= after
        assert record.scheduled_at == scheduled
        assert record.raw_code is None


def test_values_are_refreshed_while_serving(rig):
    async def ticks(session: ModbusSession) -> Any:
        return values(await read(session, rig.group("TICKS")))["TICKS"]

    async def main() -> tuple[Any, Any]:
        async with serving(rig) as (_, session):
            first = second = await ticks(session)
            while second < first + 2:  # two refreshes later (run() bounds the wait)
                await asyncio.sleep(0.05)
                second = await ticks(session)
            return first, second

    first, second = run(main)
    assert second >= first + 2


def test_a_group_spanning_a_hole_is_illegal_data_address(rig):
    across = {
        "unit": 1,
        "table": "holding",
        "start": 30,
        "count": 3,
        "function": 3,
        "points": ["A30", "A32"],
        "unused": [31],
    }

    async def main() -> tuple[list[Record], list[Record]]:
        async with serving(rig) as (_, session):
            return await read(session, across), await read(session, rig.group("A30"))

    spanning, alone = run(main)
    assert [(g.point, g.raw_code) for g in gaps(spanning, GapReason.EXCEPTION)] == [
        ("A30", 2),
        ("A32", 2),
    ]
    assert not any(is_retryable(r) for r in spanning)
    assert values(alone)["A30"] == 30


def test_a_device_that_allows_holes_answers_them(rig):
    across = {
        "unit": 1,
        "table": "holding",
        "start": 30,
        "count": 3,
        "function": 3,
        "points": ["A30", "A32"],
        "unused": [31],
    }
    lenient = dataclasses.replace(
        rig.device, limits=dataclasses.replace(rig.device.limits, max_gap=4)
    )

    async def main() -> list[Record]:
        async with serving(Rig(rig.plan, lenient)) as (_, session):
            return await read(session, across)

    assert values(run(main)) == {"A30": 30, "A32": VALUES["A32"]}


def test_an_unknown_unit_is_a_gateway_exception(rig):
    other_unit = {**rig.group("I16").spec, "unit": 9}

    async def main() -> list[Record]:
        async with serving(rig) as (_, session):
            return await read(session, other_unit)

    assert {g.raw_code for g in gaps(run(main), GapReason.EXCEPTION)} == {0x0B}


def test_an_answer_too_short_for_a_point_is_malformed(rig):
    short = {
        "unit": 1,
        "table": "holding",
        "start": 2,
        "count": 1,
        "function": 3,
        "points": ["I32"],
        "unused": [],
    }

    async def main() -> list[Record]:
        async with serving(rig) as (_, session):
            return await read(session, short)

    assert gaps(run(main), GapReason.MALFORMED)[0].detail == "expected 2 registers, got 1"


def test_a_stopped_server_is_refused_and_a_restarted_one_reads_again(rig):
    group = rig.group("I16")

    async def main() -> tuple[list[Record], bool, list[Record]]:
        async with serving(rig) as (simulator, session):
            values(await read(session, group))
            await simulator.inject(Fault("stop", "plc"))
            stopped = await read(session, group)
            assert not session.connected
            with pytest.raises(OSError):
                await session.connect()
            await simulator.inject(Fault("start", "plc"))
            await session.connect()
            return stopped, session.connected, await read(session, group)

    stopped, reconnected, again = run(main)
    gaps(stopped, GapReason.REFUSED)
    assert not any(is_retryable(r) for r in stopped)
    assert reconnected
    assert values(again)["I16"] == VALUES["I16"]


def test_dropped_connections_are_refused_until_reconnected(rig):
    group = rig.group("RUN")

    async def main() -> tuple[list[Record], list[Record]]:
        async with serving(rig) as (simulator, session):
            values(await read(session, group))
            await simulator.inject(Fault("drop-connections", "plc"))
            dropped = await read(session, group)
            await session.connect()
            return dropped, await read(session, group)

    dropped, again = run(main)
    gaps(dropped, GapReason.REFUSED)
    assert values(again) == {"RUN": True}


def test_an_answer_later_than_the_timeout_is_a_timeout_and_not_the_next_answer(rig):
    group = rig.group("I16")

    async def main() -> tuple[list[Record], float, list[Record]]:
        async with serving(rig) as (simulator, session):
            await simulator.inject(Fault("delay", "plc", {"seconds": 1.0}))
            started = asyncio.get_running_loop().time()
            late = await read(session, group)
            took = asyncio.get_running_loop().time() - started
            await simulator.inject(Fault("delay", "plc", {"seconds": 0}))
            return late, took, await read(session, group)

    late, took, again = run(main)
    assert all(is_retryable(g) for g in gaps(late, GapReason.TIMEOUT))
    assert 0.45 <= took < 0.9  # limits.timeout of the plan: 500 ms
    assert values(again)["I16"] == VALUES["I16"]


def test_exception_faults_give_exception_gaps_with_the_code(rig):
    group = rig.group("I16")

    async def main() -> list[list[Record]]:
        async with serving(rig) as (simulator, session):
            answers = []
            for code in (6, 2, 0):
                await simulator.inject(Fault("exception", "plc", {"code": code}))
                answers.append(await read(session, group))
            return answers

    busy, illegal, normal = run(main)
    assert {(g.raw_code, is_retryable(g)) for g in gaps(busy, GapReason.EXCEPTION)} == {(6, True)}
    assert {(g.raw_code, is_retryable(g)) for g in gaps(illegal, GapReason.EXCEPTION)} == {
        (2, False)
    }
    assert values(normal)["I16"] == VALUES["I16"]


def test_unknown_faults_devices_and_codes_are_refused(rig):
    async def main() -> None:
        simulator = ModbusSimulator([rig.device], value_at)
        for fault in (
            Fault("malformed", "plc"),
            Fault("stop", "nope"),
            Fault("exception", "plc", {"code": 99}),
        ):
            with pytest.raises(ConvergeError):
                await simulator.inject(fault)

    run(main)


def test_subscribe_is_refused_and_close_is_idempotent(rig):
    async def main() -> None:
        session = ModbusSession(rig.plan)
        with pytest.raises(ConvergeError, match="no subscriptions"):
            await session.subscribe(rig.group("I16"), lambda record: asyncio.sleep(0))
        await session.close()
        await session.close()

    run(main)


def test_connecting_to_nothing_raises_os_error(rig):
    async def main() -> None:
        session = ModbusSession(rig.plan)  # nothing serves the port
        with pytest.raises(OSError):
            await session.connect()
        assert not session.connected
        records = await read(session, rig.group("I16"))
        gaps(records, GapReason.REFUSED)

    run(main)


def test_the_hooks_answer_for_modbus_only(rig):
    assert isinstance(modbus_plugin.plugin.converge_open_session(plan=rig.plan), ModbusSession)
    other = replace(rig.plan, device=replace(rig.plan.device, protocol="opcua"))
    assert modbus_plugin.plugin.converge_open_session(plan=other) is None
    simulator = modbus_plugin.plugin.converge_simulator(
        protocol="modbus", devices=[rig.device], value_at=value_at
    )
    assert isinstance(simulator, ModbusSimulator)
    other = modbus_plugin.plugin.converge_simulator(protocol="mqtt", devices=[], value_at=value_at)
    assert other is None


def test_the_plugin_manager_finds_the_session(rig, converge_pm):
    session = converge_pm.hook.converge_open_session(plan=rig.plan)
    assert isinstance(session, ModbusSession)


def test_float_sensor_faults_are_bad_readings_not_values(rig):
    nan = struct.unpack(">HH", struct.pack(">f", math.nan))

    async def main() -> list[Record]:
        simulator = ModbusSimulator([rig.device], value_at)
        session = ModbusSession(rig.plan)
        await simulator.start()
        try:
            sim = simulator._devices["plc"]  # poke the served registers
            sim.refresh = lambda value_at, t: None  # type: ignore[method-assign]
            sim.store.tables[(1, "holding")].update({14: nan[0], 15: nan[1]})
            await session.connect()
            return await read(session, rig.group("F32"))
        finally:
            await session.close()
            await simulator.stop()

    f32 = [r for r in run(main) if r.point == "F32"]
    assert f32 == [
        Reading(
            "plc",
            "F32",
            f32[0].collected_at,
            None,
            Quality.BAD,
            raw_code="nan",
            scheduled_at=f32[0].scheduled_at,
        )
    ]


def test_rtu_frames_over_tcp_read_and_a_timeout_drops_the_connection(converge_project):
    site = SITE.replace("PORT", f"{free_port()}, framer: rtu")
    files = {"policies/p.yaml": POLICY, "sites/s/site.yaml": site}
    outcome = converge_project.write(files).compile()
    outcome.assert_success()
    rtu = Rig(outcome.plan_body("plc"), outcome.compilation.project.sites[0].devices[0])
    assert rtu.plan.device.endpoint["framer"] == "rtu"
    group = rtu.group("F32")

    async def main() -> tuple[list[Record], list[Record], bool]:
        async with serving(rtu) as (simulator, session):
            good = await read(session, group)
            await simulator.inject(Fault("delay", "plc", {"seconds": 1.0}))
            late = await read(session, group)
            return good, late, session.connected

    good, late, connected = run(main)
    assert values(good)["F32"] == VALUES["F32"]
    gaps(late, GapReason.TIMEOUT)
    assert not connected
