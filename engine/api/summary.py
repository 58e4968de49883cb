"""Summaries per interval, as maintenance systems take meter readings: count, min, max, mean
and gaps, over the records the guard allowed."""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from engine.api.params import Window
from engine.sign.leaf import instant


@dataclass
class Interval:
    """What the records of one interval add up to."""

    start: datetime
    end: datetime
    count: int = 0
    """Readings (gap records are counted apart)."""
    numbers: int = 0
    total: float = 0.0
    low: float | None = None
    high: float | None = None
    gaps: int = 0
    unverified: int = 0
    """Records whose batch did not verify on its own."""

    def add(self, row: dict[str, Any]) -> None:
        if row["batch_verified"] is False:
            self.unverified += 1
        if row["type"] != "reading":
            self.gaps += 1
            return
        self.count += 1
        value = row["value"]
        if value.__class__ in (int, float) and math.isfinite(value):
            self.numbers += 1
            self.total += value
            self.low = value if self.low is None else min(self.low, value)
            self.high = value if self.high is None else max(self.high, value)

    def as_json(self) -> dict[str, Any]:
        return {
            "start": instant(self.start),
            "end": instant(self.end),
            "count": self.count,
            "min": self.low,
            "max": self.high,
            "mean": self.total / self.numbers if self.numbers else None,
            "gaps": self.gaps,
            "unverified": self.unverified,
        }


def summarise(rows: Iterable[dict[str, Any]], span: Window, length: timedelta) -> list[Interval]:
    """``rows`` (records of :func:`engine.access.data.records`, all in ``span``) summed per
    interval of ``length`` from the range's start; the last interval ends with the range."""
    count = math.ceil((span.end - span.start) / length)
    intervals = [
        Interval(span.start + i * length, min(span.start + (i + 1) * length, span.end))
        for i in range(count)
    ]
    for row in rows:
        at = datetime.fromisoformat(row["time"])
        intervals[min((at - span.start) // length, count - 1)].add(row)
    return intervals
