"""What a run reports: per-device counters, live status, structured logs, the summary.

:class:`DeviceStats` is updated by the device's own task only; it counts per
point the slots, the readings and gap records that fill them, and the extra
readings beyond them, as the records are queued, so it agrees with what a sink
stores. A :class:`Reporter` hears events (connected, connection lost, breaker
open, errors): :class:`JsonLogReporter` writes one JSON object per event to
standard error (for services and pipes), and a ``summary`` event per device at
the end; ``converge run`` shows a live table on a terminal
(:mod:`engine.commands.run_status`).
"""

from __future__ import annotations

import json
import sys
from collections import Counter, deque
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import IO, Any, Protocol

from engine.records import Gap, Reading, Record

LATENESS_WINDOW = 10_000
"""Readings per device whose lateness the status view and summary report."""


@dataclass
class DeviceStats:
    """A device's counts, per point: every slot ends as one record that fills it (a reading or
    a gap record); readings beyond the slots (on change, as subscriptions deliver them) are
    extra."""

    device: str
    state: str = "starting"
    scheduled: Counter[str] = field(default_factory=Counter)
    """Slots taken per point, polled or subscribed."""
    filled: Counter[str] = field(default_factory=Counter)
    """Slots filled per point, by readings and gap records: must equal ``scheduled`` once the
    samples in flight are done."""
    slot_gaps: Counter[str] = field(default_factory=Counter)
    """Slots filled by gap records, per point (a record may stand for a run of slots)."""
    held: Counter[str] = field(default_factory=Counter)
    """Readings that fill a subscribed point's slot with the latest value delivered, per point."""
    extra: Counter[str] = field(default_factory=Counter)
    """Readings beyond the slots, per point."""
    gaps: Counter[str] = field(default_factory=Counter)
    """Slots filled by gap records, by reason."""
    errors: int = 0
    last_read: float | None = None
    lateness_ms: deque[float] = field(default_factory=lambda: deque(maxlen=LATENESS_WINDOW))
    """The lateness of the most recent readings read for their slot only: a collector runs for
    months."""

    def count(self, record: Record, *, scheduled: bool) -> None:
        """Count a record as it is queued; ``scheduled`` when it fills a slot."""
        point = record.point
        if not scheduled:
            self.extra[point] += 1
            if isinstance(record, Reading):
                self.last_read = record.collected_at.timestamp()
            return
        if isinstance(record, Gap):  # it may stand for a run of slots
            self.filled[point] += record.slots
            self.slot_gaps[point] += record.slots
            self.gaps[record.reason.value] += record.slots
            return
        self.filled[point] += 1
        if record.held:
            self.held[point] += 1
            return
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

    def point_counts(self, point: str) -> dict[str, int]:
        """One point's slots, the readings and gap records that fill them (``held`` of the
        readings), and its extra readings."""
        gaps = self.slot_gaps[point]
        return {
            "slots": self.scheduled[point],
            "readings": self.filled[point] - gaps,
            "held": self.held[point],
            "gaps": gaps,
            "extra": self.extra[point],
        }

    def totals(self) -> dict[str, int]:
        """:meth:`point_counts` summed over the device's points."""
        gaps = sum(self.slot_gaps.values())
        return {
            "slots": sum(self.scheduled.values()),
            "readings": sum(self.filled.values()) - gaps,
            "held": sum(self.held.values()),
            "gaps": gaps,
            "extra": sum(self.extra.values()),
        }

    def as_dict(self) -> dict[str, Any]:
        """The device's counts (gaps also by reason), lateness and errors, and each point's."""
        points = sorted(set(self.scheduled) | set(self.extra))
        return {
            "device": self.device,
            "state": self.state,
            **self.totals(),
            "gap_reasons": dict(sorted(self.gaps.items())),
            "errors": self.errors,
            "lateness_p50_ms": self.percentile(0.5),
            "lateness_p99_ms": self.percentile(0.99),
            "points": {p: self.point_counts(p) for p in points},
        }


@dataclass
class Summary:
    devices: dict[str, DeviceStats] = field(default_factory=dict)

    def unaccounted(self) -> dict[str, dict[str, tuple[int, int]]]:
        """Points whose slots differ from the readings + gap records that fill them (should be
        none once the run is over): per device, point to (slots, records)."""
        return {
            name: {
                p: (s.scheduled[p], s.filled[p])
                for p in s.scheduled
                if s.scheduled[p] != s.filled[p]
            }
            for name, s in self.devices.items()
            if any(s.scheduled[p] != s.filled[p] for p in s.scheduled)
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
        """Nothing while the run lasts; at its end a ``summary`` event per device, with its
        counts and each point's (:meth:`DeviceStats.as_dict`)."""
        return self._summary_at_end(summary)

    @contextmanager
    def _summary_at_end(self, summary: Summary) -> Iterator[None]:
        yield
        for stats in summary.devices.values():
            counts = stats.as_dict()
            self.event(counts.pop("device"), "summary", **counts)


class QuietReporter:
    """Hears nothing, shows nothing (the Python API's default)."""

    def event(self, device: str, kind: str, **fields: Any) -> None:
        pass

    def showing(self, summary: Summary) -> AbstractContextManager[object]:
        return nullcontext()
