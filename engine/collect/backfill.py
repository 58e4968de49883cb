"""Gap records for the slots a collector did not run, found when it starts again.

Records still in memory when a collector dies are lost with it; what was
stored ends at each device's last stored batch window. On restart, every slot
scheduled from that window's end until now becomes a ``shutdown`` gap record,
so the store still shows that each scheduled sample was taken or why not:
nothing is silently lost. Subscriptions have no slots and get none.

A long outage is bounded: after :data:`MAX_SLOTS` slots of one read group, one
more gap per point, at the next slot, says how many slots were not taken until
the restart (docs/runtime.md).
"""

from __future__ import annotations

from collections.abc import Iterator

from engine.collect.link import gaps
from engine.collect.scheduler import group_schedule, to_datetime
from engine.plans.body import PlanBody
from engine.records import GapReason, Record

MAX_SLOTS = 10_000
DETAIL = "the collector was not running"


def missed(
    plan: PlanBody, since_ms: int, until_ms: int, fallback_every_ms: int
) -> Iterator[Record]:
    """Gap records of each slot of ``plan`` in ``[since_ms, until_ms)``, per group in time order."""
    device = plan.device.id
    for group in plan.read_groups:
        if not group.polled:
            continue
        schedule = group_schedule(group, plan.point, plan.timezone, fallback_every_ms)
        names = list(group.points)
        slot, taken = schedule.first_at_or_after(since_ms), 0
        while slot < until_ms and taken < MAX_SLOTS:
            yield from gaps(device, names, slot, GapReason.SHUTDOWN, DETAIL)
            slot, taken = schedule.next_after(slot), taken + 1
        if slot < until_ms:
            yield from gaps(
                device,
                names,
                slot,
                GapReason.SHUTDOWN,
                f"{DETAIL}; this and every slot until "
                f"{to_datetime(until_ms).isoformat()} not taken",
            )
