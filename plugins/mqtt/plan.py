"""MQTT read groups: one subscription per topic filter.

MQTT pushes; nothing is polled. A subscription carries the endpoint's QoS
and, when its points have a ``capture.every``, ``expect_every_ms``: the
longest silence the collector accepts before it records a gap.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any

from engine.model import Device, PlannedPoint, PlanProblem, ReadGroupPlan
from plugins.planning import repeats

DEFAULT_QOS = 1


def plan_read_groups(device: Device, points: Sequence[PlannedPoint]) -> ReadGroupPlan:
    """The subscriptions of an MQTT device, by topic, and its duplicate sources."""
    qos = int(device.endpoint.get("qos", DEFAULT_QOS))
    topics: dict[str, list[PlannedPoint]] = defaultdict(list)
    for p in points:
        topics[p.point.address["topic"]].append(p)
    return ReadGroupPlan(
        groups=[_subscription(topic, topics[topic], qos) for topic in sorted(topics)],
        problems=list(_duplicate_problems(points)),
    )


def _subscription(topic: str, points: Sequence[PlannedPoint], qos: int) -> dict[str, Any]:
    group: dict[str, Any] = {"kind": "subscribe", "topic": topic, "qos": qos}
    group["points"] = [p.point.name for p in points]
    intervals = [p.every_ms for p in points if p.every_ms is not None]
    if intervals:
        group["expect_every_ms"] = min(intervals)
    return group


def _duplicate_problems(points: Iterable[PlannedPoint]) -> Iterator[PlanProblem]:
    keyed = ((_source(p.point.address), p.point.name) for p in points)
    for (topic, field), earlier, later in repeats(keyed):
        where = "the raw payload" if field is None else f"field '{field}'"
        message = (
            f"point '{later}' reads {where} of topic '{topic}',"
            f" which point '{earlier}' already reads"
        )
        yield PlanProblem(later, "mqtt-duplicate-source", message)


def _source(address: Mapping[str, Any]) -> tuple[str, str | None]:
    """Where a value comes from: a topic filter and a field (``None``: the whole payload)."""
    return (address["topic"], address.get("field"))
