"""The whole inventory as its protocol plugins see it: address overlaps and type clashes.

A plugin finds the problems that make a device unplannable (two points on
one register, a value wider than one request) when it groups reads. The plan
stage asks it only about the points policies capture, so an inventory bug
between points nobody governs would surface later, during an unrelated
policy change. Validation asks the plugin about every point of every valid
device, unscheduled, and reports what it finds as site errors, each at the
address of the point concerned.
"""

from __future__ import annotations

from collections.abc import Sequence

import pluggy

from engine.errors import Finding, PluginError, error
from engine.model import Device, PlannedPoint, PlanProblem, ReadGroupPlan


def inventory_problems(devices: Sequence[Device], pm: pluggy.PluginManager) -> list[Finding]:
    """Every problem the devices' plugins find with all their points read together."""
    findings: list[Finding] = []
    for device in devices:
        points = [PlannedPoint(point, every_ms=None) for point in device.points]
        result = pm.hook.converge_plan_read_groups(device=device, points=points)
        if isinstance(result, ReadGroupPlan):
            findings += placed(device, result.problems)
        elif result is not None:
            kind = type(result).__name__
            raise PluginError(f"the {device.protocol} plugin returned {kind}, not a ReadGroupPlan")
    return findings


def placed(device: Device, problems: Sequence[PlanProblem]) -> list[Finding]:
    """A plugin's problems as findings: at the point's address, or at the device."""
    places = {p.name: p.address_location for p in device.points}
    return [
        error(
            places.get(problem.point or "", device.location),
            problem.code,
            f"device {device.id}: {problem.message}",
        )
        for problem in problems
    ]
