"""Modbus read groups: the fewest requests that read a device's points.

Points are split by (unit, table, schedule), since one request reads one table
of one unit and a group is read at the instants of its schedule; within each
part :func:`~plugins.modbus.coalesce.coalesce` forms the requests. A value
that cannot be read at all (past register 65535, or wider than one request)
is reported and left out of every group.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

from engine.model import Device, Limits, PlannedPoint, PlanProblem, ReadGroupPlan
from plugins.modbus.address import NOUNS, Slot, slot
from plugins.modbus.coalesce import coalesce
from plugins.modbus.schema import (
    BIT_TABLES,
    FUNCTION_CODES,
    LAST_REGISTER,
    MAX_BITS_PER_READ,
    MAX_REGISTERS_PER_READ,
)
from plugins.planning import Schedule

GroupKey = tuple[int, str, Schedule]


def plan_read_groups(device: Device, points: Sequence[PlannedPoint]) -> ReadGroupPlan:
    """The read groups of a Modbus device and the problems that make it unplannable."""
    endpoint_unit = int(device.endpoint.get("unit", 1))
    slots = [slot(p.point.name, i, p.point.address, endpoint_unit) for i, p in enumerate(points)]
    schedules = [Schedule.of(p) for p in points]
    problems = [
        *_range_problems(slots),
        *_too_long_problems(slots, device.limits),
        *_clash_problems(slots),
    ]
    readable = [
        (s, schedule)
        for s, schedule in zip(slots, schedules, strict=True)
        if s.end <= LAST_REGISTER and s.width <= request_limit(s.table, device.limits)[1]
    ]
    return ReadGroupPlan(groups=_groups(readable, device.limits), problems=problems)


def request_limit(table: str, limits: Limits) -> tuple[str, int]:
    """The limit that bounds one request of ``table``: its name and value.

    The device's own limit applies when given; the protocol maximum caps it
    (a device limit above it is no reason to send a request no device answers).
    """
    if table in BIT_TABLES:
        return "limits.max_bits_per_read", _capped(limits.max_bits_per_read, MAX_BITS_PER_READ)
    return "limits.max_registers_per_read", _capped(
        limits.max_registers_per_read, MAX_REGISTERS_PER_READ
    )


def _capped(limit: int | None, protocol_max: int) -> int:
    return protocol_max if limit is None else min(limit, protocol_max)


# --- groups -------------------------------------------------------------------------------


def _groups(readable: Iterable[tuple[Slot, Schedule]], limits: Limits) -> list[dict[str, Any]]:
    parts: dict[GroupKey, list[Slot]] = defaultdict(list)
    for s, schedule in readable:
        parts[(s.unit, s.table, schedule)].append(s)
    groups: list[dict[str, Any]] = []
    for key in sorted(parts, key=lambda k: (k[0], k[1], k[2].sort_key)):
        in_order = sorted(parts[key], key=lambda s: s.address_key)
        max_count = request_limit(key[1], limits)[1]
        groups += [_group(key, run) for run in coalesce(in_order, max_count, limits.max_gap)]
    return groups


def _group(key: GroupKey, run: list[Slot]) -> dict[str, Any]:
    unit, table, schedule = key
    start, end = run[0].start, max(s.end for s in run)
    mapped = {address for s in run for address in range(s.start, s.end + 1)}
    return {
        "unit": unit,
        "table": table,
        "start": start,
        "count": end - start + 1,
        "function": FUNCTION_CODES[table],
        **schedule.as_plan(),
        "points": [s.point for s in run],
        "unused": [address for address in range(start, end + 1) if address not in mapped],
    }


# --- problems -----------------------------------------------------------------------------


def _range_problems(slots: Iterable[Slot]) -> Iterator[PlanProblem]:
    for s in slots:
        if s.end > LAST_REGISTER:
            message = (
                f"point '{s.point}' reads {s.describe()}, past the last register, {LAST_REGISTER}"
            )
            yield PlanProblem(s.point, "modbus-address-range", message)


def _too_long_problems(slots: Iterable[Slot], limits: Limits) -> Iterator[PlanProblem]:
    for s in slots:
        name, limit = request_limit(s.table, limits)
        if s.width > limit:
            message = (
                f"point '{s.point}' reads {s.describe()}: {s.width} registers, more than one"
                f" request may read ({name} {limit}); a value is never split across requests"
            )
            yield PlanProblem(s.point, "modbus-value-too-long", message)


def _clash_problems(slots: Iterable[Slot]) -> Iterator[PlanProblem]:
    """Points reading the same addresses: each pair once, on the later point in the inventory."""
    tables: dict[tuple[int, str], list[Slot]] = defaultdict(list)
    for s in slots:
        tables[(s.unit, s.table)].append(s)
    for key in sorted(tables):
        for first, second in _overlapping_pairs(tables[key]):
            problem = _clash(first, second)
            if problem is not None:
                yield problem


def _overlapping_pairs(slots: Iterable[Slot]) -> Iterator[tuple[Slot, Slot]]:
    """Pairs of slots sharing an address, each in inventory order, in address order."""
    active: list[Slot] = []
    for s in sorted(slots, key=lambda s: s.address_key):
        active = [a for a in active if a.end >= s.start]
        for a in active:
            yield (a, s) if a.order < s.order else (s, a)
        active.append(s)


def _clash(first: Slot, second: Slot) -> PlanProblem | None:
    """The problem of two overlapping slots; ``None`` for two bits of one register."""
    if first.bit is not None and second.bit is not None and first.bit != second.bit:
        return None
    if first.start == second.start and first.type != second.type:
        message = (
            f"point '{second.point}' reads {NOUNS[second.table]} {second.start} on unit"
            f" {second.unit} as {second.type}, but point '{first.point}' reads it as {first.type}"
        )
        return PlanProblem(second.point, "modbus-type-conflict", message)
    message = (
        f"point '{second.point}' ({second.describe()}) overlaps point '{first.point}'"
        f" ({first.describe()}); an address belongs to one point only, except that bools"
        " may read different bits of one register"
    )
    return PlanProblem(second.point, "modbus-overlap", message)
