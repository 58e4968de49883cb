"""When samples are due: aligned intervals, cron in the site's time zone, and the clock.

Times inside the collector are integer milliseconds since the Unix epoch
(UTC). An ``every_ms`` schedule has its slots at whole multiples of the
interval (slot k is at ``k * every_ms``), so that every collector, restarted
or not, samples at the same instants. A cron schedule fires at the wall-clock
times of its expression in the plan's ``timezone``; across a DST change a
time that does not exist fires at the first instant after the gap, and a
fixed-hour job fires once, not twice, in the hour that repeats (as
Vixie cron does); jobs whose hour is ``*`` fire in both repeated hours,
since those are different real hours.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TypeVar
from zoneinfo import ZoneInfo

from croniter import croniter

from engine.plans.body import PlanBody, PlanPoint, ReadGroup

T = TypeVar("T")


class Clock:
    """Wall time for schedules and records; tests inject a faster or shifted one."""

    speed = 1.0
    """Clock seconds per real second."""

    def now(self) -> float:
        """Seconds since the epoch, UTC."""
        return time.time()

    def now_ms(self) -> int:
        return int(self.now() * 1000)

    def real(self, seconds: float) -> float:
        """Real seconds that ``seconds`` of this clock take."""
        return max(0.0, seconds / self.speed)

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(self.real(seconds))

    async def sleep_until(self, at_ms: int) -> None:
        await self.sleep((at_ms - self.now_ms()) / 1000)

    async def wait_for(self, awaitable: Awaitable[T], seconds: float) -> T:
        """``awaitable`` with a timeout in clock seconds; raises :class:`TimeoutError`.

        ``asyncio.timeout``, not ``asyncio.wait_for``: on Python 3.11 the latter can
        swallow a cancellation that arrives as the awaitable completes (CPython
        gh-86296), and a device task that loses its cancellation never stops: the run
        then hangs at its end.
        """
        async with asyncio.timeout(self.real(seconds)):
            return await awaitable


class ScaledClock(Clock):
    """A clock that starts at ``start`` (epoch seconds) and runs ``speed`` times as fast."""

    def __init__(self, start: float, speed: float = 1.0) -> None:
        self.start = start
        self.speed = speed
        self.origin = time.monotonic()

    def now(self) -> float:
        return self.start + (time.monotonic() - self.origin) * self.speed


def to_datetime(ms: int) -> datetime:
    return datetime.fromtimestamp(ms / 1000, UTC)


def interval_slot(now_ms: int, every_ms: int) -> int:
    """The slot a sample taken at ``now_ms`` belongs to: ``floor(now / every) * every``."""
    return now_ms // every_ms * every_ms


def next_cron(expression: str, timezone: ZoneInfo, after_ms: int) -> int:
    """The first fire of ``expression`` strictly after ``after_ms``, in ``timezone``."""
    start = datetime.fromtimestamp(after_ms / 1000, timezone)
    fixed_hour = expression.split()[1] != "*"
    iterator = croniter(expression, start)
    while True:
        fire: datetime = iterator.get_next(datetime)
        fire = fire.astimezone(timezone)
        if not (fixed_hour and _second_of_repeated(fire, timezone)):
            return int(fire.timestamp() * 1000)


def _second_of_repeated(fire: datetime, timezone: ZoneInfo) -> bool:
    """Whether ``fire`` is the later of two instants with the same wall-clock time."""
    wall = fire.replace(tzinfo=None)
    first = wall.replace(tzinfo=timezone, fold=0)
    return first.utcoffset() != fire.utcoffset() and first.timestamp() < fire.timestamp()


@dataclass(frozen=True)
class Schedule:
    """The instants a read group is due: aligned interval slots, cron fires, or both."""

    every_ms: int | None
    cron: tuple[str, ...]
    timezone: ZoneInfo

    def next_after(self, after_ms: int) -> int:
        """The first due instant strictly after ``after_ms``."""
        candidates = [next_cron(c, self.timezone, after_ms) for c in self.cron]
        if self.every_ms:
            candidates.append(interval_slot(after_ms, self.every_ms) + self.every_ms)
        return min(candidates)

    def first_at_or_after(self, at_ms: int) -> int:
        return self.next_after(at_ms - 1)

    def span(self, since_ms: int, until_ms: int) -> tuple[int, int, int] | None:
        """The first and the last slot in ``[since_ms, until_ms)`` and how many it holds
        (``None``: none). Interval slots are counted, cron fires walked one by one."""
        first = self.first_at_or_after(since_ms)
        if first >= until_ms:
            return None
        if not self.cron and self.every_ms:
            last = interval_slot(until_ms - 1, self.every_ms)
            return first, last, (last - first) // self.every_ms + 1
        last, count, slot = first, 1, self.next_after(first)
        while slot < until_ms:
            last, count, slot = slot, count + 1, self.next_after(slot)
        return first, last, count


@dataclass(frozen=True)
class Slots:
    """Points of one read group that share their slots: a polled group's points, or the
    subscribed points of a group that are captured alike."""

    points: tuple[str, ...]
    schedule: Schedule
    group: ReadGroup


def group_schedule(
    group: ReadGroup, points: Mapping[str, PlanPoint], timezone: str, fallback_ms: int
) -> Schedule:
    """A group's schedule: its own ``every_ms``/``cron``, else the union of its points'.

    A group is due when any of its points is due; planners group points by
    schedule, so in practice the group carries it. A group with neither
    (on-change-only points of a polled protocol) is polled every ``fallback_ms``.
    """
    captures = [points[name].capture for name in group.points]
    every = group.every_ms or _min([c.every_ms for c in captures])
    cron = group.cron or tuple(sorted({e for c in captures for e in c.cron}))
    if not every and not cron:
        every = fallback_ms
    return Schedule(every, cron, ZoneInfo(timezone))


def plan_slots(plan: PlanBody, fallback_ms: int) -> list[Slots]:
    """Every point of ``plan`` that has slots, with its schedule, in plan order.

    A polled group's points share the group's schedule (:func:`group_schedule`). A
    subscribed point has the slots of its own ``capture`` (``every_ms``, ``cron``) and
    none without either: on change only, it promises no value at any instant.
    """
    zone = ZoneInfo(plan.timezone)
    found: list[Slots] = []
    for group in plan.read_groups:
        if group.polled:
            schedule = group_schedule(group, plan.point, plan.timezone, fallback_ms)
            found.append(Slots(group.points, schedule, group))
            continue
        alike: dict[tuple[int | None, tuple[str, ...]], list[str]] = {}
        for name in group.points:
            capture = plan.point[name].capture
            if capture.every_ms or capture.cron:
                alike.setdefault((capture.every_ms, capture.cron), []).append(name)
        for (every, cron), names in alike.items():
            found.append(Slots(tuple(names), Schedule(every, cron, zone), group))
    return found


def _min(values: Sequence[int | None]) -> int | None:
    present = [v for v in values if v]
    return min(present) if present else None
