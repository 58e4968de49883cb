"""Stage 5, plan: one canonical, content-addressed JSON plan per device.

The plan's bytes and digest follow :mod:`engine.plans.format`. The protocol plugin groups
the device's points into read requests; the engine checks that those
requests fit ``limits.max_requests_per_second`` at the merged intervals.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, date, datetime, time, timedelta
from itertools import groupby
from typing import Any
from zoneinfo import ZoneInfo

import pluggy

from engine.canonical import canonical_json, canonical_object
from engine.compile.merge import MergedPoint, MergeResult, Waiver
from engine.compile.validate.inventory import placed
from engine.errors import Finding, PluginError, error, has_errors, warning
from engine.model import Device, PlannedPoint, ReadGroupPlan, Site
from engine.plans.format import INDEX_FORMAT, PLAN_FORMAT, Plan, seal


def build_plans(
    merged: MergeResult,
    sites: Sequence[Site],
    pm: pluggy.PluginManager,
    as_of: dict[str, date],
    sources: Mapping[str, str],
) -> tuple[list[Plan], list[Finding]]:
    """A plan for every device with at least one governed point, in inventory order;
    ``sources`` maps each file loaded to ``sha256:`` of its bytes."""
    by_site = {site.id: site for site in sites}
    plans: list[Plan] = []
    findings: list[Finding] = []
    governed = [mp for mp in merged.points if mp.governed]
    encoder = PointEncoder()
    for device, points in groupby(governed, key=lambda mp: mp.target.device):
        site = by_site[device.site]
        plan, found = build_device_plan(
            site, device, list(points), pm, as_of[site.id], encoder=encoder, sources=sources
        )
        findings += found
        if plan is not None:
            plans.append(plan)
    return plans, findings


def build_device_plan(
    site: Site,
    device: Device,
    points: list[MergedPoint],
    pm: pluggy.PluginManager,
    day: date,
    *,
    encoder: PointEncoder,
    sources: Mapping[str, str],
) -> tuple[Plan | None, list[Finding]]:
    findings = [_no_capture(mp) for mp in points if not mp.collected]
    collected = [mp for mp in points if mp.collected]
    if not collected:
        return None, findings
    planned = [_planned(mp) for mp in collected]
    groups = _read_groups(pm, device, planned)
    findings += placed(device, groups.problems)
    findings += _request_rate(device, groups, planned)
    if has_errors(findings):
        return None, findings
    members = {
        **encoder.site(site, day),
        "device": canonical_json(_device_entry(device)),
        "points": b"[" + b",".join(encoder.point(mp) for mp in collected) + b"]",
        "read_groups": canonical_json(groups.groups),
        "sources": canonical_json(_sources(device, collected, sources)),
    }
    valid_until = _valid_until([w for mp in collected for w in mp.waived], site.timezone)
    if valid_until:
        members["valid_until"] = canonical_json(valid_until)
    digest, canonical = seal(members)
    plan = Plan(device.id, digest, canonical, len(collected), len(groups.groups), valid_until)
    return plan, findings


def _sources(
    device: Device, points: Iterable[MergedPoint], sources: Mapping[str, str]
) -> dict[str, str]:
    """The files a plan comes from, each with the digest of its bytes: the device's site
    file, and the file of every policy that governs a point or waives for it."""
    paths = {device.location.path}
    for mp in points:
        paths.update(policy.location.path for policy in mp.policies)
        paths.update(waiver.exception.location.path for waiver in mp.waived)
    return {path: sources[path] for path in sorted(paths)}


def _no_capture(mp: MergedPoint) -> Finding:
    names = ", ".join(p.id for p in mp.policies)
    return warning(
        mp.target.point.location,
        "point-not-captured",
        f"point {mp.target.ref} is governed by {names} but no policy in force sets capture; "
        "it will not be collected",
    )


def _planned(mp: MergedPoint) -> PlannedPoint:
    facets = mp.facets
    every = facets.get("capture.every_ms")
    cron = facets.get("capture.cron")
    deadband = facets.get("capture.on_change.deadband")
    return PlannedPoint(
        mp.target.point,
        every_ms=int(every.value) if every else None,  # type: ignore[arg-type]
        cron=tuple(cron.value) if cron else (),  # type: ignore[arg-type]
        deadband=float(deadband.value) if deadband else None,  # type: ignore[arg-type]
    )


def _read_groups(
    pm: pluggy.PluginManager, device: Device, points: list[PlannedPoint]
) -> ReadGroupPlan:
    result = pm.hook.converge_plan_read_groups(device=device, points=points)
    if result is None:
        raise PluginError(f"no plugin plans read groups for protocol '{device.protocol}'")
    if not isinstance(result, ReadGroupPlan):
        raise PluginError(
            f"the {device.protocol} plugin returned {type(result).__name__}, not a ReadGroupPlan"
        )
    return result


def _request_rate(
    device: Device, groups: ReadGroupPlan, points: list[PlannedPoint]
) -> list[Finding]:
    """Requests per second the polled groups need, against ``limits.max_requests_per_second``."""
    limit = device.limits.max_requests_per_second
    if limit is None:
        return []
    every = {p.point.name: p.every_ms for p in points if p.every_ms}
    rate = 0.0
    for group in groups.groups:
        if group.get("kind", "read") != "read":
            continue
        intervals = [every[name] for name in group["points"] if name in every]
        rate += 1000 / min(intervals) if intervals else 0.0
    if rate <= limit:
        return []
    where = device.limits.locations.get("max_requests_per_second", device.location)
    return [
        error(
            where,
            "request-rate-exceeded",
            f"device {device.id}: its {len(groups.groups)} read groups need {rate:g} "
            f"requests/s at the merged capture intervals, more than "
            f"limits.max_requests_per_second {limit:g}",
        )
    ]


def _device_entry(device: Device) -> dict[str, Any]:
    entry: dict[str, Any] = {
        "id": device.id,
        "protocol": device.protocol,
        "endpoint": dict(device.endpoint),
        "limits": device.limits.as_plan(),
    }
    for key, value in (("class", device.class_), ("zone", device.zone)):
        if value is not None:
            entry[key] = value
    if device.labels:
        entry["labels"] = dict(device.labels)
    return entry


class PointEncoder:
    """Canonical bytes of plan points, and of what the plans of one site share.

    Everything a point gets from policies (facets, policies, waivers,
    provenance) is the same for every point that shares merged facets, so it
    is encoded once per merged result. A point's own members are encoded once
    per distinct value too: names, signals and units repeat across the
    devices of one model, and equal addresses are one normalized object
    (validation shares it). So a plan of one point costs about one encoding
    of its device, not ten: a site of many small devices is as cheap per
    point as one of few large ones.
    """

    def __init__(self) -> None:
        self.shared: dict[int, tuple[dict[str, bytes], dict[str, Any]]] = {}
        self.texts: dict[str, bytes] = {}
        self.addresses: dict[int, tuple[bytes, Mapping[str, Any]]] = {}
        self.sites: dict[tuple[str, date], dict[str, bytes]] = {}

    def site(self, site: Site, day: date) -> dict[str, bytes]:
        """The members every plan of ``site`` compiled for ``day`` has."""
        key = (site.id, day)
        if key not in self.sites:
            self.sites[key] = {
                "format": canonical_json(PLAN_FORMAT),
                "site": canonical_json(site.id),
                "timezone": canonical_json(site.timezone),
                "as_of": canonical_json(day.isoformat()),
            }
        return self.sites[key]

    def point(self, mp: MergedPoint) -> bytes:
        """The canonical JSON of one plan point."""
        point = mp.target.point
        members = {"name": self._text(point.name), "address": self._address(point.address)}
        for key, value in (("signal", point.signal), ("unit", point.unit)):
            if value is not None:
                members[key] = self._text(value)
        return canonical_object({**members, **self._governed(mp)[0]})

    def _text(self, text: str) -> bytes:
        if text not in self.texts:
            self.texts[text] = canonical_json(text)
        return self.texts[text]

    def _address(self, address: Mapping[str, Any]) -> bytes:
        key = id(address)  # the address object is kept below, so the id stays its own
        if key not in self.addresses:
            self.addresses[key] = (canonical_json(dict(address)), address)
        return self.addresses[key][0]

    def _governed(self, mp: MergedPoint) -> tuple[dict[str, bytes], dict[str, Any]]:
        key = id(mp.facets)  # merge shares one facets dict per (policies, waivers)
        if key not in self.shared:
            entry = governed_entry(mp)
            self.shared[key] = ({k: canonical_json(v) for k, v in entry.items()}, mp.facets)
        return self.shared[key]


def governed_entry(mp: MergedPoint) -> dict[str, Any]:
    """What policies give a point: facets nested as in the policy language, and their sources."""
    entry: dict[str, Any] = {}
    provenance: dict[str, list[dict[str, str]]] = {}
    for facet, merged in mp.facets.items():
        _nest(entry, facet.split("."), _json_value(merged.value))
        provenance[facet] = [{"policy": c.policy, "at": str(c.location)} for c in merged.winners]
    entry["policies"] = sorted({p.id for p in mp.policies})
    if mp.waived:
        entry["waived"] = sorted((_waiver_entry(w) for w in mp.waived), key=canonical_json)
    entry["provenance"] = provenance
    return entry


def _nest(entry: dict[str, Any], keys: list[str], value: Any) -> None:
    for key in keys[:-1]:
        entry = entry.setdefault(key, {})
    entry[keys[-1]] = value


def _json_value(value: object) -> Any:
    return list(value) if isinstance(value, tuple) else value


def _waiver_entry(waiver: Waiver) -> dict[str, Any]:
    exc = waiver.exception
    return {
        "facets": sorted(set(exc.waive)),
        "reason": exc.reason,
        "approved_by": exc.approved_by,
        "expires": exc.expires.isoformat(),
        "policy": waiver.policy,
        "at": str(exc.location),
    }


def _valid_until(waivers: Iterable[Waiver], timezone: str) -> str | None:
    """The first instant no waiver covers: midnight after the earliest expiry, site time."""
    expiries = [w.exception.expires for w in waivers]
    if not expiries:
        return None
    local = datetime.combine(min(expiries) + timedelta(days=1), time(), ZoneInfo(timezone))
    return local.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def plan_index(plans: Sequence[Plan], merged: MergeResult, as_of: dict[str, date]) -> bytes:
    """The canonical bytes of ``index.json``: every plan with its digest, and what is ungoverned."""
    body: dict[str, Any] = {
        "format": INDEX_FORMAT,
        "as_of": {site: day.isoformat() for site, day in sorted(as_of.items())},
        "plans": [
            {"device": p.device, "file": p.file_name, "digest": p.digest, "points": p.points}
            for p in plans
        ],
        "ungoverned": [mp.target.ref for mp in merged.points if not mp.governed],
    }
    return canonical_json(body)
