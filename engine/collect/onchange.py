"""Report by exception between scheduled samples, for polled protocols.

A point whose capture has ``on_change`` (``{"deadband": d}``, 0 when not
given) on a polled protocol cannot be told of changes: the collector polls
its group between scheduled samples, every ``limits.min_interval_ms`` of the
device, and emits a reading of such a point only when it moved by at least
the deadband since the last value emitted (scheduled samples included). These
extra readings have no ``scheduled_at`` and are not samples: they never make
gap records, and a failed extra poll is simply not reported.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import replace

from engine.plans.body import PlanBody
from engine.records import Reading, Record, Value

DEFAULT_MIN_INTERVAL_MS = 1000


def deadbands(plan: PlanBody) -> dict[str, float]:
    """Point name to deadband, for every point whose capture has ``on_change``."""
    return {p.name: p.capture.deadband for p in plan.points if p.capture.deadband is not None}


def probe_interval_ms(plan: PlanBody) -> int:
    """How often on-change points are polled between samples: the device's ``min_interval``."""
    return plan.device.limits.min_interval_ms or DEFAULT_MIN_INTERVAL_MS


def _number(value: Value) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def changed(value: Value, last: Value, deadband: float) -> bool:
    """Numbers: moved by at least ``deadband`` (and at all); anything else: different."""
    if _number(value) and _number(last):
        assert isinstance(value, int | float) and isinstance(last, int | float)
        return value != last and abs(value - last) >= deadband
    return value != last or type(value) is not type(last)


class ChangeFilter:
    """The last value emitted per on-change point, and which polled readings are changes."""

    def __init__(self, bands: Mapping[str, float]) -> None:
        self.bands = dict(bands)
        self.last: dict[str, Value] = {}

    def watches(self, points: Iterable[str]) -> bool:
        return any(p in self.bands for p in points)

    def remember(self, records: Iterable[Record]) -> None:
        """Scheduled samples are always emitted: they are the new reference."""
        for record in records:
            if isinstance(record, Reading) and record.point in self.bands:
                self.last[record.point] = record.value

    def changes(self, records: Iterable[Record]) -> list[Reading]:
        """The readings of an extra poll worth emitting (as unscheduled readings)."""
        out: list[Reading] = []
        for record in records:
            point = record.point
            if not isinstance(record, Reading) or point not in self.bands:
                continue
            if point in self.last and not changed(
                record.value, self.last[point], self.bands[point]
            ):
                continue
            self.last[point] = record.value
            out.append(replace(record, scheduled_at=None))
        return out
