"""The polling loop of one device: scheduled samples, and on-change polls between them.

At each instant the device is due, every read group scheduled then is
sampled, one request each, in plan order. Groups with ``on_change`` points
are also polled between their samples (see :mod:`engine.collect.onchange`),
when that costs no scheduled sample. Every task of the run waits for its
instants at the run's :class:`~engine.collect.gate.SlotGate`, so all requests
of a slot leave before any answer is read.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterable

from engine.collect.backfill import STARTING, not_taken
from engine.collect.link import Sampler, gaps
from engine.collect.onchange import ChangeFilter, deadbands, probe_interval_ms
from engine.collect.runtime import Runtime
from engine.collect.scheduler import Schedule, Slots, group_schedule, interval_slot
from engine.collect.status import DeviceStats
from engine.plans.body import PlanBody, ReadGroup
from engine.records import GapReason, Record

Emit = Callable[[Iterable[Record], bool], Awaitable[None]]
"""``emit(records, scheduled)``: queue records; ``scheduled`` when they are samples."""
NEVER = 2**62


class Poller:
    def __init__(
        self, plan: PlanBody, sampler: Sampler, rt: Runtime, stats: DeviceStats, emit: Emit
    ) -> None:
        self.device, self.sampler, self.rt, self.stats = sampler.device, sampler, rt, stats
        self.emit = emit
        self.close_after_cycle = plan.device.limits.close_after_cycle
        self.groups: list[tuple[ReadGroup, Schedule]] = [
            (g, group_schedule(g, plan.point, plan.timezone, rt.config.fallback_every_ms))
            for g in plan.read_groups
            if g.polled
        ]
        self.changes = ChangeFilter(deadbands(plan))
        self.probe_ms = probe_interval_ms(plan)

    async def run(self) -> None:
        now = self.rt.clock.now_ms()
        await self._before(now)
        due = [schedule.first_at_or_after(now) for _, schedule in self.groups]
        probes = [self._next_probe(g, now) for g, _ in self.groups]
        while True:
            at = min(due + probes)
            await self.rt.gate.until(at)
            for i, (group, schedule) in enumerate(self.groups):
                if due[i] == at:
                    end = min(schedule.next_after(at), at + self.rt.config.max_retry_window_ms)
                    await self._sample(group, at, end)
                    due[i] = await self._skip_missed(group, schedule, schedule.next_after(at))
                    probes[i] = self._next_probe(group, self.rt.clock.now_ms())
            for i, (group, _) in enumerate(self.groups):
                if probes[i] == at:
                    await self._probe(group, at, min(due))
                    probes[i] = self._next_probe(group, max(at, self.rt.clock.now_ms()))
            if self.close_after_cycle:
                await self.sampler.link.close()

    async def _before(self, now_ms: int) -> None:
        """``shutdown`` gaps for the slots from the run's start until ``now_ms``: they passed
        before the task could take them (a sample started late would delay the next)."""
        if self.rt.start_ms is None:
            return
        for group, schedule in self.groups:
            slots = Slots(group.points, schedule, group)
            gaps = not_taken(self.device, slots, self.rt.start_ms, now_ms, STARTING)
            self.stats.scheduled.update({g.point: g.slots for g in gaps})
            await self.emit(gaps, True)

    async def _sample(self, group: ReadGroup, slot_ms: int, end_ms: int) -> None:
        points = list(group.points)
        self.stats.scheduled.update(points)
        try:
            records = await self.sampler.sample(group, slot_ms, end_ms)
        except asyncio.CancelledError:
            await self.emit(
                gaps(
                    self.device,
                    points,
                    slot_ms,
                    GapReason.SHUTDOWN,
                    "the collector stopped during this sample",
                ),
                True,
            )
            raise
        self.changes.remember(records)
        await self.emit(records, True)

    async def _skip_missed(self, group: ReadGroup, schedule: Schedule, nxt: int) -> int:
        """Gaps for slots whose whole window passed while the device was busy; the next slot."""
        now = self.rt.clock.now_ms()
        while schedule.next_after(nxt) <= now:
            points = list(group.points)
            self.stats.scheduled.update(points)
            await self.emit(
                gaps(
                    self.device,
                    points,
                    nxt,
                    GapReason.TIMEOUT,
                    "slot missed: an earlier request overran it",
                ),
                True,
            )
            nxt = schedule.next_after(nxt)
        return nxt

    def _next_probe(self, group: ReadGroup, after_ms: int) -> int:
        """The next on-change poll of ``group`` (aligned to ``min_interval``), or never."""
        if not self.changes.watches(group.points):
            return NEVER
        return interval_slot(after_ms, self.probe_ms) + self.probe_ms

    async def _probe(self, group: ReadGroup, at_ms: int, before_ms: int) -> None:
        """Poll ``group`` between samples; emit the readings that changed enough."""
        records = await self.sampler.probe(group, at_ms, before_ms)
        await self.emit(self.changes.changes(records), False)
