"""Helpers the built-in protocol planners share: schedules and repeated keys.

Two points can share a request only when they are read at the same instants,
so planners group by :class:`Schedule` before anything else. A schedule is
the merged ``capture.every_ms`` and ``capture.cron`` of a point; the plan
writes it with the policy language's keys, leaving out what is unset.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any, TypeVar

from engine.model import PlannedPoint

K = TypeVar("K", bound=Hashable)


@dataclass(frozen=True)
class Schedule:
    every_ms: int | None
    cron: tuple[str, ...] = ()

    @classmethod
    def of(cls, point: PlannedPoint) -> Schedule:
        """The schedule of ``point``; cron triggers sorted and de-duplicated."""
        return cls(point.every_ms, tuple(sorted(set(point.cron))))

    @property
    def sort_key(self) -> tuple[bool, int, tuple[str, ...]]:
        """Intervals first, shortest first; then cron-only schedules."""
        return (self.every_ms is None, self.every_ms or 0, self.cron)

    def as_plan(self) -> dict[str, Any]:
        """``every_ms`` and ``cron`` as a group dict carries them: absent when unset."""
        plan: dict[str, Any] = {}
        if self.every_ms is not None:
            plan["every_ms"] = self.every_ms
        if self.cron:
            plan["cron"] = list(self.cron)
        return plan


def repeats(keyed: Iterable[tuple[K, str]]) -> Iterator[tuple[K, str, str]]:
    """``(key, earlier, later)`` for each point whose key an earlier point already has."""
    first: dict[K, str] = {}
    for key, name in keyed:
        if key in first:
            yield key, first[key], name
        else:
            first[key] = name
