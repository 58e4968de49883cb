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
from bisect import bisect_left
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from difflib import get_close_matches
from functools import lru_cache

from engine.errors import Finding, Location, warning
from engine.model import Device, DeviceSelector, Point, PointSelector, Policy, Project

_GLOB_CHARS = re.compile(r"[*?\[]")


def glob_shape(pattern: str) -> tuple[str, str]:
    """How a pattern is matched: ``exact``, ``prefix`` (``lit*``), ``suffix`` (``*lit``),
    ``infix`` (``*lit*``), each with its literal part, or ``regex`` with the pattern."""
    if not _GLOB_CHARS.search(pattern):
        return "exact", pattern
    inner = pattern.strip("*")
    if _GLOB_CHARS.search(inner) or len(pattern) - len(inner) > 2:
        return "regex", pattern
    head, tail = pattern.startswith("*"), pattern.endswith("*")
    if head and tail and len(pattern) > 1:
        return "infix", inner
    return ("suffix" if head else "prefix"), inner


@lru_cache(maxsize=4096)
def _regex(pattern: str) -> re.Pattern[str]:
    return re.compile(fnmatch.translate(pattern))


class NameMatcher:
    """Any-of matching of one selector key, at a cost proportional to the patterns' shapes.

    Exact values are a set; ``lit*``, ``*lit`` and ``*lit*`` globs are string
    tests on their literal part (no regular expression is compiled for them,
    which at tens of thousands of globs was most of a compilation); other
    globs are compiled one by one, once.
    """

    def __init__(self, patterns: Iterable[str]) -> None:
        self.exact: set[str] = set()
        self.prefixes: dict[int, set[str]] = defaultdict(set)
        self.suffixes: dict[int, set[str]] = defaultdict(set)
        self.infixes: list[str] = []
        self.regexes: list[re.Pattern[str]] = []
        for pattern in dict.fromkeys(patterns):
            self._add(*glob_shape(pattern))

    def _add(self, shape: str, text: str) -> None:
        if shape == "exact":
            self.exact.add(text)
        elif shape == "prefix":
            self.prefixes[len(text)].add(text)
        elif shape == "suffix":
            self.suffixes[len(text)].add(text)
        elif shape == "infix":
            self.infixes.append(text)
        else:
            self.regexes.append(_regex(text))

    def __call__(self, value: str | None) -> bool:
        if value is None:
            return False
        return (
            value in self.exact
            or any(value[:n] in texts for n, texts in self.prefixes.items())
            or any(value[len(value) - n :] in texts for n, texts in self.suffixes.items())
            or any(text in value for text in self.infixes)
            or any(regex.match(value) for regex in self.regexes)
        )


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

SUGGESTIONS = 100
"""Values that match nothing given a "did you mean": enough for any real mistake, bounded
for a policy of thousands of them."""

_NEAR = 200
"""Names on each side of a word, in sorted and in reversed-sorted order, among which the
nearest is looked for when there are many: a typo keeps the start or the end of a name."""


class Known:
    """The names one selector key can match in the inventories, and the nearest to a word."""

    def __init__(self, names: Iterable[str | None]) -> None:
        self.names = frozenset(n for n in names if n is not None)
        self._sorted: list[str] | None = None
        self._reversed: list[str] = []

    def matched(self, pattern: str) -> bool:
        """Whether ``pattern`` matches at least one name (a prefix or suffix by bisection)."""
        shape, text = glob_shape(pattern)
        if shape == "exact":
            return text in self.names
        if shape in ("prefix", "suffix"):
            names, word = self._orders()[shape == "suffix"], text
            if shape == "suffix":
                word = text[::-1]
            at = bisect_left(names, word)
            return at < len(names) and names[at].startswith(word)
        match = NameMatcher([pattern])
        return any(match(name) for name in self.names)

    def nearest(self, word: str) -> str | None:
        """The name closest to ``word`` (difflib's ratio), if one is close enough."""
        if len(self.names) <= 2 * _NEAR:
            pool: Iterable[str] = sorted(self.names)
        else:
            ordered, backwards = self._orders()
            at, back = bisect_left(ordered, word), bisect_left(backwards, word[::-1])
            pool = {*ordered[max(0, at - _NEAR) : at + _NEAR]}
            pool |= {name[::-1] for name in backwards[max(0, back - _NEAR) : back + _NEAR]}
            pool = sorted(pool)
        close = get_close_matches(word, pool, n=1)
        return close[0] if close else None

    def _orders(self) -> tuple[list[str], list[str]]:
        if self._sorted is None:
            self._sorted = sorted(self.names)
            self._reversed = sorted(name[::-1] for name in self.names)
        return self._sorted, self._reversed


@dataclass
class _Hints:
    """What the unmatched-value check knows of the inventories, and its suggestion budget."""

    known: dict[str, Known]
    labels: dict[str, Known]
    left: int = SUGGESTIONS

    def hint(self, word: str, known: Known) -> str:
        if glob_shape(word)[0] != "exact" or self.left <= 0:
            return ""
        self.left -= 1
        near = known.nearest(word)
        return f" (did you mean '{near}'?)" if near else ""


def unmatched_patterns(project: Project) -> list[Finding]:
    """A warning for every selector value that matches nothing in the inventories.

    A pattern that matches nothing is almost always a typo (``reactor_*`` for
    ``reactor-*``, ``plant-basle``) that silently narrows a policy, so it is
    always reported, with the nearest name that exists for a plain value.
    """
    devices = [d for s in project.sites for d in s.devices]
    points = [p for d in devices for p in d.points]
    known = {
        **{f"devices.{k}": Known(get(d) for d in devices) for k, get in _DEVICE_KEYS.items()},
        **{f"points.{k}": Known(get(p) for p in points) for k, get in _POINT_KEYS.items()},
        "devices.labels": Known(label for d in devices for label in d.labels),
    }
    values: dict[str, set[str]] = defaultdict(set)
    for device in devices:
        for label, value in device.labels.items():
            values[label].add(value)
    hints = _Hints(known, {label: Known(names) for label, names in values.items()})
    findings: list[Finding] = []
    for policy in project.policies:
        findings += _check_devices(policy, hints)
        findings += _check_selector(
            policy, "points", _point_patterns(policy.points), policy.points.locations, hints
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


def _check_devices(policy: Policy, hints: _Hints) -> list[Finding]:
    selector = policy.devices
    patterns = {**_device_patterns(selector), "labels": selector.has_label}
    findings = _check_selector(policy, "devices", patterns, selector.locations, hints)
    for key, labels in (("labels", selector.labels), ("labels_not", selector.labels_not)):
        findings += _check_labels(policy, key, labels, selector.locations, hints)
    return findings


def _check_labels(
    policy: Policy,
    key: str,
    labels: Mapping[str, tuple[str, ...]],
    locations: Mapping[str, Location],
    hints: _Hints,
) -> list[Finding]:
    """A label no device has, or a value no device's label has."""
    findings = []
    for label, values in labels.items():
        place = locations.get(f"{key}.{label}", locations.get(key))
        if label not in hints.labels:
            hint = hints.hint(label, hints.known["devices.labels"])
            message = (
                f"policy {policy.id}: applies.devices.{key} '{label}' is a label no device has"
            )
            findings.append(_unmatched(place, message + hint))
            continue
        known = hints.labels[label]
        for value in values:
            if not known.matched(value):
                where = locations.get(f"{key}.{label}[{value}]", place)
                message = f"policy {policy.id}: applies.devices.{key}.{label} '{value}'"
                findings.append(
                    _unmatched(where, f"{message} matches no device" + hints.hint(value, known))
                )
    return [f for f in findings if f is not None]


def _check_selector(
    policy: Policy,
    kind: str,
    patterns: Mapping[str, tuple[str, ...]],
    locations: Mapping[str, Location],
    hints: _Hints,
) -> list[Finding]:
    findings = []
    noun = "device" if kind == "devices" else "point"
    for key, values in patterns.items():
        known = hints.known[f"{kind}.{key}"]
        written = "has_label" if key == "labels" else key
        for pattern in values:
            if known.matched(pattern):
                continue
            location = locations.get(f"{written}[{pattern}]", locations.get(written))
            message = f"policy {policy.id}: applies.{kind}.{written} '{pattern}' matches no {noun}"
            findings.append(_unmatched(location, message + hints.hint(pattern, known)))
    return [f for f in findings if f is not None]


def _unmatched(location: Location | None, message: str) -> Finding | None:
    if location is None:
        return None
    return warning(location, "selector-matches-nothing", message)
