"""When stored records expire: the retention of the plan in force when they were stored.

A batch names its plan's digest, and each point of that plan carries its merged
``retention`` (docs/policy-language.md). Expiry is judged on the batch's
*signed window*, never on a record's own time (which a deletion takes away
with the record): every record of a batch lies in ``[window_start,
window_end)``, so

- ``keep_at_least`` counts from the window's **end**: no record of the batch is
  deleted before it has been kept that long;
- ``keep_at_most`` counts from the window's **start**: the records may go once
  the first of them could have reached its ceiling, and every one of them has
  passed it at ``window_end + keep_at_most`` (:attr:`Expiry.gone_by`);
- a point with only ``keep_at_least`` expires when it ends; a point with
  neither is kept for ever.

So a retention run (engine/retention) and ``converge audit verify`` compute the
same expiry from the same signed facts, and a receipt's calculation can be
checked without the deleted records. ``on_expiry`` absent means ``delete``.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Literal

from engine.durations import format_duration
from engine.plans.body import RETENTION_FACETS, PlanPoint, Retention
from engine.sign.leaf import instant

Rule = Literal["keep_at_least", "keep_at_most"]


@dataclass(frozen=True)
class Expiry:
    """When one point's records of one batch window may be deleted, and why."""

    rule: Rule
    """The bound that decides ``expires``."""
    expires: datetime
    """From this instant the records may (and, with ``keep_at_most``, must) go."""
    gone_by: datetime | None
    """``window_end + keep_at_most``: every record of the window is past its ceiling."""
    retention: Retention
    policies: tuple[str, ...]
    """``policy @ path:line:col`` of each policy that set a retention bound the point has."""

    @property
    def on_expiry(self) -> str:
        return self.retention.on_expiry or "delete"

    def due(self, at: datetime) -> bool:
        return at >= self.expires

    def as_json(self) -> dict[str, Any]:
        """The expiry calculation as a deletion receipt records it (docs/retention.md)."""
        r = self.retention
        return {
            "rule": self.rule,
            "keep_at_least_ms": r.keep_at_least_ms,
            "keep_at_most_ms": r.keep_at_most_ms,
            "on_expiry": self.on_expiry,
            "expires": instant(self.expires),
            "policies": list(self.policies),
        }

    def explain(self) -> str:
        """The calculation in words: ``window end + keep_at_least 7y = 2033-…``."""
        r = self.retention
        if self.rule == "keep_at_most":
            assert r.keep_at_most_ms is not None
            return f"window start + keep_at_most {format_duration(r.keep_at_most_ms)}"
        assert r.keep_at_least_ms is not None
        return f"window end + keep_at_least {format_duration(r.keep_at_least_ms)}"


def expiry(point: PlanPoint, window_start: datetime, window_end: datetime) -> Expiry | None:
    """When ``point``'s records stored in the window ``[window_start, window_end)`` expire;
    ``None`` when its plan keeps them for ever (no retention bound)."""
    r = point.retention
    least, most = r.keep_at_least_ms, r.keep_at_most_ms
    if least is None and most is None:
        return None
    rule: Rule = "keep_at_most" if most is not None else "keep_at_least"
    expires = window_start + _ms(most) if most is not None else window_end + _ms(least)
    if least is not None and window_end + _ms(least) > expires:
        rule, expires = "keep_at_least", window_end + _ms(least)
    gone_by = None if most is None else window_end + _ms(most)
    sources = sorted(
        {f"{s.policy} @ {s.at}" for f in RETENTION_FACETS for s in point.provenance.get(f, ())}
    )
    return Expiry(rule, expires, gone_by, r, tuple(sources))


def _ms(value: int | None) -> timedelta:
    return timedelta(milliseconds=value or 0)


__all__ = ["Expiry", "expiry"]
