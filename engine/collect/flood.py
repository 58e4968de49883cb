"""The flood guard: a subscribed point delivers at most one reading per ``min_interval``.

A device (or a broker relaying one) may publish changes faster than its
``limits.min_interval_ms`` allows the collector to take them. Per point, the
first change of a window is delivered at once; later changes within the
window are held, each replacing the one held before, and when the window
closes the latest is delivered with ``coalesced`` set to the number of
changes it stands for (itself included). Nothing is lost silently: summing
``coalesced or 1`` over a point's readings gives the changes received.
Without ``min_interval`` in the plan every change is delivered.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from dataclasses import replace

from engine.collect.scheduler import Clock
from engine.records import Reading, Record

Emit = Callable[[Record], Awaitable[None]]


class FloodGuard:
    """Coalesces each point's readings to one per ``window_ms`` (``None``: no limit)."""

    def __init__(self, window_ms: int | None, clock: Clock, emit: Emit) -> None:
        self.window_ms = window_ms
        self.clock = clock
        self.emit = emit
        self.sent_at: dict[str, int] = {}
        """When each point's last reading was delivered (clock ms)."""
        self.held: dict[str, tuple[Reading, int]] = {}
        """Per point, the latest reading held back and how many changes it stands for."""
        self.wake = asyncio.Event()

    async def deliver(self, record: Record) -> None:
        """Pass ``record`` on now, or hold it until its point's window closes."""
        if not self.window_ms or not isinstance(record, Reading):
            await self.emit(record)
            return
        now, point = self.clock.now_ms(), record.point
        held = self.held.get(point)
        last = self.sent_at.get(point)
        if held is None and (last is None or now - last >= self.window_ms):
            self.sent_at[point] = now
            await self.emit(record)
            return
        self.held[point] = (record, (held[1] if held else 0) + 1)
        self.wake.set()

    async def run(self) -> None:
        """Deliver held readings as their windows close (until cancelled)."""
        if not self.window_ms:
            return
        while True:
            self.wake.clear()
            due = min((self.sent_at[p] + self.window_ms for p in self.held), default=None)
            if due is None:
                await self.wake.wait()
                continue
            wait = (due - self.clock.now_ms()) / 1000
            if wait > 0:  # a reading held meanwhile may close sooner: wake up for it
                with contextlib.suppress(TimeoutError):
                    await self.clock.wait_for(self.wake.wait(), wait)
                continue
            await self._release(everything=False)

    async def flush(self) -> None:
        """Deliver everything held (the run is stopping)."""
        await self._release(everything=True)

    async def _release(self, *, everything: bool) -> None:
        now, window = self.clock.now_ms(), self.window_ms or 0
        for point in [p for p in self.held if everything or self.sent_at[p] + window <= now]:
            reading, count = self.held.pop(point)
            self.sent_at[point] = now
            await self.emit(replace(reading, coalesced=count if count > 1 else 0))
