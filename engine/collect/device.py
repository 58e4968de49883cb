"""The task that collects one device, so that a slow or dead device delays no other.

It polls the device's read groups (:class:`~engine.collect.polling.Poller`),
keeps its subscriptions alive, passes what they deliver through the flood
guard (:class:`~engine.collect.flood.FloodGuard`), and watches them: a
subscribed point silent for ``watchdog_factor`` times its ``expect_every_ms``
gets a ``no-data`` gap. Every scheduled sample ends as a reading or a gap; a
sample in flight when the run stops gets a ``shutdown`` gap, so that for each
polled point scheduled == readings + gaps.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable

from engine.collect.flood import FloodGuard
from engine.collect.link import Link, Sampler
from engine.collect.polling import Poller
from engine.collect.runtime import Runtime
from engine.collect.scheduler import to_datetime
from engine.collect.status import DeviceStats
from engine.plans.body import PlanBody
from engine.protocols import Session
from engine.records import Gap, GapReason, Record


class DeviceTask:
    def __init__(self, plan: PlanBody, session: Session, rt: Runtime) -> None:
        self.device = plan.device.id
        self.rt = rt
        self.stats = DeviceStats(self.device)
        self.link = Link(plan, session, rt, self.stats, self._delivered)
        self.poller = Poller(
            plan, Sampler(plan, self.link, rt, self.stats), rt, self.stats, self._emit
        )
        self.guard = FloodGuard(plan.device.limits.min_interval_ms, rt.clock, self._unscheduled)
        self.watched = [
            (g, g.expect_every_ms)
            for g in plan.read_groups
            if not g.polled and g.expect_every_ms is not None
        ]
        self.last_seen: dict[str, int] = {}

    async def run(self) -> None:
        """Collect until cancelled; held readings are delivered and the connection closed."""
        try:
            async with asyncio.TaskGroup() as tasks:
                tasks.create_task(
                    self.poller.run() if self.poller.groups else self._keep_connected()
                )
                if self.link.subscriptions:
                    tasks.create_task(self.guard.run())
                if self.watched:
                    tasks.create_task(self._watchdog())
        finally:
            await asyncio.shield(self._stop())

    async def _stop(self) -> None:
        await self.link.close()
        await self.guard.flush()
        self.stats.state = "stopped"

    # --- subscriptions ------------------------------------------------------------------

    async def _keep_connected(self) -> None:
        """For a device with only subscriptions: connect, and reconnect with backoff."""
        while True:
            await self.link.ensure()
            wait = 1.0 if self.link.connected else self.link.next_try - self.rt.clock.now()
            await self.rt.clock.sleep(max(wait, 0.05))

    async def _delivered(self, record: Record) -> None:
        self.last_seen[record.point] = self.rt.clock.now_ms()
        await self.guard.deliver(record)

    async def _unscheduled(self, record: Record) -> None:
        await self._emit([record], False)

    async def _watchdog(self) -> None:
        start = self.rt.clock.now_ms()
        for group, _ in self.watched:
            for point in group.points:
                self.last_seen.setdefault(point, start)
        tick = min(expect for _, expect in self.watched) / 4000
        while True:
            await self.rt.clock.sleep(tick)
            await self._check_silence()

    async def _check_silence(self) -> None:
        now = self.rt.clock.now_ms()
        for group, expect in self.watched:
            limit = expect * self.rt.config.watchdog_factor
            for point in group.points:
                silent_since = self.last_seen[point]
                if now - silent_since >= limit:
                    at = silent_since + limit
                    self.last_seen[point] = at
                    gap = Gap(
                        self.device,
                        point,
                        to_datetime(at),
                        GapReason.NO_DATA,
                        f"no data for {limit} ms",
                    )
                    await self._emit([gap], False)

    # --- records ------------------------------------------------------------------------

    async def _emit(self, records: Iterable[Record], scheduled: bool) -> None:
        """Queue every record, even when cancelled meanwhile (then re-raise the cancel)."""
        cancelled = False
        for record in records:
            while True:
                try:
                    await self.rt.queue.put(record)
                    break
                except asyncio.CancelledError:
                    cancelled = True
            self.stats.count(record, scheduled=scheduled)
        if cancelled:
            raise asyncio.CancelledError
