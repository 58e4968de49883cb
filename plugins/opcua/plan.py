"""OPC UA read groups: bulk reads per schedule, subscriptions per publishing interval.

A point is *read* (polled with the Read service) or *subscribed* (a monitored
item that the server reports on change). Its address's ``mode`` decides; by
default a point whose merged capture has an ``on_change`` deadband is
subscribed and every other point is read.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

from engine.model import Device, Limits, PlannedPoint, PlanProblem, ReadGroupPlan
from plugins.opcua.nodeid import NodeIdError, parse_node_id
from plugins.planning import Schedule, repeats

MAX_NODES_PER_READ = 100
"""Nodes per Read request when the device sets no ``limits.max_nodes_per_read``."""

DEFAULT_PUBLISHING_INTERVAL_MS = 1000
"""Publishing interval of subscribed points that have no ``capture.every``."""

SubscriptionKey = tuple[int, float | None]


def plan_read_groups(device: Device, points: Sequence[PlannedPoint]) -> ReadGroupPlan:
    """The read groups of an OPC UA device and the problems that make it unplannable."""
    reads = [p for p in points if mode(p) == "read"]
    subscribed = [p for p in points if mode(p) == "subscribe"]
    return ReadGroupPlan(
        groups=[*_read_groups(reads, device.limits), *_subscriptions(subscribed)],
        problems=[*_security_problems(device), *_duplicate_problems(points)],
    )


def mode(point: PlannedPoint) -> str:
    """``read`` or ``subscribe``: as the address says, else by whether a deadband is set."""
    default = "read" if point.deadband is None else "subscribe"
    return str(point.point.address.get("mode", default))


def _read_groups(points: Iterable[PlannedPoint], limits: Limits) -> Iterator[dict[str, Any]]:
    """One bulk read per schedule and per ``max_nodes_per_read`` nodes, in inventory order."""
    size = MAX_NODES_PER_READ if limits.max_nodes_per_read is None else limits.max_nodes_per_read
    parts: dict[Schedule, list[PlannedPoint]] = defaultdict(list)
    for p in points:
        parts[Schedule.of(p)].append(p)
    for schedule in sorted(parts, key=lambda s: s.sort_key):
        part = parts[schedule]
        for first in range(0, len(part), size):
            chunk = part[first : first + size]
            yield {"kind": "read", **schedule.as_plan(), **_nodes_and_points(chunk)}


def _subscriptions(points: Iterable[PlannedPoint]) -> Iterator[dict[str, Any]]:
    """One subscription per publishing interval and deadband (a filter of all its items)."""
    parts: dict[SubscriptionKey, list[PlannedPoint]] = defaultdict(list)
    for p in points:
        parts[(p.every_ms or DEFAULT_PUBLISHING_INTERVAL_MS, p.deadband)].append(p)
    for interval, deadband in sorted(parts, key=lambda k: (k[0], k[1] is not None, k[1] or 0)):
        group: dict[str, Any] = {"kind": "subscribe", "publishing_interval_ms": interval}
        if deadband is not None:
            group["deadband"] = deadband
        yield group | _nodes_and_points(parts[(interval, deadband)])


def _nodes_and_points(points: Sequence[PlannedPoint]) -> dict[str, list[str]]:
    return {
        "nodes": [str(p.point.address["node"]) for p in points],
        "points": [p.point.name for p in points],
    }


def _security_problems(device: Device) -> Iterator[PlanProblem]:
    """Signing and encryption need a security policy, and a policy needs one of them.

    Cerberus cannot say "this value requires that one", so this endpoint rule
    is checked here, for the device as a whole.
    """
    security_mode = device.endpoint.get("security_mode", "None")
    policy = device.endpoint.get("security_policy", "None")
    if security_mode != "None" and policy == "None":
        yield PlanProblem(
            None,
            "opcua-security-policy",
            f"security_mode {security_mode} needs a security_policy other than None,"
            " such as Basic256Sha256",
        )
    elif security_mode == "None" and policy != "None":
        yield PlanProblem(
            None,
            "opcua-security-policy",
            f"security_policy {policy} has no effect with security_mode None: nothing is"
            " signed or encrypted; set security_mode Sign or SignAndEncrypt",
        )


def _duplicate_problems(points: Iterable[PlannedPoint]) -> Iterator[PlanProblem]:
    keyed = ((_node_key(p.point.address["node"]), p.point.name) for p in points)
    for node, earlier, later in repeats(keyed):
        message = f"point '{later}' reads node '{node}', which point '{earlier}' already reads"
        yield PlanProblem(later, "opcua-duplicate-node", message)


def _node_key(text: str) -> str:
    """The canonical NodeId, so that ``i=85`` and ``ns=0;i=85`` are the same node.

    Text that is no NodeId was already reported by the address check; it is
    compared as written.
    """
    try:
        return str(parse_node_id(text))
    except NodeIdError:
        return text
