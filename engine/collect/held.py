"""The slots of subscribed points: each holds the latest value delivered, or says why not.

A subscription delivers values when the server sends them (OPC UA: on change,
beyond a deadband; MQTT: when a message is published), not at the plan's
instants. The plan's ``capture`` (``every_ms``, ``cron``) is a promise all the
same, so at each slot of a subscribed point :class:`HeldSlots` records

- a *held* reading: the latest value the subscription delivered before the
  slot, with that delivery's quality, codes and times (``collected_at`` when it
  arrived, the device's ``source_at``), the slot as ``scheduled_at``, and
  ``held`` set;
- or a gap record saying why there is none: ``refused`` while the subscription
  is down (not connected); ``no-data`` when nothing was delivered since it
  (re)started, or when the latest value is *stale*: it arrived more than
  ``watchdog_factor`` × ``expect_every_ms`` before the slot. MQTT groups carry
  ``expect_every_ms``: a topic that should publish that often and falls silent
  is stale. OPC UA groups do not: a monitored item reports by exception, and
  while its subscription is alive (its keep-alives arrive) an item that stays
  silent still holds its value; ``plan-expired`` from the plan's
  ``valid_until`` on.

The deliveries themselves are recorded as they come, beyond the slots
(through the flood guard, :mod:`engine.collect.flood`). Holding a value costs
no I/O, so a slot is recorded at its instant, never late and never retried.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable
from dataclasses import replace

from engine.collect.backfill import STARTING, not_taken
from engine.collect.link import Link
from engine.collect.runtime import Runtime
from engine.collect.scheduler import Slots, plan_slots, to_datetime
from engine.collect.status import DeviceStats
from engine.plans.body import PlanBody
from engine.records import Gap, GapReason, Reading, Record

Emit = Callable[[Iterable[Record], bool], Awaitable[None]]


class HeldSlots:
    """Records a held reading or a gap at every slot of a device's subscribed points."""

    def __init__(
        self, plan: PlanBody, link: Link, rt: Runtime, stats: DeviceStats, emit: Emit
    ) -> None:
        self.device, self.link, self.rt, self.stats, self.emit = link.device, link, rt, stats, emit
        factor = rt.config.watchdog_factor
        self.slots: list[tuple[Slots, int | None]] = [
            (slots, None if expect is None else expect * factor)
            for slots in plan_slots(plan, rt.config.fallback_every_ms)
            if not slots.group.polled
            for expect in [slots.group.expect_every_ms]
        ]
        """Each set of subscribed points captured alike, with its staleness bound (ms)."""
        self.valid_until = plan.valid_until_ms
        self.latest: dict[str, tuple[Reading, int, int]] = {}
        """Per point: the latest reading delivered, the link generation it came on, and when
        it arrived (clock ms)."""

    def delivered(self, reading: Reading) -> None:
        """Remember ``reading`` as its point's latest value (call as it arrives)."""
        self.latest[reading.point] = (reading, self.link.generation, self.rt.clock.now_ms())

    async def run(self) -> None:
        """Record every slot from the run's start on, at its instant (until cancelled)."""
        now = self.rt.clock.now_ms()
        if self.rt.start_ms is not None:  # slots that passed before this task started
            for slots, _ in self.slots:
                gaps = not_taken(self.device, slots, self.rt.start_ms, now, STARTING)
                self.stats.scheduled.update({g.point: g.slots for g in gaps})
                await self.emit(gaps, True)
        due = [slots.schedule.first_at_or_after(now) for slots, _ in self.slots]
        while True:
            at = min(due)
            await self.rt.gate.until(at)
            for i, (slots, bound) in enumerate(self.slots):
                if due[i] == at:
                    self.stats.scheduled.update(slots.points)
                    await self.emit([self.record(p, at, bound) for p in slots.points], True)
                    due[i] = slots.schedule.next_after(at)

    def record(self, point: str, slot_ms: int, bound: int | None) -> Record:
        """The record of ``point``'s slot at ``slot_ms``, as things stand now."""
        slot = to_datetime(slot_ms)
        if self.valid_until is not None and slot_ms >= self.valid_until:
            why = "plan past its valid_until; recompile"
            return Gap(self.device, point, slot, GapReason.PLAN_EXPIRED, why)
        if not (self.link.connected and self.link.session.connected):
            why = "the subscription is down: not connected"
            return Gap(self.device, point, slot, GapReason.REFUSED, why)
        latest = self.latest.get(point)
        if latest is None or latest[1] != self.link.generation:
            why = "no value delivered since the subscription started"
            return Gap(self.device, point, slot, GapReason.NO_DATA, why)
        reading, _, arrived_ms = latest
        if bound is not None and slot_ms - arrived_ms > bound:
            why = f"stale: the latest value is {slot_ms - arrived_ms} ms old, over {bound} ms"
            return Gap(self.device, point, slot, GapReason.NO_DATA, why)
        return replace(reading, scheduled_at=slot, held=True, coalesced=0)
