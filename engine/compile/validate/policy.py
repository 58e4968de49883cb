"""Validate one policy file and build its :class:`~engine.model.Policy`.

The schema check comes first; the model is built only from a document
without errors, so the builders below may trust types and shapes.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from engine.compile.load import DocPath, Document
from engine.compile.validate.rules import parse_date
from engine.compile.validate.schema_errors import Problem, dotted, not_a_mapping, run, value_at
from engine.compile.validate.schemas import POLICY
from engine.durations import parse_duration
from engine.errors import Finding, Location, error
from engine.model import (
    FACET_GROUPS,
    FACETS,
    NOWHERE,
    Demand,
    DeviceSelector,
    FacetValue,
    PointSelector,
    Policy,
    PolicyException,
)

_EXCEPTION_MUSTS: dict[str, tuple[str, str]] = {
    "reason": ("exception-missing-reason", "no reason; every waiver must say why it is granted"),
    "approved_by": (
        "exception-missing-approver",
        "no approved_by; every waiver must name who approved it",
    ),
    "expires": (
        "exception-missing-expiry",
        "no expires date; every waiver must end, e.g. expires: 2027-03-31",
    ),
}


def check_policy(doc: Document) -> tuple[Policy | None, list[Finding]]:
    """The policy in ``doc`` (``None`` if it has errors) and every finding about it."""
    if not isinstance(doc.data, dict):
        return None, [not_a_mapping(doc, "policy", "policy")]
    found, _ = run(POLICY, doc.data, doc)
    if found:
        return None, [_exception_code(doc, problem) for problem in found]
    conflicts = _retention_conflicts(doc)
    if conflicts:
        return None, conflicts
    return build_policy(doc), []


def _exception_code(doc: Document, problem: Problem) -> Finding:
    """A missing or empty reason, approver or expiry of an exception gets its own code."""
    path = problem.path
    is_must = len(path) == 3 and path[0] == "exceptions" and path[2] in _EXCEPTION_MUSTS
    if not is_must or value_at(doc.data, path) not in (None, ""):
        return problem.finding
    code, why = _EXCEPTION_MUSTS[str(path[2])]
    return error(problem.finding.location, code, f"{dotted(path[:2])} has {why}")


def _retention_conflicts(doc: Document) -> list[Finding]:
    """``keep_at_least`` longer than ``keep_at_most`` in the same policy."""
    retention = doc.data.get("retention") or {}
    least, most = retention.get("keep_at_least"), retention.get("keep_at_most")
    if least is None or most is None or parse_duration(least) <= parse_duration(most):
        return []
    most_at = doc.at(("retention", "keep_at_most"))
    message = (
        f"retention.keep_at_least {least} is longer than retention.keep_at_most {most} ({most_at})"
    )
    return [error(doc.at(("retention", "keep_at_least")), "retention-conflict", message)]


def build_policy(doc: Document) -> Policy:
    """The model of a policy document that passed validation."""
    data = doc.data
    exceptions = data.get("exceptions") or []
    return Policy(
        id=data["policy"],
        title=data["title"],
        owner=data["owner"],
        controls=tuple(data.get("controls") or ()),
        devices=device_selector(doc, ("applies", "devices")),
        points=point_selector(doc, ("applies", "points")),
        demands=demands(doc),
        exceptions=tuple(_exception(doc, ("exceptions", i)) for i in range(len(exceptions))),
        location=doc.at(("policy",)),
    )


def _names(value: str | list[str]) -> tuple[str, ...]:
    """A selector value as a tuple, in the order written, without repeats."""
    return (value,) if isinstance(value, str) else tuple(dict.fromkeys(value))


def _name_set(value: str | list[str]) -> tuple[str, ...]:
    """A list facet as the plan writes it: sorted, without repeats."""
    return tuple(sorted(set(_names(value))))


def item_locations(doc: Document, path: DocPath, key: str) -> dict[str, Location]:
    """``key[value]`` to the place of each value of a list (or of the one value)."""
    value = value_at(doc.data, path)
    if isinstance(value, list):
        places = {f"{key}[{v}]": doc.at((*path, i)) for i, v in reversed(list(enumerate(value)))}
        return places  # reversed, so a repeated value keeps its first place
    return {f"{key}[{value}]": doc.at(path)} if isinstance(value, str) else {}


def _label_map(doc: Document, path: DocPath, key: str, locations: dict[str, Any]) -> dict[str, Any]:
    labels = value_at(doc.data, (*path, key)) or {}
    for label in labels:
        locations[f"{key}.{label}"] = doc.at((*path, key, label))
        locations.update(item_locations(doc, (*path, key, label), f"{key}.{label}"))
    return {label: _names(values) for label, values in labels.items()}


def device_selector(doc: Document, path: DocPath) -> DeviceSelector:
    """The device selector written at ``path``; an absent one matches every device."""
    written = value_at(doc.data, path)
    if written is None:
        return DeviceSelector()
    locations: dict[str, Any] = {}
    names: dict[str, tuple[str, ...]] = {}
    for key in ("site", "zone", "class", "id", "protocol", "has_label"):
        if key in written:
            names[key] = _names(written[key])
            locations[key] = doc.at((*path, key))
            locations.update(item_locations(doc, (*path, key), key))
    return DeviceSelector(
        site=names.get("site", ()),
        zone=names.get("zone", ()),
        class_=names.get("class", ()),
        id=names.get("id", ()),
        protocol=names.get("protocol", ()),
        labels=_label_map(doc, path, "labels", locations),
        labels_not=_label_map(doc, path, "labels_not", locations),
        has_label=names.get("has_label", ()),
        location=doc.at(path),
        locations=locations,
    )


def point_selector(doc: Document, path: DocPath) -> PointSelector:
    """The point selector written at ``path``; an absent one matches every point."""
    written = value_at(doc.data, path)
    if written is None:
        return PointSelector(location=NOWHERE)
    locations = {key: doc.at((*path, key)) for key in written}
    for key in written:
        locations.update(item_locations(doc, (*path, key), key))
    return PointSelector(
        name=_names(written.get("name", ())),
        signal=_names(written.get("signal", ())),
        unit=_names(written.get("unit", ())),
        location=doc.at(path),
        locations=locations,
    )


_DEMANDS: tuple[tuple[str, DocPath, Callable[[Any], FacetValue]], ...] = (
    ("capture.every_ms", ("capture", "every"), parse_duration),
    ("capture.cron", ("capture", "cron"), _name_set),
    ("retention.keep_at_least_ms", ("retention", "keep_at_least"), parse_duration),
    ("retention.keep_at_most_ms", ("retention", "keep_at_most"), parse_duration),
    ("retention.on_expiry", ("retention", "on_expiry"), str),
    ("signing.required", ("signing", "required"), bool),
    ("signing.keys", ("signing", "keys"), _name_set),
    ("signing.batch_window_ms", ("signing", "batch_window"), parse_duration),
    ("access.read", ("access", "read"), _name_set),
    ("access.export", ("access", "export"), _name_set),
    ("access.hold", ("access", "hold"), _name_set),
    ("access.deny", ("access", "deny"), _name_set),
)


def demands(doc: Document) -> dict[str, Demand]:
    """Every facet the policy writes, keyed as in :data:`engine.model.FACETS`.

    A facet the policy leaves out is absent; one written as an empty list
    (``deny: []``) is present with an empty tuple.
    """
    found: dict[str, Demand] = {}
    for facet, path, convert in _DEMANDS:
        raw = value_at(doc.data, path)
        if raw is not None:
            items = tuple(item_locations(doc, path, "").items()) if isinstance(raw, list) else ()
            found[facet] = Demand(convert(raw), doc.at(path), items)
    deadband = _deadband(doc)
    if deadband is not None:
        found["capture.on_change.deadband"] = deadband
    return {facet: found[facet] for facet in sorted(found, key=_facet_order)}


def _facet_order(facet: str) -> int:
    return FACETS.index(facet)


def _deadband(doc: Document) -> Demand | None:
    """``on_change`` without a ``deadband`` means deadband 0, placed at ``on_change``."""
    on_change = value_at(doc.data, ("capture", "on_change"))
    if on_change is None:
        return None
    if "deadband" in on_change:
        path: DocPath = ("capture", "on_change", "deadband")
        return Demand(float(on_change["deadband"]), doc.at(path))
    return Demand(0.0, doc.at(("capture", "on_change")))


def _exception(doc: Document, path: DocPath) -> PolicyException:
    written = value_at(doc.data, path)
    waive = set(written["waive"])
    return PolicyException(
        devices=device_selector(doc, (*path, "devices")),
        points=point_selector(doc, (*path, "points")),
        waive=tuple(group for group in FACET_GROUPS if group in waive),
        reason=written["reason"],
        approved_by=written["approved_by"],
        expires=parse_date(written["expires"]),
        location=doc.at(path),
    )
