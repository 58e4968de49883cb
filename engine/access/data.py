"""Data through the guard: the plans a request is decided on, and the records it may read.

:func:`targets` finds, for each point asked for, every plan its data in the
range was stored under (each batch names its plan), or the device's latest
plan when the range holds none. :func:`records` reads the allowed points'
records in batch order, each with its batch, its position and whether its
batch verifies on its own (:mod:`engine.verify.single`) when trusted keys
are given.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection

from engine.access.guard import Decision, Target
from engine.canonical import canonical_json
from engine.plans.body import PlanBody
from engine.store import data
from engine.verify.single import batch_problem
from engine.verify.trust import Trust

COLUMNS = (
    "device",
    "point",
    "type",
    "time",
    "value",
    "quality",
    "reason",
    "detail",
    "collected_at",
    "scheduled_at",
    "source_at",
    "raw_code",
    "batch",
    "position",
    "batch_verified",
)
"""The columns of a record read through the guard (docs/access.md)."""


@dataclass(frozen=True)
class Range:
    """Instants (``instant`` text) bounding the records' times: ``[start, end)``, either open."""

    start: str | None = None
    end: str | None = None

    def holds(self, moment: str) -> bool:
        return (self.start is None or moment >= self.start) and (
            self.end is None or moment < self.end
        )


def targets(
    conn: Connection, device: str, points: Sequence[str] | None, span: Range
) -> list[Target]:
    """What to decide on: ``points`` of ``device`` (all its plans' points when ``None``), each
    with the plans in force for its data in ``span``."""
    plans = plans_in_force(conn, device, span)
    names = (
        points if points is not None else sorted({p.name for plan in plans for p in plan.points})
    )
    return [Target(device, name, plans) for name in names]


def plans_in_force(conn: Connection, device: str, span: Range) -> list[PlanBody]:
    """The plans the device's batches in ``span`` name; else (no data there) its latest plan."""
    digests = sorted({b.plan_digest for b in data.batches(conn, device, span.start, span.end)})
    found = [p for p in (data.plan(conn, d) for d in digests) if p is not None]
    if not found:
        latest = data.latest_plan(conn, device)
        found = [latest] if latest is not None else []
    return found


def records(
    conn: Connection, decision: Decision, span: Range, trust: Trust | None
) -> Iterator[dict[str, Any]]:
    """The records of the points ``decision`` allows, in ``span``, device by device in batch
    order; each a dict of :data:`COLUMNS`."""
    by_device: dict[str, set[str]] = {}
    for point in decision.allowed:
        by_device.setdefault(point.device, set()).add(point.point)
    for device, points in by_device.items():
        yield from _device_records(conn, device, points, span, trust)


def _device_records(
    conn: Connection, device: str, points: set[str], span: Range, trust: Trust | None
) -> Iterator[dict[str, Any]]:
    needles = [b'"point":' + canonical_json(p) + b"," for p in points]
    plans: dict[str, PlanBody | None] = {}
    for batch in data.batches(conn, device, span.start, span.end):
        leaves = data.leaves(conn, batch.id)
        verified = _verified(conn, batch, leaves, plans, trust)
        for position, leaf in leaves:
            if not any(needle in leaf for needle in needles):
                continue
            record = json.loads(leaf)
            moment = record.get("scheduled_at") or record["collected_at"]
            if record["point"] in points and span.holds(moment):
                yield _row(record, moment, batch.id, position, verified)


def _verified(
    conn: Connection,
    batch: data.StoredBatch,
    leaves: list[tuple[int, bytes]],
    plans: dict[str, PlanBody | None],
    trust: Trust | None,
) -> bool | None:
    if trust is None:
        return None
    if batch.plan_digest not in plans:
        plans[batch.plan_digest] = data.plan(conn, batch.plan_digest)
    return batch_problem(batch, leaves, plans[batch.plan_digest], trust) is None


def _row(
    record: dict[str, Any], moment: str, batch: int, position: int, verified: bool | None
) -> dict[str, Any]:
    return {
        "device": record["device"],
        "point": record["point"],
        "type": record["type"],
        "time": moment,
        "value": record.get("value"),
        "quality": record.get("quality"),
        "reason": record.get("reason"),
        "detail": record.get("detail"),
        "collected_at": record.get("collected_at"),
        "scheduled_at": record.get("scheduled_at"),
        "source_at": record.get("source_at"),
        "raw_code": record.get("raw_code"),
        "batch": batch,
        "position": position,
        "batch_verified": verified,
    }
