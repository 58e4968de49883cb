"""What every device task of one run shares: the clock, the settings, the record queue."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from engine.collect.gate import SlotGate
from engine.collect.limits import Backoff
from engine.collect.scheduler import Clock
from engine.collect.status import QuietReporter, Reporter
from engine.records import Record


@dataclass
class CollectConfig:
    """Collector settings that are not in the plan (the plan's limits always win)."""

    queue_size: int = 1000
    """Records buffered between device tasks and the sink before devices wait."""
    watchdog_factor: int = 3
    """At a slot of a subscribed point whose group expects a value every ``expect_every_ms``,
    a latest value older than this many ``expect_every_ms`` is stale: a ``no-data`` gap."""
    default_timeout_ms: int = 5000
    """Per-request timeout when the plan's limits give no ``timeout_ms``."""
    fallback_every_ms: int = 1000
    """Poll interval of a polled group whose points only have ``on_change``."""
    max_retry_window_ms: int = 60_000
    """Retries of a sample stop at its next slot, and at most this long after its own."""
    retry: Backoff = field(default_factory=lambda: Backoff(base=0.05, cap=1.0))
    reconnect: Backoff = field(default_factory=lambda: Backoff(base=0.2, cap=5.0))
    breaker_threshold: int = 5
    breaker_cooldown_s: float = 5.0
    close_timeout_s: float = 2.0


@dataclass
class Runtime:
    """What every device task of one run shares."""

    clock: Clock
    config: CollectConfig
    queue: asyncio.Queue[Record | None]
    reporter: Reporter = field(default_factory=QuietReporter)
    start_ms: int | None = None
    """The first instant (clock ms) whose slots the run accounts for (those before it are a
    restart's backfill's); ``None``: from when each device's task starts. Slots that pass
    before a task is ready for them are ``shutdown`` gap records."""
    gate: SlotGate = field(init=False)
    """Where device tasks wait for their next slot: one wake-up per instant for all."""

    def __post_init__(self) -> None:
        self.gate = SlotGate(self.clock)
