"""Gap records for the slots a collector did not run at, found when it starts again.

Records still in memory when a collector dies are lost with it. On restart,
the evidence sink knows from when on each device's slots are unaccounted for
(the end of its last sealed batch, or, for a device without one, the first
recorded start of a run that was to collect it: see
:meth:`engine.evidence.writer.Writer.resume`). Every slot of every point
from then until now, polled or subscribed, becomes a ``shutdown`` gap record,
so the store still shows that each slot was taken or why not.

One record per point stands for all its missed slots (a run: first slot,
last slot, count; docs/records.md), however long the outage: it costs what
one window of a running collector costs, whether it lasted a minute or a week.
"""

from __future__ import annotations

from engine.collect.scheduler import Slots, plan_slots, to_datetime
from engine.plans.body import PlanBody
from engine.records import Gap, GapReason

DETAIL = "the collector was not running"
STARTING = "the collector was starting"
"""The detail of the slots between the end of a restart's backfill and its first sample."""


def missed(plan: PlanBody, since_ms: int, until_ms: int, fallback_every_ms: int) -> list[Gap]:
    """A ``shutdown`` gap record per point of ``plan`` for its slots in ``[since_ms, until_ms)``
    (of a run, when it missed more than one), in time order: by first slot, then point."""
    found = [
        gap
        for slots in plan_slots(plan, fallback_every_ms)
        for gap in not_taken(plan.device.id, slots, since_ms, until_ms, DETAIL)
    ]
    return sorted(found, key=lambda gap: (gap.scheduled_at, gap.point))


def not_taken(device: str, slots: Slots, since_ms: int, until_ms: int, detail: str) -> list[Gap]:
    """A ``shutdown`` gap record per point of ``slots`` for its slots in ``[since_ms,
    until_ms)``, of a run when there are several; none when there are none."""
    span = slots.schedule.span(since_ms, until_ms)
    if span is None:
        return []
    first, last, count = span
    start, end = to_datetime(first), to_datetime(last) if count > 1 else None
    return [
        Gap(device, point, start, GapReason.SHUTDOWN, detail, None, end, count)
        for point in slots.points
    ]
