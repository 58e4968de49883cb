"""Validate one site inventory and build its :class:`~engine.model.Site`.

The site schema checks everything but ``endpoint`` and ``address``, whose
shape belongs to the device's protocol plugin: each is validated with the
plugin's schema (its defaults applied), and every schema-valid address is
then given to the plugin's ``converge_check_address``. A broken device is
left out of the site and the other devices are kept; a problem outside the
devices (site id, time zone, ...) leaves the whole site out. Last, the
plugins look at each valid device's points all together
(:mod:`engine.compile.validate.inventory`): overlapping addresses are site
errors whether or not a policy governs the points.
"""

from __future__ import annotations

import copy
import json
import math
import weakref
from collections.abc import Iterator
from typing import Any

import cerberus
import pluggy

from engine.compile.load import DocPath, Document
from engine.compile.validate.inventory import inventory_problems
from engine.compile.validate.rules import show
from engine.compile.validate.schema_errors import (
    Problem,
    dotted,
    not_a_mapping,
    run,
    suggestion,
    value_at,
)
from engine.compile.validate.schemas import DEVICE_SHAPE, POINT, SITE_SHAPE
from engine.durations import parse_duration
from engine.errors import Finding, PluginError, error
from engine.model import Device, Limits, Point, Site

_LIMIT_DURATIONS = ("min_interval", "timeout", "pause_after_connect", "min_request_spacing")

Normalized = tuple[dict[str, Any], dict[int, dict[str, Any]]]
"""A device's endpoint and its points' addresses (by point index), plugin defaults applied."""


def check_site(
    doc: Document, pm: pluggy.PluginManager, protocols: list[str]
) -> tuple[Site | None, list[Finding]]:
    """The site in ``doc`` with its valid devices (``None`` on a site-level error)."""
    if not isinstance(doc.data, dict):
        return None, [not_a_mapping(doc, "site", "site")]
    found, _ = run(SITE_SHAPE, doc.data, doc)
    for index, raw in _device_items(doc.data):
        found += run(DEVICE_SHAPE, raw, doc, ("devices", index), normalize=False)[0]
    found += _check_points(doc)
    plugin_found, normalized = _run_plugins(doc, pm, protocols)
    found += plugin_found + _duplicate_devices(doc) + _duplicate_points(doc)
    findings = [problem.finding for problem in found]
    broken = {_device_of(problem.path) for problem in found}
    if None in broken:
        return None, findings
    devices = [_device(doc, i, n) for i, n in normalized.items() if i not in broken]
    findings += inventory_problems(devices, pm)
    site = Site(
        id=doc.data["site"],
        timezone=doc.data["timezone"],
        devices=tuple(devices),
        location=doc.at(("site",)),
        title=doc.data.get("title"),
    )
    return site, findings


def _device_items(data: dict[str, Any]) -> list[tuple[int, dict[str, Any]]]:
    devices = data.get("devices")
    if not isinstance(devices, list):
        return []
    return [(i, raw) for i, raw in enumerate(devices) if isinstance(raw, dict)]


def _device_of(path: DocPath) -> int | None:
    """The index of the device a problem is about, ``None`` for the site as a whole."""
    if len(path) >= 2 and path[0] == "devices" and isinstance(path[1], int):
        return path[1]
    return None


# --- points ---------------------------------------------------------------------------


def _check_points(doc: Document) -> list[Problem]:
    """Every point against ``POINT``; a point equal to one already found valid is valid."""
    valid: set[str] = set()
    found: list[Problem] = []
    for index, raw in _device_items(doc.data):
        points = raw.get("points")
        for j, point in enumerate(points if isinstance(points, list) else []):
            if not isinstance(point, dict):
                continue  # the site shape reports it
            key = frozen(point)
            if key in valid:
                continue
            path = ("devices", index, "points", j)
            point_found, _ = run(POINT, point, doc, path, normalize=False)
            found += point_found
            if not point_found:
                valid.add(key)
    return found


def frozen(value: Any) -> str:
    """A key equal for equal loaded YAML data only (``1``, ``1.0``, ``true``, dates apart)."""
    return _FROZEN.encode(value)


_FROZEN = json.JSONEncoder(sort_keys=True, default=lambda v: f"\0{type(v).__name__}:{v}")


# --- protocol plugins -------------------------------------------------------------------


def _run_plugins(
    doc: Document, pm: pluggy.PluginManager, protocols: list[str]
) -> tuple[list[Problem], dict[int, Normalized]]:
    """Plugin checks of every device, and the normalized shapes of those that have them."""
    found: list[Problem] = []
    normalized: dict[int, Normalized] = {}
    checked: dict[str, dict[str, Any]] = {}
    for index, raw in _device_items(doc.data):
        device_found, device_normalized = _plugin_checks(
            doc, pm, protocols, index, raw, checked=checked
        )
        found += device_found
        if device_normalized is not None:
            normalized[index] = device_normalized
    return found, normalized


def _plugin_checks(
    doc: Document,
    pm: pluggy.PluginManager,
    protocols: list[str],
    index: int,
    raw: dict[str, Any],
    *,
    checked: dict[str, dict[str, Any]],
) -> tuple[list[Problem], Normalized | None]:
    """The protocol, endpoint and addresses of one device, as its plugin sees them.

    ``checked`` maps addresses already found valid to their normalized form:
    devices of one model share a register map, and an address is checked once.
    """
    base: DocPath = ("devices", index)
    protocol = raw.get("protocol")
    if not isinstance(protocol, str):
        return [], None  # the site schema reports it
    if protocol not in protocols:
        return [_unknown_protocol(doc, (*base, "protocol"), protocol, protocols)], None
    endpoint = raw.get("endpoint", {})
    found: list[Problem] = []
    if isinstance(endpoint, dict):
        found, endpoint = _plugin_validate(doc, pm, "endpoint", protocol, (*base, "endpoint"))
    addresses: dict[int, dict[str, Any]] = {}
    points = raw.get("points")
    for j, point in enumerate(points if isinstance(points, list) else []):
        if isinstance(point, dict) and isinstance(point.get("address"), dict):
            key = f"{protocol}\0{frozen(point['address'])}"
            if key in checked:
                addresses[j] = checked[key]
                continue
            path: DocPath = (*base, "points", j, "address")
            point_found, addresses[j] = _check_address(doc, pm, protocol, path)
            found += point_found
            if not point_found:
                checked[key] = addresses[j]
    return found, (endpoint, addresses)


def _unknown_protocol(doc: Document, path: DocPath, name: str, known: list[str]) -> Problem:
    listing = f"known: {', '.join(known)}" if known else "no protocol plugin is installed"
    message = f"{dotted(path)} '{name}' is not a known protocol{suggestion(name, known)}; {listing}"
    return Problem(path, error(doc.at(path), "protocol-unknown", message))


def _call_hook(pm: pluggy.PluginManager, name: str, **kwargs: Any) -> Any:
    """Call a protocol hook; a plugin that raises broke its contract."""
    try:
        return getattr(pm.hook, name)(**kwargs)
    except Exception as exc:
        raise PluginError(
            f"plugin hook {name} failed for {kwargs.get('protocol')!r}: {exc}"
        ) from exc


_SCHEMAS: weakref.WeakKeyDictionary[pluggy.PluginManager, dict[tuple[str, str], Any]] = (
    weakref.WeakKeyDictionary()
)


def _plugin_schema(pm: pluggy.PluginManager, part: str, protocol: str) -> Any:
    """A plugin's schema, asked for once per plugin manager (and kept, so it is validated once)."""
    schemas = _SCHEMAS.setdefault(pm, {})
    if (part, protocol) not in schemas:
        schemas[part, protocol] = _call_hook(pm, f"converge_{part}_schema", protocol=protocol)
    return schemas[part, protocol]


def _plugin_validate(
    doc: Document, pm: pluggy.PluginManager, part: str, protocol: str, path: DocPath
) -> tuple[list[Problem], dict[str, Any]]:
    """Validate the ``endpoint`` or ``address`` at ``path`` with the plugin's schema."""
    value = value_at(doc.data, path) or {}
    schema = _plugin_schema(pm, part, protocol)
    if schema is None:
        return [], dict(value)
    try:
        found, normalized = run(schema, copy.deepcopy(value), doc, path)
    except cerberus.SchemaError as exc:
        detail = " ".join(str(exc).split())
        message = (
            f"{dotted(path)} cannot be checked: the '{protocol}' plugin's {part} schema"
            f" is unusable: {detail}"
        )
        return [Problem(path, error(doc.at(path), f"{part}-invalid", message))], {}
    return found or list(_not_finite(doc, path, normalized)), normalized


def _not_finite(doc: Document, path: DocPath, value: Any) -> Iterator[Problem]:
    """A problem at every NaN or infinity in ``value``: a plan holds finite numbers only."""
    if isinstance(value, float) and not math.isfinite(value):
        message = f"{dotted(path)} must be a finite number, got {show(value)}"
        yield Problem(path, error(doc.at(path), "bad-value", message))
    elif isinstance(value, dict):
        for key, item in value.items():
            yield from _not_finite(doc, (*path, key), item)
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from _not_finite(doc, (*path, index), item)


def _check_address(
    doc: Document, pm: pluggy.PluginManager, protocol: str, path: DocPath
) -> tuple[list[Problem], dict[str, Any]]:
    """Schema check, then the plugin's own check of a schema-valid address."""
    found, address = _plugin_validate(doc, pm, "address", protocol, path)
    if found:
        return found, address
    complaints = _call_hook(pm, "converge_check_address", protocol=protocol, address=address)
    for complaint in complaints or []:
        found.append(
            Problem(path, error(doc.at(path), "address-invalid", f"{dotted(path)}: {complaint}"))
        )
    return found, address


# --- duplicates -------------------------------------------------------------------------


def _duplicate_devices(doc: Document) -> list[Problem]:
    """A device id used twice: the second device is reported (and left out)."""
    named: list[tuple[DocPath, Any]] = [
        (("devices", index, "id"), raw.get("id")) for index, raw in _device_items(doc.data)
    ]
    return _repeats(doc, named, "device-duplicate-id", owner_depth=2)


def _duplicate_points(doc: Document) -> list[Problem]:
    """A point name used twice in one device."""
    found: list[Problem] = []
    for index, raw in _device_items(doc.data):
        points = raw.get("points")
        named: list[tuple[DocPath, Any]] = [
            (("devices", index, "points", j, "name"), _name(point))
            for j, point in enumerate(points if isinstance(points, list) else [])
        ]
        found += _repeats(doc, named, "point-duplicate-name", owner_depth=4)
    return found


def _name(point: object) -> Any:
    return point.get("name") if isinstance(point, dict) else None


def _repeats(
    doc: Document, named: list[tuple[DocPath, Any]], code: str, *, owner_depth: int
) -> list[Problem]:
    """A problem at every name already used earlier in ``named``, pointing at the first use."""
    first: dict[str, DocPath] = {}
    found: list[Problem] = []
    for path, name in named:
        if not isinstance(name, str):
            continue
        if name not in first:
            first[name] = path
            continue
        earlier = first[name]
        message = (
            f"{dotted(path)} '{name}' is already used by"
            f" {dotted(earlier[:owner_depth])} ({doc.at(earlier)})"
        )
        found.append(Problem(path, error(doc.at(path), code, message)))
    return found


# --- the model --------------------------------------------------------------------------


def _device(doc: Document, index: int, normalized: Normalized) -> Device:
    """The model of a device that passed every check."""
    base: DocPath = ("devices", index)
    raw = doc.data["devices"][index]
    endpoint, addresses = normalized
    listed = doc.sub((*base, "points"), raw["points"])
    points = tuple(
        _point(listed.sub((j,), point), addresses.get(j, {}))
        for j, point in enumerate(raw["points"])
    )
    return Device(
        id=raw["id"],
        site=doc.data["site"],
        protocol=raw["protocol"],
        endpoint=endpoint,
        limits=_limits(doc, (*base, "limits")),
        points=points,
        location=doc.at(base),
        class_=raw.get("class"),
        zone=raw.get("zone"),
        labels=dict(raw.get("labels") or {}),
    )


def _point(doc: Document, address: dict[str, Any]) -> Point:
    """The model of a point; ``doc`` is the point's own node."""
    raw = doc.data
    return Point(
        name=raw["name"],
        signal=raw.get("signal"),
        unit=raw.get("unit"),
        address=address,
        location=doc.at(),
        address_location=doc.at(("address",)),
    )


def _limits(doc: Document, path: DocPath) -> Limits:
    """Limits with durations in ms; ``locations`` is keyed by the key as written."""
    raw: dict[str, Any] = value_at(doc.data, path) or {}
    values: dict[str, Any] = {}
    for key, value in raw.items():
        if key in _LIMIT_DURATIONS:
            values[f"{key}_ms"] = parse_duration(value)
        elif key == "max_requests_per_second":
            values[key] = float(value)
        else:
            values[key] = value
    locations = {key: doc.at((*path, key)) for key in raw}
    return Limits(**values, locations=locations)
