"""The conformance kit's run-time scenarios and the checks of what they produce."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable, Coroutine, Mapping, Sequence
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from engine.conformance.target import (
    BIT_TABLES,
    CHECK_LIMIT_S,
    DELAY_S,
    POLL_S,
    TIMEOUT_MS,
    WAIT_S,
    Problems,
    Target,
    same_value,
)
from engine.errors import ConvergeError
from engine.model import Device, Limits
from engine.plans.body import PlanBody, ReadGroup
from engine.protocols import Fault, Session, Simulator
from engine.records import Gap, GapReason, Quality, Reading, Record

# --- record checks -------------------------------------------------------------------------


def groups_of(plan: PlanBody, kind: str) -> list[ReadGroup]:
    return [g for g in plan.read_groups if g.kind == kind]


def addresses(plan: PlanBody) -> dict[str, Mapping[str, Any]]:
    return {p.name: p.address for p in plan.points}


def is_utc(moment: object) -> bool:
    return isinstance(moment, datetime) and moment.utcoffset() == timedelta(0)


def reading_problems(target: Target, plan: PlanBody, record: object) -> Problems:
    """A good reading of the plan's device, in UTC, with the kit's value when simulated."""
    device = plan.device.id
    if not isinstance(record, Reading):
        return [f"{device}: want a Reading, got {record!r}"]
    where = f"{device}/{record.point}"
    problems = [] if record.device == device else [f"{where}: device is {record.device!r}"]
    if not is_utc(record.collected_at):
        problems.append(f"{where}: collected_at {record.collected_at!r} is not aware UTC")
    if not isinstance(record.quality, Quality):
        problems.append(f"{where}: quality {record.quality!r} is not a Quality")
    if target.simulated:
        problems += _value_problems(target, plan, record, where)
    return problems


def _value_problems(target: Target, plan: PlanBody, r: Reading, where: str) -> Problems:
    want = target.values.get((r.device, r.point))
    if r.quality is not Quality.GOOD:
        return [f"{where}: quality {r.quality} (raw code {r.raw_code!r}), want good"]
    if not same_value(r.value, want, addresses(plan).get(r.point, {})):
        return [f"{where}: value {r.value!r}, the simulator serves {want!r}"]
    return []


def in_order(plan: PlanBody, group: ReadGroup, records: Sequence[Record]) -> Problems:
    got, want = [r.point for r in records], list(group.points)
    if got == want:
        return []
    return [
        f"{plan.device.id}: want one record per point of the group, in its order {want}; got {got}"
    ]


def gap_problems(
    plan: PlanBody,
    group: ReadGroup,
    records: Sequence[Record],
    scheduled_at: datetime,
    reasons: Sequence[GapReason],
) -> Problems:
    """One gap per point of the group, each naming device, point, slot and one of ``reasons``."""
    device = plan.device.id
    problems = in_order(plan, group, records)
    for r in records:
        if not isinstance(r, Gap):
            problems.append(f"{device}/{r.point}: want a gap ({'/'.join(reasons)}), got {r!r}")
        elif r.device != device or r.scheduled_at != scheduled_at or r.reason not in reasons:
            problems.append(
                f"{device}/{r.point}: want a gap of {device} at {scheduled_at} "
                f"with reason {'/'.join(reasons)}, got {r!r}"
            )
    return problems


def all_gaps(records: Sequence[Record], reasons: Sequence[GapReason]) -> bool:
    return bool(records) and all(isinstance(r, Gap) and r.reason in reasons for r in records)


# --- running servers and sessions ----------------------------------------------------------


def run(scenario: Coroutine[Any, Any, Problems]) -> Problems:
    async def limited() -> Problems:
        return await asyncio.wait_for(scenario, CHECK_LIMIT_S)

    return asyncio.run(limited())


@contextlib.asynccontextmanager
async def serving(target: Target) -> AsyncIterator[Simulator | None]:
    """The plugin's simulator serving the site, or nothing against an external server."""
    if not target.simulated:
        yield None
        return
    simulator = target.simulator()
    await simulator.start()
    try:
        yield simulator
    finally:
        await simulator.stop()


@contextlib.asynccontextmanager
async def connected(target: Target, plan: PlanBody) -> AsyncIterator[Session]:
    session = target.session(plan)
    try:
        await session.connect()
        yield session
    finally:
        await session.close()


async def inject(simulator: Simulator | None, fault: Fault) -> None:
    """Apply a fault; a simulator without it skips the check."""
    assert simulator is not None
    try:
        await simulator.inject(fault)
    except ConvergeError as error:
        pytest.skip(f"the simulator has no '{fault.kind}' fault: {error}")


async def until(condition: Callable[[], bool], seconds: float = WAIT_S) -> bool:
    deadline = asyncio.get_running_loop().time() + seconds
    while not condition():
        if asyncio.get_running_loop().time() > deadline:
            return False
        await asyncio.sleep(POLL_S)
    return True


def now() -> datetime:
    return datetime.now(UTC).replace(microsecond=0)


class Subscriber:
    """Subscribes every subscription group of a plan and keeps what is delivered."""

    def __init__(self, plan: PlanBody) -> None:
        self.groups = groups_of(plan, "subscribe")
        self.points = {p for g in self.groups for p in g.points}
        self.records: list[Record] = []

    async def deliver(self, record: Record) -> None:
        self.records.append(record)

    async def subscribe(self, session: Session) -> None:
        for group in self.groups:
            await session.subscribe(group, self.deliver)

    def latest(self, since: int = 0) -> dict[str, Reading]:
        return {r.point: r for r in self.records[since:] if isinstance(r, Reading)}

    async def wait(self, since: int = 0) -> Problems:
        if await until(lambda: self.points <= set(self.latest(since))):
            return []
        missing = sorted(self.points - set(self.latest(since)))
        return [f"no reading within {WAIT_S:g} s for {', '.join(missing)}"]


# --- plan checks ---------------------------------------------------------------------------


def coverage_problem(device: Device, plans: Sequence[PlanBody]) -> str:
    plan = next((p for p in plans if p.device.id == device.id), None)
    if plan is None:
        return f"{device.id}: no plan, though the kit's policy governs every point"
    read = [name for g in plan.read_groups for name in g.points]
    want = sorted(p.name for p in device.points)
    if sorted(read) == want:
        return ""
    return f"{device.id}: the groups read {sorted(read)}; want every point once: {want}"


def limit_problems(plan: PlanBody) -> Problems:
    """Each group within the device's limits: ``count`` of ``start``/``count`` groups,
    ``nodes`` and ``registers`` lists."""
    limits, problems = plan.device.limits, []
    for index, group in enumerate(plan.read_groups):
        for what, size, limit in _sizes(group.spec, limits):
            if limit is not None and size > limit:
                problems.append(
                    f"{plan.device.id} group {index}: {what} {size} "
                    f"exceeds the device limit {limit}"
                )
    return problems


def _sizes(group: Mapping[str, Any], limits: Limits) -> list[tuple[str, int, Any]]:
    sizes: list[tuple[str, int, Any]] = []
    if "count" in group:
        name = "max_bits_per_read" if group.get("table") in BIT_TABLES else "max_registers_per_read"
        sizes.append((f"count ({name})", int(group["count"]), getattr(limits, name)))
    if isinstance(group.get("nodes"), list):
        sizes.append(("nodes", len(group["nodes"]), limits.max_nodes_per_read))
    if isinstance(group.get("registers"), list):
        sizes.append(("registers", len(group["registers"]), limits.max_registers_per_read))
    return sizes


# --- run-time scenarios --------------------------------------------------------------------


async def read_every_group(target: Target) -> Problems:
    problems: Problems = []
    async with serving(target):
        for plan in target.plans:
            if groups_of(plan, "read"):
                async with connected(target, plan) as session:
                    problems += await read_groups(target, plan, session)
    return problems


async def read_groups(target: Target, plan: PlanBody, session: Session) -> Problems:
    problems: Problems = []
    for group in groups_of(plan, "read"):
        records = await session.read(group, now())
        problems += in_order(plan, group, records)
        problems += [p for r in records for p in reading_problems(target, plan, r)]
    return problems


async def subscribe_every_group(target: Target) -> Problems:
    problems: Problems = []
    async with serving(target):
        for plan in target.plans:
            subscriber = Subscriber(plan)
            if subscriber.groups:
                async with connected(target, plan) as session:
                    await subscriber.subscribe(session)
                    problems += await subscriber.wait()
                    latest = subscriber.latest().values()
                    problems += [p for r in latest for p in reading_problems(target, plan, r)]
    return problems


async def timeout_scenario(target: Target, plan: PlanBody) -> Problems:
    """A read the server answers after the timeout: a ``timeout`` gap per point."""
    limits = replace(plan.device.limits, timeout_ms=TIMEOUT_MS)
    plan = replace(plan, device=replace(plan.device, limits=limits))
    device, group = plan.device.id, groups_of(plan, "read")[0]
    async with serving(target) as simulator, connected(target, plan) as session:
        await inject(simulator, Fault("delay", device, {"seconds": DELAY_S}))
        try:
            scheduled_at = now()
            records = await session.read(group, scheduled_at)
        finally:
            await inject(simulator, Fault("delay", device, {"seconds": 0}))
    return gap_problems(plan, group, records, scheduled_at, [GapReason.TIMEOUT])


DOWN = (GapReason.REFUSED, GapReason.TIMEOUT)


async def reconnect_scenario(target: Target, plan: PlanBody) -> Problems:
    """Good, server stopped (gaps or disconnected), server started, connect(): good again."""
    device = plan.device.id
    probe = Probe(target, plan)
    async with serving(target) as simulator:
        try:
            await probe.session.connect()
            problems = await probe.good("before the stop")
            await inject(simulator, Fault("stop", device))
            problems += await probe.down()
            await inject(simulator, Fault("start", device))
            problems += await probe.reconnect()
        finally:
            await probe.session.close()
    return problems


class Probe:
    """One device as the collector drives it: its first read group, or its subscriptions."""

    def __init__(self, target: Target, plan: PlanBody) -> None:
        self.target, self.plan = target, plan
        self.session = target.session(plan)
        reads = groups_of(plan, "read")
        self.group = reads[0] if reads else None
        self.subscriber = Subscriber(plan)
        self.subscribed = False

    async def good(self, when: str) -> Problems:
        if self.group is None:
            return await self._delivered(when)
        records = await self.session.read(self.group, now())
        problems = in_order(self.plan, self.group, records)
        problems += [p for r in records for p in reading_problems(self.target, self.plan, r)]
        return [f"{when}: {p}" for p in problems]

    async def _delivered(self, when: str) -> Problems:
        if not self.subscribed:
            await self.subscriber.subscribe(self.session)
            self.subscribed = True
        since = len(self.subscriber.records)
        return [f"{when}: {p}" for p in await self.subscriber.wait(since)]

    async def down(self) -> Problems:
        """Wait until the session says it is disconnected or a read gives gaps."""
        result: Problems = []

        async def shows_it() -> bool:
            if not self.session.connected:
                return True
            if self.group is None:
                return False
            scheduled_at = now()
            records = await self.session.read(self.group, scheduled_at)
            if all_gaps(records, DOWN):
                result.extend(gap_problems(self.plan, self.group, records, scheduled_at, DOWN))
                return True
            return False

        if await until_async(shows_it):
            return result
        return [f"after 'stop': still connected and reading for {WAIT_S:g} s"]

    async def reconnect(self) -> Problems:
        """``connect()`` as the collector does, until it succeeds; then good records."""

        async def reconnected() -> bool:
            try:
                await self.session.connect()
            except (OSError, TimeoutError, ConvergeError):
                return False
            if self.group is None:
                return True
            return not all_gaps(await self.session.read(self.group, now()), DOWN)

        if not await until_async(reconnected):
            return [f"after 'start': connect() and a read did not succeed within {WAIT_S:g} s"]
        return await self.good("after the restart")


async def until_async(condition: Callable[[], Coroutine[Any, Any, bool]]) -> bool:
    deadline = asyncio.get_running_loop().time() + WAIT_S
    while not await condition():
        if asyncio.get_running_loop().time() > deadline:
            return False
        await asyncio.sleep(POLL_S)
    return True
