"""One wake-up per instant for all device tasks of a run, so a slot's requests leave together.

With a timer per device, 110 devices due at the same slot wake at slightly
different loop iterations (each computed its sleep from its own "now"), and
the answers of the first ones are decoded, at a millisecond or more of CPU
each, before the last ones have even sent their request: the last requests
of a slot left up to ~90 ms late. :class:`SlotGate` keeps one timer per
instant for the whole run; when it fires every task waiting for that instant
is released in the same loop iteration, so they all run up to their request
(and the session stamps ``collected_at``) before any answer is read from a
socket, since the event loop polls sockets only between iterations.
"""

from __future__ import annotations

import asyncio

from engine.collect.scheduler import Clock


class SlotGate:
    """``await gate.until(at_ms)``: like ``clock.sleep_until``, but shared per instant."""

    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        self.waiting: dict[int, list[asyncio.Future[None]]] = {}

    async def until(self, at_ms: int) -> None:
        """Return at ``at_ms`` (clock time), together with every other task waiting for it."""
        if at_ms <= self.clock.now_ms():
            await asyncio.sleep(0)  # still let others run, as a timer would
            return
        loop = asyncio.get_running_loop()
        waiters = self.waiting.get(at_ms)
        if waiters is None:
            waiters = self.waiting[at_ms] = []
            self._arm(loop, at_ms)
        future: asyncio.Future[None] = loop.create_future()
        waiters.append(future)
        await future  # a cancelled waiter cancels only its own future

    def _arm(self, loop: asyncio.AbstractEventLoop, at_ms: int) -> None:
        delay = self.clock.real((at_ms - self.clock.now() * 1000) / 1000)
        loop.call_later(delay, self._open, loop, at_ms)

    def _open(self, loop: asyncio.AbstractEventLoop, at_ms: int) -> None:
        if self.clock.now_ms() < at_ms:  # the loop's timer ran a hair early: wait the rest
            self._arm(loop, at_ms)
            return
        for future in self.waiting.pop(at_ms, []):
            if not future.done():
                future.set_result(None)
