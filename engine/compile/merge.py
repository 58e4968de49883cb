"""Stage 4, merge: the demands of every governing policy, combined facet by facet.

The rules are the table of POLICY-LANGUAGE.md, declared once in ``RULES``.
Every merged value keeps all its candidates, so that ``explain`` can say who
won, who lost and why; the winners are the plan's provenance. The result is
a function of the *set* of governing policies: file order, policy order and
list order cannot change it.

Exceptions are applied before the rules: an exception in force removes the
demands of *its own* policy for the facet groups it waives, for the points
it matches. An expired exception is a warning and removes nothing.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import date

from engine.compile.select import DeviceMatcher, PointMatcher, Selection, Target
from engine.durations import format_duration
from engine.errors import Finding, Location, error, warning
from engine.model import (
    FACETS,
    Demand,
    Device,
    FacetValue,
    Policy,
    PolicyException,
    facet_group,
)


@dataclass(frozen=True)
class Rule:
    """How candidates of one facet combine: ``pick`` chooses, ``why`` explains losers."""

    kind: str  # "min", "max" or "union"
    why: str
    order: Callable[[FacetValue], object] = lambda v: v


RULES: dict[str, Rule] = {
    "capture.every_ms": Rule("min", "the shortest interval wins"),
    "capture.cron": Rule("union", "all cron triggers apply"),
    "capture.on_change.deadband": Rule("min", "the smallest deadband wins"),
    "retention.keep_at_least_ms": Rule("max", "the longest minimum retention wins"),
    "retention.keep_at_most_ms": Rule("min", "the shortest maximum retention wins"),
    "retention.on_expiry": Rule("max", "archive beats delete", lambda v: v == "archive"),
    "signing.required": Rule("max", "signing is required if any policy requires it"),
    "signing.keys": Rule("union", "every key signs every batch root"),
    "signing.batch_window_ms": Rule("min", "the shortest batch window wins"),
    "access.read": Rule("union", "read grants add up"),
    "access.export": Rule("union", "export grants add up"),
    "access.hold": Rule("union", "hold grants add up"),
    "access.deny": Rule("union", "denials add up and override any grant"),
}
assert tuple(RULES) == FACETS, "every facet needs exactly one merge rule"


@dataclass(frozen=True)
class Candidate:
    """One policy's demand for one facet of one point."""

    policy: str
    value: FacetValue
    location: Location
    won: bool


@dataclass(frozen=True)
class MergedFacet:
    facet: str
    value: FacetValue
    candidates: tuple[Candidate, ...]

    @property
    def rule(self) -> Rule:
        return RULES[self.facet]

    @property
    def winners(self) -> tuple[Candidate, ...]:
        return tuple(c for c in self.candidates if c.won)


@dataclass(frozen=True)
class Waiver:
    """An exception in force for a point, as the plan records it."""

    policy: str
    exception: PolicyException


@dataclass
class MergedPoint:
    target: Target
    policies: list[Policy]
    facets: dict[str, MergedFacet] = field(default_factory=dict)
    waived: list[Waiver] = field(default_factory=list)

    @property
    def governed(self) -> bool:
        return bool(self.policies)

    @property
    def collected(self) -> bool:
        """Governed with a capture demand in force: the plan reads it."""
        return any(facet in self.facets for facet in CAPTURE_FACETS)

    def not_collected(self) -> str | None:
        """Why a governed point is not collected (``None`` when it is, or is ungoverned)."""
        if not self.governed or self.collected:
            return None
        waived = [w for w in self.waived if "capture" in w.exception.waive]
        capturing = {w.policy for w in waived if _captures(w.policy, self.policies)}
        if not capturing:
            names = ", ".join(sorted(p.id for p in self.policies))
            return f"no policy that governs it sets capture ({names})"
        return "; ".join(
            f"the capture of {w.policy} is waived until {w.exception.expires.isoformat()}"
            f" ({w.exception.location})"
            for w in waived
            if w.policy in capturing
        )


CAPTURE_FACETS = ("capture.every_ms", "capture.cron", "capture.on_change.deadband")
"""The facets that make a point collected: any one of them in force."""


def _captures(policy_id: str, policies: list[Policy]) -> bool:
    return any(p.id == policy_id and set(p.demands) & set(CAPTURE_FACETS) for p in policies)


@dataclass
class MergeResult:
    points: list[MergedPoint] = field(default_factory=list)
    findings: list[Finding] = field(default_factory=list)


def merge(selection: Selection, as_of: Callable[[str], date]) -> MergeResult:
    """Merge every target's governing policies; ``as_of(site)`` is the date exceptions use."""
    waivers = _ExceptionIndex()
    conflicts = _Conflicts()
    result = MergeResult()
    shared: dict[tuple[int, ...], dict[str, MergedFacet]] = {}
    for target, policies in zip(selection.targets, selection.governing, strict=True):
        merged = MergedPoint(target, policies)
        for policy in policies:
            waivers.apply(policy, target, as_of(target.device.site), merged)
        key = (*map(id, policies), -1, *(id(w.exception) for w in merged.waived))
        if key not in shared:
            shared[key] = merge_facets(policies, merged.waived)
        merged.facets = shared[key]
        conflicts.check(merged)
        result.points.append(merged)
    result.findings = conflicts.findings() + waivers.findings(selection)
    return result


def merge_facets(policies: list[Policy], waived: list[Waiver]) -> dict[str, MergedFacet]:
    """The merged facets of the demands of ``policies`` that ``waived`` leaves in force.

    Points governed by the same policies under the same waivers share the result,
    which is why it takes no point: at 100,000 points there are only a few hundred.
    """
    removed = {(w.policy, group) for w in waived for group in w.exception.waive}
    demands: dict[str, list[tuple[str, Demand]]] = defaultdict(list)
    for policy in policies:
        for facet, demand in policy.demands.items():
            if (policy.id, facet_group(facet)) not in removed:
                demands[facet].append((policy.id, demand))
    return {f: combine(f, demands[f]) for f in FACETS if demands.get(f)}


def combine(facet: str, demands: Iterable[tuple[str, Demand]]) -> MergedFacet:
    """Apply ``facet``'s rule to its candidates; ties all win, so provenance lists them all."""
    rule = RULES[facet]
    pairs = sorted(set(demands), key=lambda pd: (pd[0], pd[1].location))
    values = [d.value for _, d in pairs]
    if rule.kind == "union":
        value: FacetValue = tuple(sorted({name for v in values for name in v}))  # type: ignore[union-attr]
        won = [True] * len(pairs)
    else:
        pick = min if rule.kind == "min" else max
        value = pick(values, key=rule.order)  # type: ignore[arg-type]
        won = [rule.order(v) == rule.order(value) for v in values]
    candidates = tuple(
        Candidate(pid, d.value, d.location, w) for (pid, d), w in zip(pairs, won, strict=True)
    )
    return MergedFacet(facet, value, candidates)


def describe(facet: str, value: FacetValue) -> str:
    """A facet value as a compliance engineer writes it (``5s``, ``7y``, ``qa, auditor``)."""
    if facet.endswith("_ms") and isinstance(value, int):
        return format_duration(value)
    if isinstance(value, tuple):
        return ", ".join(value) if value else "(none)"
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


class _ExceptionIndex:
    """Compiled exception selectors, and what each exception was found to do."""

    def __init__(self) -> None:
        self.matchers: dict[int, tuple[DeviceMatcher, PointMatcher]] = {}
        self.used: set[int] = set()
        self.expired: dict[int, tuple[PolicyException, date]] = {}

    def apply(self, policy: Policy, target: Target, day: date, merged: MergedPoint) -> None:
        """Record on ``merged`` the exceptions of ``policy`` in force for ``target``."""
        for exception in policy.exceptions:
            if not self._matches(exception, target):
                continue
            if exception.expires < day:
                self.expired[id(exception)] = (exception, day)
                continue
            self.used.add(id(exception))
            merged.waived.append(Waiver(policy.id, exception))

    def _matches(self, exception: PolicyException, target: Target) -> bool:
        key = id(exception)
        if key not in self.matchers:
            self.matchers[key] = (DeviceMatcher(exception.devices), PointMatcher(exception.points))
        device_match, point_match = self.matchers[key]
        return device_match(target.device) and point_match(target.point)

    def findings(self, selection: Selection) -> list[Finding]:
        found = [
            warning(
                exc.location,
                "exception-expired",
                f"exception for {_scope(exc)} expired on {exc.expires.isoformat()} "
                "and no longer applies",
            )
            for exc, _ in self.expired.values()
        ]
        policies = {p.id: p for ps in selection.governing for p in ps}
        for policy in policies.values():
            found += [
                warning(
                    exc.location,
                    "exception-waives-nothing",
                    f"exception of policy {policy.id} for {_scope(exc)} waives nothing: "
                    "it matches no point that the policy governs",
                )
                for exc in policy.exceptions
                if id(exc) not in self.used and id(exc) not in self.expired
            ]
        return found


def _scope(exception: PolicyException) -> str:
    """A short human name for what an exception covers, such as ``reactor-7``."""
    devices = exception.devices
    for names in (devices.id, devices.class_, devices.zone, devices.site):
        if names:
            return ", ".join(names)
    return "all selected devices"


class _Conflicts:
    """Conflicts between merged values, or with a device's limits, grouped per cause.

    One finding per cause (a pair of sources, or a demand and a device), listing
    the affected points, instead of one line per point.
    """

    def __init__(self) -> None:
        self.points: dict[tuple[Location, str, str], list[str]] = defaultdict(list)

    def check(self, merged: MergedPoint) -> None:
        self._retention(merged)
        self._interval(merged)

    def _retention(self, merged: MergedPoint) -> None:
        least = merged.facets.get("retention.keep_at_least_ms")
        most = merged.facets.get("retention.keep_at_most_ms")
        if not least or not most or least.value <= most.value:  # type: ignore[operator]
            return
        longer, shorter = least.winners[0], most.winners[0]
        message = (
            f"retention.keep_at_least {describe(least.facet, least.value)} of policy "
            f"{longer.policy} is longer than retention.keep_at_most "
            f"{describe(most.facet, most.value)} of policy {shorter.policy} ({shorter.location})"
        )
        self.points[(longer.location, "retention-conflict", message)].append(merged.target.ref)

    def _interval(self, merged: MergedPoint) -> None:
        every = merged.facets.get("capture.every_ms")
        device: Device = merged.target.device
        limit = device.limits.min_interval_ms
        if not every or limit is None or every.value >= limit:  # type: ignore[operator]
            return
        where = device.limits.locations.get("min_interval", device.location)
        message = (
            f"capture.every {describe(every.facet, every.value)} is shorter than "
            f"limits.min_interval {format_duration(limit)} of device {device.id} ({where})"
        )
        cause = (every.winners[0].location, "interval-below-limit", message)
        self.points[cause].append(merged.target.ref)

    def findings(self) -> list[Finding]:
        return [
            error(location, code, f"{message}{_affected(refs)}")
            for (location, code, message), refs in self.points.items()
        ]


def _affected(refs: list[str]) -> str:
    """`` on point a/b`` or `` on 12 points: a/b, a/c, a/d, ...``."""
    if len(refs) == 1:
        return f" on point {refs[0]}"
    shown = ", ".join(refs[:3]) + (", ..." if len(refs) > 3 else "")
    return f" on {len(refs)} points: {shown}"
