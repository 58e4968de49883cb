"""The plan body, typed: parsed once when a plan is loaded, read by every run-time stage.

A plan's bytes (canonical JSON, docs/plans.md) are the plan; :class:`PlanBody`
is what the collector, the evidence sink, the verifier and the protocol
plugins read of them. :func:`parse_body` builds it from the JSON object whose
digest has verified and refuses, with :class:`~engine.errors.PlanRejected`, an
object that is not shaped as docs/plans.md says. Nothing at run time walks the
JSON again.

Protocol plugins own the shape of their read groups and of ``endpoint`` and
``address``: those stay read-only mappings (:attr:`ReadGroup.spec`), typed by
the plugin that reads them.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import cached_property
from typing import Any, Literal, TypeVar

from engine.canonical import canonical_json
from engine.errors import PlanRejected
from engine.model import Limits

DEFAULT_WINDOW_MS = 60_000
"""The batch window of a plan whose points set no ``signing.batch_window_ms``."""
INSTANT_FORMAT = "%Y-%m-%dT%H:%M:%SZ"

T = TypeVar("T")
JsonObject = Mapping[str, Any]


@dataclass(frozen=True, slots=True)
class Capture:
    """When a point is sampled: an interval, cron triggers, and/or on change."""

    every_ms: int | None = None
    cron: tuple[str, ...] = ()
    deadband: float | None = None
    """``None`` unless the point is captured on change (``0.0``: any change)."""


@dataclass(frozen=True, slots=True)
class Retention:
    keep_at_least_ms: int | None = None
    keep_at_most_ms: int | None = None
    on_expiry: str | None = None


@dataclass(frozen=True, slots=True)
class Signing:
    required: bool = False
    keys: tuple[str, ...] = ()
    batch_window_ms: int | None = None


@dataclass(frozen=True, slots=True)
class Access:
    """Roles granted to read, export and hold a point, and roles denied (deny overrides)."""

    read: tuple[str, ...] = ()
    export: tuple[str, ...] = ()
    hold: tuple[str, ...] = ()
    deny: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Source:
    """Where a merged value came from: a policy and ``path:line:col``."""

    policy: str
    at: str


@dataclass(frozen=True, slots=True)
class Waiver:
    """An exception in force for a point: which facet groups of which policy it waives."""

    policy: str
    facets: tuple[str, ...]
    reason: str
    approved_by: str
    expires: str
    at: str
    entry: JsonObject
    """The waiver as the plan writes it (batch records of unsigned batches quote it)."""


@dataclass(frozen=True)
class PlanPoint:
    name: str
    address: JsonObject
    signal: str | None
    unit: str | None
    capture: Capture
    retention: Retention
    signing: Signing
    access: Access
    policies: tuple[str, ...]
    waived: tuple[Waiver, ...]
    provenance: Mapping[str, tuple[Source, ...]]

    @property
    def signing_waivers(self) -> tuple[Waiver, ...]:
        return tuple(w for w in self.waived if "signing" in w.facets)


@dataclass(frozen=True)
class PlanDevice:
    id: str
    protocol: str
    endpoint: JsonObject
    limits: Limits
    class_: str | None = None
    zone: str | None = None
    labels: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class ReadGroup:
    """One request (``kind == "read"``, polled) or subscription of the protocol plugin.

    ``points`` names the points it serves, in its order; ``unit`` is the unit
    behind a gateway (Modbus), ``None`` for protocols without units. ``spec`` is
    the whole group as the plugin planned it: its own fields (``start``,
    ``topic``, ``nodes``, ...) are the plugin's to read.
    """

    kind: Literal["read", "subscribe"]
    points: tuple[str, ...]
    unit: int | str | None
    every_ms: int | None
    cron: tuple[str, ...]
    expect_every_ms: int | None
    spec: JsonObject

    @property
    def polled(self) -> bool:
        return self.kind == "read"


RETENTION_FACETS = (
    "retention.keep_at_least_ms",
    "retention.keep_at_most_ms",
    "retention.on_expiry",
)
"""The facets a point's retention is merged from: their provenance is part of its expiry
calculation (engine/plans/expiry.py)."""

Retained = tuple[Retention, tuple[tuple[Source, ...], ...]]
"""A point's retention and the provenance of its retention facets."""


def retained(point: PlanPoint) -> Retained:
    """All that ``point``'s expiry depends on beside its batch's window: points retained alike
    (usually all of a device's) share one calculation."""
    return point.retention, tuple(point.provenance.get(f, ()) for f in RETENTION_FACETS)


@dataclass(frozen=True)
class PlanBody:
    """One device's verified plan (docs/plans.md), with its canonical bytes."""

    site: str
    timezone: str
    as_of: str
    device: PlanDevice
    points: tuple[PlanPoint, ...]
    read_groups: tuple[ReadGroup, ...]
    valid_until: str | None
    digest: str
    data: bytes
    """The plan's canonical bytes, as stored and signed."""

    @cached_property
    def point(self) -> Mapping[str, PlanPoint]:
        """The plan's points by name."""
        return {p.name: p for p in self.points}

    @cached_property
    def valid_until_ms(self) -> int | None:
        if self.valid_until is None:
            return None
        moment = datetime.strptime(self.valid_until, INSTANT_FORMAT).replace(tzinfo=UTC)
        return int(moment.timestamp() * 1000)

    @cached_property
    def window_ms(self) -> int:
        """The batch window: the smallest ``signing.batch_window_ms`` of the points."""
        windows = [p.signing.batch_window_ms for p in self.points if p.signing.batch_window_ms]
        return min(windows, default=DEFAULT_WINDOW_MS)

    @cached_property
    def required_keys(self) -> tuple[str, ...]:
        """Every key that must sign this device's batches: the union over its points that
        require signing (a point whose signing a waiver lifted requires none), sorted."""
        return tuple(sorted({k for p in self.points if p.signing.required for k in p.signing.keys}))

    @cached_property
    def retention_classes(self) -> Mapping[str, int]:
        """The number of each point's retention class: points :func:`retained` alike share
        one expiry calculation (worked out once per class of a batch, not once per point)."""
        found: dict[Retained, int] = {}
        return {p.name: found.setdefault(retained(p), len(found)) for p in self.points}

    @cached_property
    def signing_waivers(self) -> tuple[JsonObject, ...]:
        """The signing waivers of the plan's points, once each, by their canonical form."""
        found = {canonical_json(w.entry): w.entry for p in self.points for w in p.signing_waivers}
        return tuple(found[key] for key in sorted(found))


# --- parsing ----------------------------------------------------------------------------


def parse_body(obj: JsonObject, data: bytes, source: str) -> PlanBody:
    """The typed body of a plan object whose digest verified; raises PlanRejected."""
    read = _Reader(source)
    device = read.obj(obj, "device")
    points = tuple(read.each(obj, "points", _point))
    body = PlanBody(
        site=read.text(obj, "site"),
        timezone=read.text(obj, "timezone"),
        as_of=read.text(obj, "as_of"),
        device=_device(device, read),
        points=points,
        read_groups=tuple(read.each(obj, "read_groups", _group)),
        valid_until=read.text(obj, "valid_until", required=False),
        digest=read.text(obj, "digest"),
        data=data,
    )
    _check_consistent(body, read)
    return body


def _check_consistent(body: PlanBody, read: _Reader) -> None:
    names = [p.name for p in body.points]
    if len(set(names)) != len(names):
        read.fail("points", "a point name appears twice")
    for group in body.read_groups:
        unknown = [p for p in group.points if p not in body.point]
        if unknown:
            read.fail("read_groups", f"a group names points the plan lacks: {unknown}")
    for point in body.points:
        if point.signing.required and not point.signing.keys:
            read.fail(f"points[{point.name}].signing", "signing is required but names no key")
    if body.valid_until is not None:
        try:
            _ = body.valid_until_ms
        except ValueError:
            read.fail("valid_until", f"{body.valid_until!r} is not YYYY-MM-DDTHH:MM:SSZ")


def _device(obj: JsonObject, read: _Reader) -> PlanDevice:
    limits = read.obj(obj, "limits", required=False)
    try:
        typed_limits = Limits(**{str(k): v for k, v in limits.items()})
    except TypeError as exc:
        read.fail("device.limits", str(exc))
    return PlanDevice(
        id=read.text(obj, "id"),
        protocol=read.text(obj, "protocol"),
        endpoint=read.obj(obj, "endpoint"),
        limits=typed_limits,
        class_=read.text(obj, "class", required=False),
        zone=read.text(obj, "zone", required=False),
        labels=read.obj(obj, "labels", required=False),
    )


def _point(obj: JsonObject, read: _Reader) -> PlanPoint:
    capture, retention = read.obj(obj, "capture", False), read.obj(obj, "retention", False)
    signing, access = read.obj(obj, "signing", False), read.obj(obj, "access", False)
    on_change = read.obj(capture, "on_change", required=False) if "on_change" in capture else None
    return PlanPoint(
        name=read.text(obj, "name"),
        address=read.obj(obj, "address"),
        signal=read.text(obj, "signal", required=False),
        unit=read.text(obj, "unit", required=False),
        capture=Capture(
            every_ms=read.integer(capture, "every_ms"),
            cron=read.texts(capture, "cron"),
            deadband=None if on_change is None else float(read.number(on_change, "deadband")),
        ),
        retention=Retention(
            read.integer(retention, "keep_at_least_ms"),
            read.integer(retention, "keep_at_most_ms"),
            read.text(retention, "on_expiry", required=False),
        ),
        signing=Signing(
            read.flag(signing, "required"),
            read.texts(signing, "keys"),
            read.integer(signing, "batch_window_ms", positive=True),
        ),
        access=Access(
            read.texts(access, "read"),
            read.texts(access, "export"),
            read.texts(access, "hold"),
            read.texts(access, "deny"),
        ),
        policies=read.texts(obj, "policies"),
        waived=tuple(read.each(obj, "waived", _waiver, required=False)),
        provenance={
            facet: tuple(_source(s, read) for s in read.array({facet: sources}, facet))
            for facet, sources in read.obj(obj, "provenance", required=False).items()
        },
    )


def _waiver(obj: JsonObject, read: _Reader) -> Waiver:
    return Waiver(
        policy=read.text(obj, "policy"),
        facets=read.texts(obj, "facets"),
        reason=read.text(obj, "reason"),
        approved_by=read.text(obj, "approved_by"),
        expires=read.text(obj, "expires"),
        at=read.text(obj, "at"),
        entry=obj,
    )


def _source(obj: Any, read: _Reader) -> Source:
    if not isinstance(obj, Mapping):
        read.fail("provenance", "a source is not an object")
    return Source(read.text(obj, "policy"), read.text(obj, "at"))


def parse_group(obj: JsonObject, source: str = "read group") -> ReadGroup:
    """One read group as a plan writes it, typed (a plugin's tests make their own)."""
    return _group(obj, _Reader(source))


def _group(obj: JsonObject, read: _Reader) -> ReadGroup:
    kind = obj.get("kind", "read")
    if kind not in ("read", "subscribe"):
        read.fail("read_groups", f"unknown group kind {kind!r}")
    unit = obj.get("unit")
    if unit is not None and not isinstance(unit, int | str):
        read.fail("read_groups", f"unit {unit!r} is neither a number nor a name")
    return ReadGroup(
        kind=kind,
        points=read.texts(obj, "points"),
        unit=unit,
        every_ms=read.integer(obj, "every_ms", positive=True),
        cron=read.texts(obj, "cron"),
        expect_every_ms=read.integer(obj, "expect_every_ms", positive=True),
        spec=obj,
    )


class _Reader:
    """Typed access to a plan's JSON members; every misfit is a PlanRejected naming it."""

    def __init__(self, source: str) -> None:
        self.source = source

    def fail(self, where: str, problem: str) -> Any:
        raise PlanRejected(f"{self.source}: {where}: {problem}")

    def _get(
        self, obj: JsonObject, key: str, want: type | tuple[type, ...], required: bool, what: str
    ) -> Any:
        if key not in obj:
            return self.fail(key, "missing") if required else None
        value = obj[key]
        if not isinstance(value, want) or isinstance(value, bool) is not (want is bool):
            self.fail(key, f"{value!r} is not {what}")
        return value

    def text(self, obj: JsonObject, key: str, required: bool = True) -> Any:
        return self._get(obj, key, str, required, "a string")

    def obj(self, obj: JsonObject, key: str, required: bool = True) -> JsonObject:
        found = self._get(obj, key, dict, required, "an object")
        return {} if found is None else found

    def array(self, obj: JsonObject, key: str, required: bool = True) -> list[Any]:
        found = self._get(obj, key, list, required, "a list")
        return [] if found is None else found

    def texts(self, obj: JsonObject, key: str) -> tuple[str, ...]:
        items = self.array(obj, key, required=False)
        if not all(isinstance(item, str) for item in items):
            self.fail(key, "not a list of strings")
        return tuple(items)

    def flag(self, obj: JsonObject, key: str) -> bool:
        return bool(self._get(obj, key, bool, False, "true or false"))

    def number(self, obj: JsonObject, key: str) -> float | int:
        found = self._get(obj, key, (int, float), False, "a number")
        return 0 if found is None else found

    def integer(self, obj: JsonObject, key: str, positive: bool = False) -> int | None:
        found: int | None = self._get(obj, key, int, False, "an integer")
        if found is not None and positive and found <= 0:
            self.fail(key, f"{found} is not positive")
        return found

    def each(
        self,
        obj: JsonObject,
        key: str,
        make: Callable[[JsonObject, _Reader], T],
        required: bool = True,
    ) -> Sequence[T]:
        items = self.array(obj, key, required)
        if not all(isinstance(item, dict) for item in items):
            self.fail(key, "not a list of objects")
        return [make(item, self) for item in items]
