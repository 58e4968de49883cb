"""The task that collects one device, so that a slow or dead device delays no other.

It polls the device's read groups (:class:`~engine.collect.polling.Poller`),
keeps its subscriptions alive, records each slot of its subscribed points
with the latest value delivered or a gap (:class:`~engine.collect.held.HeldSlots`),
and passes what the subscriptions deliver through the flood guard
(:class:`~engine.collect.flood.FloodGuard`) as extra, unscheduled readings.
Every slot ends as a reading or a gap record; a sample in flight when the run
stops gets a ``shutdown`` gap, so that for each point slots == readings + gaps
filling them.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable

from engine.collect.flood import FloodGuard
from engine.collect.held import HeldSlots
from engine.collect.link import Link, Sampler
from engine.collect.polling import Poller
from engine.collect.runtime import Runtime
from engine.collect.status import DeviceStats
from engine.plans.body import PlanBody
from engine.protocols import Session
from engine.records import Gap, Quality, Reading, Record


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
        self.held = HeldSlots(plan, self.link, rt, self.stats, self._emit)

    async def run(self) -> None:
        """Collect until cancelled; held readings are delivered and the connection closed."""
        try:
            async with asyncio.TaskGroup() as tasks:
                tasks.create_task(
                    self.poller.run() if self.poller.groups else self._keep_connected()
                )
                if self.link.subscriptions:
                    tasks.create_task(self.guard.run())
                if self.held.slots:
                    tasks.create_task(self.held.run())
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
        reading = record if isinstance(record, Reading) else _bad_reading(record)
        self.held.delivered(reading)
        await self.guard.deliver(reading)

    async def _unscheduled(self, record: Record) -> None:
        await self._emit([record], False)

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


def _bad_reading(gap: Gap) -> Reading:
    """A gap record a subscription delivered (OPC UA: a value that is no plain scalar) as the
    bad reading it stands for, ``raw_code`` its code or reason: a delivery fills no slot, and
    only gap records of slots are kept."""
    code = gap.raw_code if gap.raw_code is not None else gap.reason.value
    return Reading(gap.device, gap.point, gap.scheduled_at, None, Quality.BAD, raw_code=code)
