"""``line`` read groups: one ``READ`` request per batch of registers read at the same instants.

Points are split by schedule (points read at different instants never share a
request), then cut into batches of at most ``limits.max_registers_per_read``
registers (default 16), in inventory order. Two points on one register are a
problem that makes the device unplannable.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from engine.model import Device, PlannedPoint, PlanProblem, ReadGroupPlan

DEFAULT_BATCH = 16

Schedule = tuple[int | None, tuple[str, ...]]


def plan_read_groups(device: Device, points: Sequence[PlannedPoint]) -> ReadGroupPlan:
    problems, readable = _duplicates(points)
    batch = device.limits.max_registers_per_read or DEFAULT_BATCH
    groups: list[dict[str, Any]] = []
    for schedule, members in sorted(_by_schedule(readable).items(), key=_schedule_order):
        for start in range(0, len(members), batch):
            groups.append(_group(schedule, members[start : start + batch]))
    return ReadGroupPlan(groups=groups, problems=problems)


def _duplicates(points: Sequence[PlannedPoint]) -> tuple[list[PlanProblem], list[PlannedPoint]]:
    seen: dict[int, str] = {}
    problems, readable = [], []
    for p in points:
        register = int(p.point.address["register"])
        if register in seen:
            problems.append(
                PlanProblem(
                    p.point.name,
                    "line-duplicate-register",
                    f"register {register} is read by {seen[register]} too",
                )
            )
        else:
            seen[register] = p.point.name
            readable.append(p)
    return problems, readable


def _by_schedule(points: Sequence[PlannedPoint]) -> dict[Schedule, list[PlannedPoint]]:
    parts: dict[Schedule, list[PlannedPoint]] = {}
    for p in points:
        parts.setdefault((p.every_ms, tuple(sorted(p.cron))), []).append(p)
    return parts


def _schedule_order(item: tuple[Schedule, object]) -> tuple[bool, int, tuple[str, ...]]:
    every_ms, cron = item[0]
    return (every_ms is None, every_ms or 0, cron)


def _group(schedule: Schedule, members: Sequence[PlannedPoint]) -> dict[str, Any]:
    every_ms, cron = schedule
    group: dict[str, Any] = {"kind": "read"}
    if every_ms is not None:
        group["every_ms"] = every_ms
    if cron:
        group["cron"] = list(cron)
    group["registers"] = [int(p.point.address["register"]) for p in members]
    group["points"] = [p.point.name for p in members]
    return group
