"""What a run reports: per-device counters, live status, structured logs, the summary.

:class:`DeviceStats` is updated by the device's own task only. A
:class:`Reporter` hears events (connected, connection lost, breaker open,
errors): :class:`JsonLogReporter` writes one JSON object per event to
standard error (for services and pipes); ``converge run`` shows a live table on
a terminal (:mod:`engine.commands.run_status`).
"""

from __future__ import annotations

import json
import sys
from collections import Counter, deque
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import IO, Any, Protocol

from engine.records import Gap, Record

LATENESS_WINDOW = 10_000
"""Readings per device whose lateness the status view and summary report."""


@dataclass
class DeviceStats:
    device: str
    state: str = "starting"
    scheduled: Counter[str] = field(default_factory=Counter)
    """Scheduled samples per polled point."""
    polled: Counter[str] = field(default_factory=Counter)
    """Records (readings + gaps) per polled point: must equal ``scheduled``."""
    readings: int = 0
    gaps: Counter[str] = field(default_factory=Counter)
    errors: int = 0
    last_read: float | None = None
    lateness_ms: deque[float] = field(default_factory=lambda: deque(maxlen=LATENESS_WINDOW))
    """The lateness of the most recent readings only: a collector runs for months."""

    def count(self, record: Record, *, scheduled: bool) -> None:
        if scheduled:
            self.polled[record.point] += 1
        if isinstance(record, Gap):
            self.gaps[record.reason.value] += 1
            return
        self.readings += 1
        self.last_read = record.collected_at.timestamp()
        if record.scheduled_at is not None:
            late = (record.collected_at - record.scheduled_at).total_seconds() * 1000
            self.lateness_ms.append(late)

    def percentile(self, q: float) -> float | None:
        """Nearest-rank percentile of lateness in milliseconds (``q`` in 0..1)."""
        if not self.lateness_ms:
            return None
        ordered = sorted(self.lateness_ms)
        return ordered[min(len(ordered) - 1, max(0, round(q * len(ordered)) - 1))]

    def as_dict(self) -> dict[str, Any]:
        return {
            "device": self.device,
            "scheduled": sum(self.scheduled.values()),
            "readings": self.readings,
            "gaps": dict(sorted(self.gaps.items())),
            "errors": self.errors,
            "lateness_p50_ms": self.percentile(0.5),
            "lateness_p99_ms": self.percentile(0.99),
        }


@dataclass
class Summary:
    devices: dict[str, DeviceStats] = field(default_factory=dict)

    def unaccounted(self) -> dict[str, dict[str, tuple[int, int]]]:
        """Polled points whose scheduled samples differ from readings + gaps (should be none)."""
        return {
            name: {
                p: (s.scheduled[p], s.polled[p])
                for p in s.scheduled
                if s.scheduled[p] != s.polled[p]
            }
            for name, s in self.devices.items()
            if any(s.scheduled[p] != s.polled[p] for p in s.scheduled)
        }


class Reporter(Protocol):
    def event(self, device: str, kind: str, **fields: Any) -> None:
        """One thing that happened to a device (not every record)."""

    def showing(self, summary: Summary) -> AbstractContextManager[object]:
        """A context during which the reporter may show ``summary`` live."""


class JsonLogReporter:
    """One JSON object per event, one line each, on a text stream (standard error)."""

    def __init__(self, stream: IO[str] | None = None) -> None:
        self.stream = stream or sys.stderr

    def event(self, device: str, kind: str, **fields: Any) -> None:
        """One line: ``ts`` (RFC 3339, UTC, milliseconds), ``device``, ``event``, the fields."""
        stamp = datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
        line = {"ts": stamp, "device": device, "event": kind, **fields}
        self.stream.write(json.dumps(line, default=str) + "\n")
        self.stream.flush()

    def showing(self, summary: Summary) -> AbstractContextManager[object]:
        return nullcontext()


class QuietReporter:
    """Hears nothing, shows nothing (the Python API's default)."""

    def event(self, device: str, kind: str, **fields: Any) -> None:
        pass

    def showing(self, summary: Summary) -> AbstractContextManager[object]:
        return nullcontext()
