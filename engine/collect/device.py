"""The task that collects one device, so that a slow or dead device delays no other.

It polls the device's read groups at their slots (a cycle reads every group
due at the same instant, one request each), keeps its subscriptions alive,
and watches them: a subscribed point silent for ``watchdog_factor`` times its
``expect_every_ms`` gets a ``no-data`` gap. Every scheduled sample ends as a
reading or a gap; a sample in flight when the run stops gets a ``shutdown``
gap, so that for each polled point scheduled == readings + gaps.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Mapping
from typing import Any

from engine.collect.link import Link, Sampler, gaps
from engine.collect.runtime import Runtime
from engine.collect.scheduler import Schedule, group_schedule, polled, to_datetime
from engine.collect.status import DeviceStats
from engine.protocols import Session
from engine.records import Gap, GapReason, Record


class DeviceTask:
    def __init__(self, plan: Mapping[str, Any], session: Session, rt: Runtime) -> None:
        self.device = str(plan["device"]["id"])
        self.rt = rt
        self.stats = DeviceStats(self.device)
        self.link = Link(plan, session, rt, self.stats, self._delivered)
        self.sampler = Sampler(plan, self.link, rt, self.stats)
        self.close_after_cycle = bool(plan["device"].get("limits", {}).get("close_after_cycle"))
        points = {str(p["name"]): p for p in plan["points"]}
        self.polls: list[tuple[Mapping[str, Any], Schedule]] = [
            (g, group_schedule(g, points, plan["timezone"], rt.config.fallback_every_ms))
            for g in plan["read_groups"] if polled(g)
        ]
        self.watched = [(g, int(g["expect_every_ms"])) for g in plan["read_groups"]
                        if not polled(g) and g.get("expect_every_ms")]
        self.last_seen: dict[str, int] = {}

    async def run(self) -> None:
        """Collect until cancelled; the connection is closed however it ends."""
        try:
            async with asyncio.TaskGroup() as tasks:
                tasks.create_task(self._poll() if self.polls else self._keep_connected())
                if self.watched:
                    tasks.create_task(self._watchdog())
        finally:
            await asyncio.shield(self.link.close())
            self.stats.state = "stopped"

    # --- polling ------------------------------------------------------------------------

    async def _poll(self) -> None:
        now = self.rt.clock.now_ms()
        due = [schedule.first_at_or_after(now) for _, schedule in self.polls]
        while True:
            slot = min(due)
            await self.rt.clock.sleep_until(slot)
            for i, (group, schedule) in enumerate(self.polls):
                if due[i] == slot:
                    end = min(schedule.next_after(slot),
                              slot + self.rt.config.max_retry_window_ms)
                    await self._sample(group, slot, end)
                    due[i] = await self._skip_missed(group, schedule, schedule.next_after(slot))
            if self.close_after_cycle:
                await self.link.close()

    async def _sample(self, group: Mapping[str, Any], slot_ms: int, end_ms: int) -> None:
        points = list(group["points"])
        self.stats.scheduled.update(points)
        try:
            records = await self.sampler.sample(group, slot_ms, end_ms)
        except asyncio.CancelledError:
            await self._emit(gaps(self.device, points, slot_ms, GapReason.SHUTDOWN,
                                  "the collector stopped during this sample"), scheduled=True)
            raise
        await self._emit(records, scheduled=True)

    async def _skip_missed(self, group: Mapping[str, Any], schedule: Schedule, nxt: int) -> int:
        """Gaps for slots whose whole window passed while the device was busy; the next slot."""
        now = self.rt.clock.now_ms()
        while schedule.next_after(nxt) <= now:
            points = list(group["points"])
            self.stats.scheduled.update(points)
            await self._emit(gaps(self.device, points, nxt, GapReason.TIMEOUT,
                                  "slot missed: an earlier request overran it"), scheduled=True)
            nxt = schedule.next_after(nxt)
        return nxt

    # --- subscriptions ------------------------------------------------------------------

    async def _keep_connected(self) -> None:
        """For a device with only subscriptions: connect, and reconnect with backoff."""
        while True:
            await self.link.ensure()
            wait = 1.0 if self.link.connected else self.link.next_try - self.rt.clock.now()
            await self.rt.clock.sleep(max(wait, 0.05))

    async def _delivered(self, record: Record) -> None:
        self.last_seen[record.point] = self.rt.clock.now_ms()
        await self._emit([record], scheduled=False)

    async def _watchdog(self) -> None:
        start = self.rt.clock.now_ms()
        for group, _ in self.watched:
            for point in group["points"]:
                self.last_seen.setdefault(point, start)
        tick = min(expect for _, expect in self.watched) / 4000
        while True:
            await self.rt.clock.sleep(tick)
            await self._check_silence()

    async def _check_silence(self) -> None:
        now = self.rt.clock.now_ms()
        for group, expect in self.watched:
            limit = expect * self.rt.config.watchdog_factor
            for point in group["points"]:
                silent_since = self.last_seen[point]
                if now - silent_since >= limit:
                    at = silent_since + limit
                    self.last_seen[point] = at
                    gap = Gap(self.device, point, to_datetime(at), GapReason.NO_DATA,
                              f"no data for {limit} ms")
                    await self._emit([gap], scheduled=False)

    # --- records ------------------------------------------------------------------------

    async def _emit(self, records: Iterable[Record], *, scheduled: bool) -> None:
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
