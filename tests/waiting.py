"""Waiting for a condition with a bound, instead of sleeping and hoping it holds by then.

A test that sleeps for a while and then counts what happened fails on a loaded
machine, where less happens in that while. These helpers poll the condition
the test needs until it holds or a generous bound passes, so a fast machine
goes on at once and a slow one is given the time it needs; only a run that
never gets there fails, saying what it waited for.

:func:`collecting` does the same for the collector's :func:`run_plans`: the
run goes on in the background while the test waits for what it needs, and
then ends as an interrupted ``converge run`` does (samples in flight become
``shutdown`` gaps, the queue is drained and the sink closed, a reporter shows
its summary).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pluggy

from engine.collect import Clock, Sink, Summary, run_plans
from engine.collect.status import QuietReporter, Reporter
from engine.plans.body import PlanBody

BOUND_S = 30.0
"""How long a condition may take: far beyond what a loaded machine needs."""


What = str | Callable[[], str]
"""What a wait is for, said when it fails; a function when the state at that time helps."""


def wait_until(
    condition: Callable[[], object], what: What, *, within: float = BOUND_S, every: float = 0.05
) -> None:
    """Return once ``condition()`` is true; fail, saying ``what``, after ``within`` seconds."""
    deadline = time.monotonic() + within
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(_in_vain(what, within))
        time.sleep(every)


async def until(
    condition: Callable[[], object], what: What, *, within: float = BOUND_S, every: float = 0.01
) -> None:
    """:func:`wait_until` in an event loop: other tasks run while it waits."""
    deadline = time.monotonic() + within
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(_in_vain(what, within))
        await asyncio.sleep(every)


def _in_vain(what: What, within: float) -> str:
    return f"waited {within:g} s in vain for {what if isinstance(what, str) else what()}"


@dataclass
class Collection:
    """A run of :func:`collecting`: its sink, and its live counters once it started.

    It is the run's :class:`~engine.collect.status.Reporter`: it hands events
    on to ``reporter``, and keeps the summary the run fills in, for the test to
    look at.
    """

    sink: Sink
    reporter: Reporter = field(default_factory=QuietReporter)
    summary: Summary = field(default_factory=Summary)
    started: asyncio.Event = field(default_factory=asyncio.Event)

    def event(self, device: str, kind: str, **fields: Any) -> None:
        self.reporter.event(device, kind, **fields)

    def showing(self, summary: Summary) -> AbstractContextManager[object]:
        self.summary = summary
        self.started.set()
        return _stopped(self.reporter.showing(summary))


@contextlib.contextmanager
def _stopped(shown: AbstractContextManager[object]) -> Iterator[None]:
    """``shown`` ends as when a run is stopped (SIGINT), not cancelled: a reporter that shows
    the summary at the end shows it; the cancel goes on after."""
    cancelled: asyncio.CancelledError | None = None
    with shown:
        try:
            yield
        except asyncio.CancelledError as cancel:
            cancelled = cancel
    if cancelled is not None:
        raise cancelled


@contextlib.asynccontextmanager
async def collecting(
    plans: Path | Sequence[PlanBody],
    pm: pluggy.PluginManager,
    *,
    sink: Sink,
    clock: Clock | None = None,
    reporter: Reporter | None = None,
    **options: Any,
) -> AsyncIterator[Collection]:
    """``run_plans`` in the background until the ``async with`` body is done.

    The body waits (:func:`until`) for what it needs; when it leaves, the run
    is ended by cancelling it, which ends the devices' tasks exactly as the
    end of ``duration`` or SIGINT does (``reporter``, if given, hears its
    events and shows its summary). A run that has not ended by then
    ends by itself after ``BOUND_S`` seconds more (clock seconds: a scaled
    clock's run is as long in real time). A run that fails to start raises.
    """
    run = Collection(sink, reporter or QuietReporter())
    bound = (BOUND_S + 10) * (clock or Clock()).speed
    task = asyncio.create_task(
        run_plans(plans, pm, duration=bound, sink=sink, clock=clock, reporter=run, **options)
    )
    started = asyncio.create_task(run.started.wait())
    await asyncio.wait([task, started], return_when=asyncio.FIRST_COMPLETED)
    started.cancel()
    if task.done():
        task.result()  # it failed to start: raise what it raised
    try:
        yield run
    finally:
        await _end(task)


async def _end(task: asyncio.Task[Summary]) -> None:
    """Cancel the run and wait for it to wind down; a cancel of the caller still propagates."""
    task.cancel()
    try:
        await task
    except asyncio.CancelledError:
        current = asyncio.current_task()
        if current is not None and current.cancelling():
            raise
