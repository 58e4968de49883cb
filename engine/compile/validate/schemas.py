"""cerberus schemas of the three kinds of file: policy, site inventory, principals.

Plain dicts, read by :class:`engine.compile.validate.rules.ConvergeValidator` (whose
``check_with`` names they use) and translated to JSON Schema for editors by
:mod:`engine.compile.validate.jsonschema`. Each field carries ``meta: {description}`` for
that translation. No schema here has defaults: the validate stage applies
the documented defaults when it builds the model, so that what cerberus
sees is exactly what the user wrote. A device's ``endpoint`` and a point's
``address`` are any mapping here; their shape comes from the protocol
plugin (``converge_endpoint_schema`` / ``converge_address_schema``).
"""

from __future__ import annotations

from typing import Any

from engine.model import FACET_GROUPS

Schema = dict[str, Any]
Rules = dict[str, Any]


def _described(rules: Rules, description: str) -> Rules:
    return {**rules, "meta": {"description": description}}


def text(description: str, *, required: bool = False, empty: bool = False) -> Rules:
    """A string field; by default it must not be empty."""
    rules: Rules = {"type": "string", "empty": empty}
    if required:
        rules["required"] = True
    return _described(rules, description)


def checked(check: str, description: str, *, required: bool = False) -> Rules:
    """A string field run through one of the validator's ``check_with`` checks."""
    rules: Rules = {"type": "string", "check_with": check}
    if required:
        rules["required"] = True
    return _described(rules, description)


def string_list(description: str, check: str = "name") -> Rules:
    """A list of strings, each run through ``check``."""
    return _described(
        {"type": "list", "schema": {"type": "string", "check_with": check}}, description
    )


def one_or_many(description: str, check: str) -> Rules:
    """A string or a list of strings (any-of), each run through ``check``."""
    item = {"type": "string", "check_with": check}
    return _described(
        {"type": ["string", "list"], "check_with": check, "schema": item}, description
    )


def mapping(schema: Schema, description: str, *, required: bool = False) -> Rules:
    rules: Rules = {"type": "dict", "schema": schema}
    if required:
        rules["required"] = True
    return _described(rules, description)


def list_of(
    schema: Schema, description: str, *, required: bool = False, empty: bool = True
) -> Rules:
    rules: Rules = {"type": "list", "empty": empty, "schema": {"type": "dict", "schema": schema}}
    if required:
        rules["required"] = True
    return _described(rules, description)


def _label_selector(description: str) -> Rules:
    values = one_or_many("accepted values of the label (any-of)", "name")
    return _described({"type": "dict", "valuesrules": values}, description)


_GLOB = "shell globs * ? [..] allowed; a list means any-of"

DEVICE_SELECTOR: Schema = {
    "site": one_or_many(f"site ids; {_GLOB}", "glob"),
    "zone": one_or_many(f"zones; {_GLOB}", "glob"),
    "class": one_or_many(f"device classes; {_GLOB}", "glob"),
    "id": one_or_many(f"device ids; {_GLOB}", "glob"),
    "protocol": one_or_many(f"protocol names; {_GLOB}", "glob"),
    "labels": _label_selector("label -> value(s) the device's label must have"),
    "labels_not": _label_selector("label -> value(s) the device's label must not have"),
    "has_label": one_or_many("label names of which at least one must be present", "name"),
}

POINT_SELECTOR: Schema = {
    "name": one_or_many(f"point names; {_GLOB}", "glob"),
    "signal": one_or_many("signals such as temperature (any-of)", "name"),
    "unit": one_or_many("units such as degC (any-of)", "name"),
}

CAPTURE: Schema = {
    "every": checked("positive_duration", "samples at most this far apart, e.g. 5s"),
    "cron": _described(
        {"type": ["string", "list"], "check_with": "cron", "schema": checked("cron", "cron")},
        "capture at these instants (croniter syntax, site time zone)",
    ),
    "on_change": mapping(
        {
            "deadband": _described(
                {"type": "number", "min": 0, "check_with": "finite"},
                "smallest change reported (default 0)",
            )
        },
        "also report by exception between scheduled samples",
    ),
}

RETENTION: Schema = {
    "keep_at_least": checked("duration", "legal minimum retention, e.g. 7y"),
    "keep_at_most": checked("duration", "data-minimisation ceiling, e.g. 10y"),
    "on_expiry": _described(
        {"type": "string", "allowed": ["delete", "archive"]}, "what happens after keep_at_most"
    ),
}

SIGNING: Schema = {
    "required": _described({"type": "boolean"}, "whether batches must be signed"),
    "keys": string_list("signing key ids (kebab-case); each signs every batch root", "kebab_id"),
    "batch_window": checked("positive_duration", "one signed root per device per window"),
}

ACCESS: Schema = {
    "read": string_list("roles granted read access", "role"),
    "export": string_list("roles granted export", "role"),
    "hold": string_list("roles granted to place and release legal holds", "role"),
    "deny": string_list("roles denied (deny overrides any grant)", "role"),
}

EXCEPTION: Schema = {
    "devices": mapping(DEVICE_SELECTOR, "which devices the waiver covers", required=True),
    "points": mapping(POINT_SELECTOR, "which points of those devices (default: all)"),
    "waive": _described(
        {
            "type": "list",
            "required": True,
            "empty": False,
            "schema": {"type": "string", "allowed": list(FACET_GROUPS)},
        },
        "facets waived: capture, retention, signing, access",
    ),
    "reason": text("why the waiver is granted", required=True),
    "approved_by": text("who approved the waiver", required=True),
    "expires": _described(
        {"type": ["date", "string"], "required": True, "check_with": "iso_date"},
        "last day the waiver applies, e.g. 2027-03-31",
    ),
}

POLICY: Schema = {
    "policy": checked("kebab_id", "unique policy id, kebab-case", required=True),
    "title": text("human-readable title", required=True),
    "owner": text("owning team", required=True),
    "description": text("longer description", empty=True),
    "controls": string_list("regulatory controls this policy implements"),
    "applies": mapping(
        {
            "devices": mapping(DEVICE_SELECTOR, "device selector (AND across keys)"),
            "points": mapping(POINT_SELECTOR, "point selector (AND across keys)"),
        },
        "what the policy governs; an empty selector matches everything",
        required=True,
    ),
    "capture": mapping(CAPTURE, "how often points are sampled"),
    "retention": mapping(RETENTION, "how long data is kept"),
    "signing": mapping(SIGNING, "whether and how data is signed"),
    "access": mapping(ACCESS, "who may read, export and hold"),
    "exceptions": list_of(EXCEPTION, "time-boxed waivers of this policy's facets"),
}

LIMITS: Schema = {
    "min_interval": checked("duration", "shortest interval between reads of a point"),
    "max_requests_per_second": _described(
        {"type": "number", "check_with": ["finite", "positive"]}, "request rate ceiling"
    ),
    "max_registers_per_read": _described(
        {"type": "integer", "min": 1, "max": 125}, "Modbus registers per request"
    ),
    "max_bits_per_read": _described(
        {"type": "integer", "min": 1, "max": 2000}, "Modbus coils/inputs per request"
    ),
    "max_nodes_per_read": _described({"type": "integer", "min": 1}, "OPC UA nodes per read"),
    "max_gap": _described(
        {"type": "integer", "min": 0}, "unused registers a read may span (default 0)"
    ),
    "max_connections": _described(
        {"type": "integer", "min": 1}, "concurrent connections (default 1)"
    ),
    "timeout": checked("positive_duration", "request timeout"),
    "pause_after_connect": checked("duration", "wait after connecting"),
    "min_request_spacing": checked("duration", "pause between two requests"),
    "close_after_cycle": _described(
        {"type": "boolean"}, "disconnect after each cycle (default false)"
    ),
}

POINT: Schema = {
    "name": text("point name, unique within the device", required=True),
    "signal": text("what is measured, e.g. temperature"),
    "unit": text("engineering unit, e.g. degC"),
    "description": text("description", empty=True),
    "address": _described(
        {"type": "dict", "required": True}, "where the point is read (protocol-specific)"
    ),
}

DEVICE: Schema = {
    "id": checked(
        "device_id", "device id, unique in the site (used as a file name)", required=True
    ),
    "class": text("device class, e.g. reactor"),
    "zone": text("network or plant zone, e.g. production"),
    "description": text("description", empty=True),
    "labels": _described(
        {"type": "dict", "valuesrules": {"type": "string"}}, "free-form labels (string values)"
    ),
    "protocol": text("name of the protocol plugin", required=True),
    "endpoint": _described({"type": "dict"}, "how to reach the device (protocol-specific)"),
    "limits": mapping(LIMITS, "what the device can bear"),
    "points": list_of(POINT, "the device's points", required=True, empty=False),
}

SITE: Schema = {
    "site": checked("kebab_id", "unique site id, kebab-case", required=True),
    "title": text("human-readable title"),
    "timezone": checked("timezone", "IANA time zone, e.g. Europe/Zurich", required=True),
    "devices": list_of(DEVICE, "the site's devices", required=True),
}

PRINCIPAL: Schema = {
    "id": text("person or service id, e.g. alice@example.com", required=True),
    "kind": _described(
        {"type": "string", "required": True, "allowed": ["person", "service"]}, "person or service"
    ),
    "roles": string_list("roles held", "role"),
    "name": text("printed name, shown in electronic signatures and the audit trail"),
    "os_users": string_list(
        "the only operating-system accounts that may act as this principal (--as)", "name"
    ),
    "certificates": _described(
        {"type": "list", "schema": {"type": "string", "regex": "sha256:[0-9a-f]{64}"}},
        "SHA-256 fingerprints (sha256:<64 hex digits>) of TLS client certificates that"
        " authenticate as this principal to converge serve",
    ),
}

PRINCIPALS: Schema = {
    "principals": list_of(PRINCIPAL, "people and services and their roles", required=True),
}

SCHEMAS: dict[str, Schema] = {"policy": POLICY, "site": SITE, "principals": PRINCIPALS}

DEVICE_SHAPE: Schema = {
    **DEVICE,
    "points": _described(
        {"type": "list", "required": True, "empty": False, "schema": {"type": "dict"}},
        "the device's points",
    ),
}
"""``DEVICE`` with each point only checked to be a mapping: validate_site checks points
one by one against ``POINT``, memoised, since large sites repeat the same points."""

SITE_SHAPE: Schema = {
    **SITE,
    "devices": _described(
        {"type": "list", "required": True, "schema": {"type": "dict"}}, "the site's devices"
    ),
}
"""``SITE`` with each device only checked to be a mapping: validate_site checks devices
one by one against ``DEVICE_SHAPE``, so that the cost of a site is the sum of its devices'
(cerberus only for a broken one), whatever their number."""
