"""Stage 3, select: which policies govern which points.

Selectors are compiled once into matchers (exact names become set look-ups,
globs become one compiled regular expression per key). Device matching is
done once per (policy, device); point matching is memoised on the point's
(name, signal, unit), because real inventories repeat the same point shapes
across many devices of one kind. At 2,000 devices x 50 points x 100
policies this keeps selection well under a second.
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

from engine.errors import Finding, Location, warning
from engine.model import Device, DeviceSelector, Point, PointSelector, Policy, Project

_GLOB_CHARS = re.compile(r"[*?\[]")


class NameMatcher:
    """Any-of matching of one selector key: exact values by set, globs by one regex."""

    def __init__(self, patterns: Iterable[str]) -> None:
        patterns = tuple(patterns)
        self.exact = frozenset(p for p in patterns if not _GLOB_CHARS.search(p))
        globs = [fnmatch.translate(p) for p in patterns if _GLOB_CHARS.search(p)]
        self.glob = re.compile("|".join(globs)) if globs else None

    def __call__(self, value: str | None) -> bool:
        if value is None:
            return False
        return value in self.exact or bool(self.glob and self.glob.match(value))


def _any(_: object) -> bool:
    return True


def _matcher(patterns: tuple[str, ...]) -> Callable[[str | None], bool]:
    return NameMatcher(patterns) if patterns else _any


class DeviceMatcher:
    """A compiled :class:`DeviceSelector`."""

    def __init__(self, selector: DeviceSelector) -> None:
        self.keys: list[tuple[Callable[[str | None], bool], Callable[[Device], str | None]]] = [
            (_matcher(selector.site), lambda d: d.site),
            (_matcher(selector.zone), lambda d: d.zone),
            (_matcher(selector.class_), lambda d: d.class_),
            (_matcher(selector.id), lambda d: d.id),
            (_matcher(selector.protocol), lambda d: d.protocol),
        ]
        self.keys = [(m, get) for m, get in self.keys if m is not _any]
        self.labels = {k: NameMatcher(v) for k, v in selector.labels.items()}
        self.labels_not = {k: NameMatcher(v) for k, v in selector.labels_not.items()}
        self.has_label = selector.has_label

    def __call__(self, device: Device) -> bool:
        if not all(match(get(device)) for match, get in self.keys):
            return False
        labels = device.labels
        if not all(match(labels.get(k)) for k, match in self.labels.items()):
            return False
        if any(match(labels.get(k)) for k, match in self.labels_not.items()):
            return False
        return not self.has_label or any(k in labels for k in self.has_label)


class PointMatcher:
    """A compiled :class:`PointSelector`, memoised on the point's shape."""

    def __init__(self, selector: PointSelector) -> None:
        self.name = _matcher(selector.name)
        self.signal = _matcher(selector.signal)
        self.unit = _matcher(selector.unit)
        self.everything = not (selector.name or selector.signal or selector.unit)
        self.cache: dict[tuple[str, str | None, str | None], bool] = {}

    def __call__(self, point: Point) -> bool:
        if self.everything:
            return True
        key = (point.name, point.signal, point.unit)
        hit = self.cache.get(key)
        if hit is None:
            hit = self.name(point.name) and self.signal(point.signal) and self.unit(point.unit)
            self.cache[key] = hit
        return hit


@dataclass(frozen=True)
class Target:
    """One point of one device, in inventory order."""

    device: Device
    point: Point

    @property
    def ref(self) -> str:
        return f"{self.device.id}/{self.point.name}"


@dataclass
class Selection:
    """``governing[i]`` lists the policies (sorted by id) that select ``targets[i]``."""

    targets: list[Target] = field(default_factory=list)
    governing: list[list[Policy]] = field(default_factory=list)
    findings: list[Finding] = field(default_factory=list)

    def governed_count(self) -> dict[str, int]:
        """How many points each policy governs (0 for a policy that governs nothing)."""
        counts: dict[str, int] = {}
        for policies in self.governing:
            for policy in policies:
                counts[policy.id] = counts.get(policy.id, 0) + 1
        return counts


def select(project: Project) -> Selection:
    """Match every policy against every point of every site, in inventory order."""
    policies = sorted(project.policies, key=lambda p: p.id)
    compiled = [(p, DeviceMatcher(p.devices), PointMatcher(p.points)) for p in policies]
    selection = Selection()
    for site in project.sites:
        for device in site.devices:
            matching = [(p, pm) for p, dm, pm in compiled if dm(device)]
            for point in device.points:
                selection.targets.append(Target(device, point))
                selection.governing.append([p for p, pm in matching if pm(point)])
    selection.findings = unmatched_patterns(project) + idle_policies(policies, selection)
    return selection


def idle_policies(policies: list[Policy], selection: Selection) -> list[Finding]:
    """A warning for each policy that governs no point of the compiled sites."""
    counts = selection.governed_count()
    return [
        warning(p.location, "policy-governs-nothing", f"policy {p.id} governs no point")
        for p in policies
        if p.id not in counts
    ]


_DEVICE_KEYS: Mapping[str, Callable[[Device], str | None]] = {
    "site": lambda d: d.site,
    "zone": lambda d: d.zone,
    "class": lambda d: d.class_,
    "id": lambda d: d.id,
    "protocol": lambda d: d.protocol,
}
_POINT_KEYS: Mapping[str, Callable[[Point], str | None]] = {
    "name": lambda p: p.name,
    "signal": lambda p: p.signal,
    "unit": lambda p: p.unit,
}


def unmatched_patterns(project: Project) -> list[Finding]:
    """A warning for every selector value that matches nothing in the inventories.

    A pattern that matches nothing is almost always a typo (``reactor_*`` for
    ``reactor-*``) that silently narrows a policy, so it is always reported.
    """
    devices = [d for s in project.sites for d in s.devices]
    points = [p for d in devices for p in d.points]
    universe = {
        **{f"devices.{k}": {get(d) for d in devices} - {None} for k, get in _DEVICE_KEYS.items()},
        **{f"points.{k}": {get(p) for p in points} - {None} for k, get in _POINT_KEYS.items()},
    }
    findings: list[Finding] = []
    for policy in project.policies:
        findings += _check_selector(
            policy.id,
            "devices",
            _device_patterns(policy.devices),
            policy.devices.locations,
            universe,
        )
        findings += _check_selector(
            policy.id, "points", _point_patterns(policy.points), policy.points.locations, universe
        )
    return findings


def _device_patterns(selector: DeviceSelector) -> dict[str, tuple[str, ...]]:
    return {
        "site": selector.site,
        "zone": selector.zone,
        "class": selector.class_,
        "id": selector.id,
        "protocol": selector.protocol,
    }


def _point_patterns(selector: PointSelector) -> dict[str, tuple[str, ...]]:
    return {"name": selector.name, "signal": selector.signal, "unit": selector.unit}


def _check_selector(
    policy_id: str,
    kind: str,
    patterns: Mapping[str, tuple[str, ...]],
    locations: Mapping[str, Location],
    universe: Mapping[str, set[str | None]],
) -> list[Finding]:
    findings = []
    noun = "device" if kind == "devices" else "point"
    for key, values in patterns.items():
        known = universe[f"{kind}.{key}"]
        for pattern in values:
            match = NameMatcher([pattern])
            if not any(match(value) for value in known):
                location = locations.get(f"{key}[{pattern}]", locations.get(key))
                if location is None:
                    continue
                findings.append(
                    warning(
                        location,
                        "selector-matches-nothing",
                        f"policy {policy_id}: applies.{kind}.{key} '{pattern}' matches no {noun}",
                    )
                )
    return findings
