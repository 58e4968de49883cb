"""The typed model that ``validate`` builds and every later stage reads.

Every object remembers where it was written (``location``), so that a
finding or a provenance record can name ``path:line:col``. Policies keep
their demands in one flat mapping keyed by *facet* (``capture.every_ms``,
``retention.on_expiry``, ...): the same keys the plan's ``provenance``
uses, so that merge rules are a table and not a tangle of attributes.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import date
from typing import Any

from engine.errors import Location

KEBAB_ID = re.compile(r"[a-z0-9]+(-[a-z0-9]+)*")
"""The ids policies, keys and principals use: lowercase words joined by single hyphens."""

NOWHERE = Location("<none>")
"""The location of a selector that was not written (matches everything)."""

FacetValue = int | float | bool | str | tuple[str, ...]

FACETS: tuple[str, ...] = (
    "capture.every_ms",
    "capture.cron",
    "capture.on_change.deadband",
    "retention.keep_at_least_ms",
    "retention.keep_at_most_ms",
    "retention.on_expiry",
    "signing.required",
    "signing.keys",
    "signing.batch_window_ms",
    "access.read",
    "access.export",
    "access.hold",
    "access.deny",
)
"""Every facet a policy can demand, in plan order. The group is the part before the dot."""

FACET_GROUPS: tuple[str, ...] = ("capture", "retention", "signing", "access")


def facet_group(facet: str) -> str:
    return facet.split(".", 1)[0]


@dataclass(frozen=True)
class Demand:
    """One facet value a policy demands, and where the policy wrote it."""

    value: FacetValue
    location: Location
    items: tuple[tuple[str, Location], ...] = ()
    """For a list of names: ``("[name]", place)`` of each name, for findings about one."""


@dataclass(frozen=True)
class DeviceSelector:
    """Which devices: AND across the keys that are set, OR within each list.

    Name-like values (``site``, ``zone``, ``class``, ``id``, ``protocol``)
    may be shell-style globs. ``labels`` maps a label to the values it may
    have; ``labels_not`` to the values it must not have; ``has_label``
    lists label names of which at least one must be present.
    """

    site: tuple[str, ...] = ()
    zone: tuple[str, ...] = ()
    class_: tuple[str, ...] = ()
    id: tuple[str, ...] = ()
    protocol: tuple[str, ...] = ()
    labels: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    labels_not: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    has_label: tuple[str, ...] = ()
    location: Location = NOWHERE
    locations: Mapping[str, Location] = field(default_factory=dict)
    """Where each selector key was written, for 'matches nothing' findings."""


@dataclass(frozen=True)
class PointSelector:
    """Which points of a selected device: ``name`` (globs), ``signal``, ``unit``."""

    name: tuple[str, ...] = ()
    signal: tuple[str, ...] = ()
    unit: tuple[str, ...] = ()
    location: Location = NOWHERE
    locations: Mapping[str, Location] = field(default_factory=dict)


@dataclass(frozen=True)
class PolicyException:
    """A time-boxed waiver of whole facet groups of its own policy."""

    devices: DeviceSelector
    points: PointSelector
    waive: tuple[str, ...]
    reason: str
    approved_by: str
    expires: date
    location: Location


@dataclass(frozen=True)
class Policy:
    id: str
    title: str
    owner: str
    controls: tuple[str, ...]
    devices: DeviceSelector
    points: PointSelector
    demands: Mapping[str, Demand]
    exceptions: tuple[PolicyException, ...]
    location: Location
    """Where the ``policy:`` id was written; ``location.path`` is the file."""


@dataclass(frozen=True)
class Limits:
    """What a device can bear. Durations are in milliseconds; ``None`` means no limit given."""

    min_interval_ms: int | None = None
    max_requests_per_second: float | None = None
    max_registers_per_read: int | None = None
    max_bits_per_read: int | None = None
    max_nodes_per_read: int | None = None
    max_gap: int = 0
    max_connections: int = 1
    timeout_ms: int | None = None
    pause_after_connect_ms: int | None = None
    min_request_spacing_ms: int | None = None
    close_after_cycle: bool = False
    locations: Mapping[str, Location] = field(default_factory=dict)

    def as_plan(self) -> dict[str, Any]:
        """The limits as the plan writes them: only what was set or differs from defaults."""
        plan: dict[str, Any] = {}
        for name, default in _LIMIT_DEFAULTS.items():
            value = getattr(self, name)
            if value is not None and (value != default or name in ("max_gap", "max_connections")):
                plan[name] = value
        return plan


_LIMIT_DEFAULTS: dict[str, Any] = {
    "min_interval_ms": None,
    "max_requests_per_second": None,
    "max_registers_per_read": None,
    "max_bits_per_read": None,
    "max_nodes_per_read": None,
    "max_gap": 0,
    "max_connections": 1,
    "timeout_ms": None,
    "pause_after_connect_ms": None,
    "min_request_spacing_ms": None,
    "close_after_cycle": False,
}


@dataclass(frozen=True)
class Point:
    name: str
    signal: str | None
    unit: str | None
    address: Mapping[str, Any]
    location: Location
    address_location: Location


@dataclass(frozen=True)
class Device:
    id: str
    site: str
    protocol: str
    endpoint: Mapping[str, Any]
    limits: Limits
    points: tuple[Point, ...]
    location: Location
    class_: str | None = None
    zone: str | None = None
    labels: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Site:
    id: str
    timezone: str
    devices: tuple[Device, ...]
    location: Location
    title: str | None = None


@dataclass(frozen=True)
class Principal:
    id: str
    kind: str
    roles: tuple[str, ...]
    location: Location
    name: str | None = None
    """The printed name, shown in electronic signatures and the audit trail."""
    os_users: tuple[str, ...] = ()
    """The only operating-system accounts that may act as this principal; empty: any."""
    certificates: tuple[str, ...] = ()
    """``sha256:`` fingerprints of TLS client certificates that authenticate as it."""


@dataclass
class Project:
    """Everything a compilation reads, validated and typed."""

    policies: list[Policy] = field(default_factory=list)
    sites: list[Site] = field(default_factory=list)
    principals: list[Principal] = field(default_factory=list)


# --- what protocol plugins see and return when planning reads ---------------------------


@dataclass(frozen=True)
class PlannedPoint:
    """A governed point with the merged schedule the plugin needs to group reads."""

    point: Point
    every_ms: int | None
    cron: tuple[str, ...] = ()
    deadband: float | None = None


@dataclass(frozen=True)
class PlanProblem:
    """A problem a plugin found while grouping reads; the engine adds the place.

    ``point`` names the offending point (``None`` for the device as a whole);
    ``code`` is a stable finding code such as ``modbus-overlap``.
    """

    point: str | None
    code: str
    message: str


@dataclass
class ReadGroupPlan:
    """The read groups of one device: JSON-ready dicts, each with a ``points`` list."""

    groups: list[dict[str, Any]] = field(default_factory=list)
    problems: list[PlanProblem] = field(default_factory=list)
