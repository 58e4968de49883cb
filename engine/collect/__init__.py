"""Stage collect: run verified plans against devices, producing readings and gap records.

:func:`run_plans` reads a plan folder, opens one protocol session per device
through the ``converge_open_session`` hook, runs one task per device and
drains their records, through a bounded queue, into a :class:`Sink`. See
docs/runtime.md for scheduling, retry rules and the record format.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import signal
from collections.abc import Iterator, Sequence
from pathlib import Path

import pluggy

from engine.collect.device import DeviceTask
from engine.collect.runtime import CollectConfig, Runtime
from engine.collect.scheduler import Clock, ScaledClock
from engine.collect.sinks import JsonLinesSink, MemorySink, Sink
from engine.collect.status import QuietReporter, Reporter, Summary
from engine.errors import PluginError
from engine.plans.body import PlanBody
from engine.plans.folder import load_plans
from engine.protocols import Session
from engine.records import Record

__all__ = [
    "Clock",
    "CollectConfig",
    "JsonLinesSink",
    "MemorySink",
    "ScaledClock",
    "Sink",
    "Summary",
    "open_session",
    "run_plans",
]


async def run_plans(
    plans: Path | str | Sequence[PlanBody],
    pm: pluggy.PluginManager,
    *,
    duration: float | None,
    sink: Sink,
    clock: Clock | None = None,
    config: CollectConfig | None = None,
    reporter: Reporter | None = None,
    handle_signals: bool = False,
    since: float | None = None,
) -> Summary:
    """Collect every plan for ``duration`` clock seconds (``None``: until stopped).

    ``plans`` is a plan folder (loaded and verified with :func:`load_plans`) or
    plans the caller loaded and verified. Every slot from ``since`` (clock seconds, a
    moment ago: a restart's backfill accounted for the slots before it; default: when each
    device's task starts) ends as a reading or a gap record.

    With ``handle_signals`` SIGINT and SIGTERM stop the run cleanly: samples in
    flight become ``shutdown`` gaps, the queue is drained and the sink closed.
    """
    clock = clock or Clock()
    config = config or CollectConfig()
    start_ms = None if since is None else int(since * 1000)
    queue: asyncio.Queue[Record | None] = asyncio.Queue(maxsize=config.queue_size)
    rt = Runtime(clock, config, queue, reporter or QuietReporter(), start_ms)
    bodies = load_plans(Path(plans), clock.now()) if isinstance(plans, Path | str) else plans
    devices = [DeviceTask(plan, open_session(pm, plan), rt) for plan in bodies]
    summary = Summary({d.device: d.stats for d in devices})
    drain = asyncio.create_task(_drain(rt.queue, sink))
    stop = asyncio.Event()
    try:
        with rt.reporter.showing(summary), _signals(stop, handle_signals), _frozen_heap():
            tasks = [asyncio.create_task(_guarded(d, rt)) for d in devices]
            try:
                await _until(stop, duration, clock)
            finally:
                await _cancel_all(tasks)
    finally:
        await rt.queue.put(None)
        await drain
        await sink.close()
    return summary


def open_session(pm: pluggy.PluginManager, plan: PlanBody) -> Session:
    """The protocol plugin's session for ``plan`` (not connected yet)."""
    session: Session | None = pm.hook.converge_open_session(plan=plan)
    if session is None:
        device = plan.device
        raise PluginError(
            f"no plugin opens sessions for protocol '{device.protocol}' (device {device.id})"
        )
    return session


async def _guarded(device: DeviceTask, rt: Runtime) -> None:
    """Run one device; a bug in it is logged and ends that device only."""
    try:
        await device.run()
    except Exception as exc:  # any failure of one device must not stop the others
        device.stats.state, device.stats.errors = "crashed", device.stats.errors + 1
        rt.reporter.event(device.device, "crashed", detail=repr(exc))


async def _until(stop: asyncio.Event, duration: float | None, clock: Clock) -> None:
    if duration is None:
        await stop.wait()
        return
    with contextlib.suppress(TimeoutError):
        await clock.wait_for(stop.wait(), duration)


async def _cancel_all(tasks: list[asyncio.Task[None]]) -> None:
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


async def _drain(queue: asyncio.Queue[Record | None], sink: Sink) -> None:
    while (record := await queue.get()) is not None:
        await sink.put(record)


@contextlib.contextmanager
def _frozen_heap() -> Iterator[None]:
    """Keep the objects that outlive the run (modules, plans, sessions) out of full collections.

    A full collection of the whole heap took ~40 ms in the 11,000 readings/s
    benchmark; when one fell on a slot it delayed every request of that slot.
    Frozen, those objects are not scanned, which halves it. Undone at the end.
    """
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()


@contextlib.contextmanager
def _signals(stop: asyncio.Event, enabled: bool) -> Iterator[None]:
    """SIGINT and SIGTERM set ``stop`` while the run lasts (Unix event loops only)."""
    loop = asyncio.get_running_loop()
    installed: list[signal.Signals] = []
    if enabled:
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(sig, stop.set)
                installed.append(sig)
    try:
        yield
    finally:
        for sig in installed:
            loop.remove_signal_handler(sig)
