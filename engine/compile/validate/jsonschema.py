"""JSON Schema (draft 2020-12) of the three kinds of file, for editors.

Translated from the cerberus schemas in :mod:`engine.compile.validate.schemas`, so that the
two cannot drift: yaml-language-server then completes keys, shows the
descriptions and flags typos while a file is written. Site files include
each protocol plugin's ``endpoint`` and ``address`` schemas, selected by
``protocol`` with ``if``/``then``. The JSON Schema is a help for editors;
``converge check`` remains the judge (it also checks cron expressions,
time zones, glob syntax and cross-field rules).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from typing import Any, Literal

import pluggy

from engine.compile.validate.schemas import SCHEMAS
from engine.plugin_manager import protocol_names

DRAFT = "https://json-schema.org/draft/2020-12/schema"

Kind = Literal["policy", "site", "principals"]
JSON = dict[str, Any]

_CHECK_PATTERNS: dict[str, str] = {
    "duration": r"^[0-9]+(ms|s|m|h|d|w|y)$",
    "positive_duration": r"^0*[1-9][0-9]*(ms|s|m|h|d|w|y)$",
    "kebab_id": r"^[a-z0-9]+(-[a-z0-9]+)*$",
    "device_id": r"^[A-Za-z0-9][A-Za-z0-9_.-]*$",
    "role": r"^[a-z0-9][a-z0-9_.-]*$",
}


def json_schema(kind: Kind, pm: pluggy.PluginManager) -> JSON:
    """The JSON Schema of a ``policy``, ``site`` or ``principals`` file."""
    if kind not in SCHEMAS:
        raise ValueError(f"unknown kind of file {kind!r}; want one of {', '.join(SCHEMAS)}")
    root: JSON = {
        "$schema": DRAFT,
        "title": f"Converge {kind} file",
        **object_schema(SCHEMAS[kind]),
    }
    if kind == "site":
        _add_protocols(root["properties"]["devices"]["items"], pm)
    return root


def object_schema(schema: Mapping[str, Any]) -> JSON:
    """A cerberus mapping schema as a closed JSON object (unknown keys are errors)."""
    out: JSON = {
        "type": "object",
        "properties": {key: field_schema(rules) for key, rules in schema.items()},
        "additionalProperties": False,
    }
    required = [key for key, rules in schema.items() if _get(rules, "required") is True]
    if required:
        out["required"] = required
    dependent = {key: _dependencies(rules) for key, rules in schema.items()}
    dependent = {key: needs for key, needs in dependent.items() if needs}
    if dependent:
        out["dependentRequired"] = dependent
    return out


def _dependencies(rules: Any) -> list[str]:
    """Keys a field needs (cerberus ``dependencies`` as a name or a list of names)."""
    needs = _get(rules, "dependencies")
    if isinstance(needs, str):
        return [needs]
    return [n for n in needs if isinstance(n, str)] if isinstance(needs, list) else []


def field_schema(rules: Any) -> JSON:
    """One field's cerberus rules as JSON Schema (unknown rules are left out)."""
    if not isinstance(rules, Mapping):
        return {}
    variants = _unique([_typed(kind, rules) for kind in _types(rules)])
    out: JSON
    if not variants:
        out = {"enum": list(rules["allowed"])} if "allowed" in rules else {}
    else:
        out = variants[0] if len(variants) == 1 else {"anyOf": variants}
    description = _get(rules.get("meta"), "description")
    if isinstance(description, str):
        out["description"] = description
    if _is_json_scalar(rules.get("default", ...)):
        out["default"] = rules["default"]
    return out


def _typed(kind: str, rules: Mapping[str, Any]) -> JSON:
    if kind in ("integer", "number", "float"):
        return _numeric("integer" if kind == "integer" else "number", rules)
    builder = _BUILDERS.get(kind)
    return builder(rules) if builder else {}


def _dict(rules: Mapping[str, Any]) -> JSON:
    if isinstance(rules.get("schema"), Mapping):
        return object_schema(rules["schema"])
    if isinstance(rules.get("valuesrules"), Mapping):
        return {"type": "object", "additionalProperties": field_schema(rules["valuesrules"])}
    return {"type": "object"}


def _list(rules: Mapping[str, Any]) -> JSON:
    out: JSON = {"type": "array"}
    if isinstance(rules.get("schema"), Mapping):
        out["items"] = field_schema(rules["schema"])
    low = 1 if rules.get("empty") is False else rules.get("minlength")
    if isinstance(low, int):
        out["minItems"] = low
    if isinstance(rules.get("maxlength"), int):
        out["maxItems"] = rules["maxlength"]
    return out


def _string(rules: Mapping[str, Any]) -> JSON:
    checks = _checks(rules)
    if "iso_date" in checks:
        return {"type": "string", "format": "date"}
    out: JSON = {"type": "string"}
    if rules.get("empty") is False or "name" in checks or "glob" in checks:
        out["minLength"] = 1
    patterns = [_CHECK_PATTERNS[c] for c in checks if c in _CHECK_PATTERNS]
    if isinstance(rules.get("regex"), str):
        patterns.append(f"^(?:{rules['regex']})$")
    if patterns:
        out["pattern"] = patterns[0]
    if "allowed" in rules:
        out["enum"] = list(rules["allowed"])
    return out


def _numeric(kind: str, rules: Mapping[str, Any]) -> JSON:
    out: JSON = {"type": kind}
    if isinstance(rules.get("min"), (int, float)):
        out["minimum"] = rules["min"]
    if isinstance(rules.get("max"), (int, float)):
        out["maximum"] = rules["max"]
    if "positive" in _checks(rules):
        out["exclusiveMinimum"] = 0
    if "allowed" in rules:
        out["enum"] = list(rules["allowed"])
    return out


def _date(rules: Mapping[str, Any]) -> JSON:
    return {"type": "string", "format": "date"}


def _boolean(rules: Mapping[str, Any]) -> JSON:
    return {"type": "boolean"}


_BUILDERS: dict[str, Callable[[Mapping[str, Any]], JSON]] = {
    "dict": _dict,
    "list": _list,
    "string": _string,
    "date": _date,
    "boolean": _boolean,
}
"""JSON Schema of each cerberus type but the numeric ones (see :func:`_numeric`)."""


def _add_protocols(device: JSON, pm: pluggy.PluginManager) -> None:
    """Constrain ``protocol`` to the installed plugins and add each one's shapes."""
    names = protocol_names(pm)
    if names:
        device["properties"]["protocol"]["enum"] = names
    cases = [case for case in (_protocol_case(pm, name) for name in names) if case]
    if cases:
        device["allOf"] = cases


def _protocol_case(pm: pluggy.PluginManager, name: str) -> JSON | None:
    endpoint = pm.hook.converge_endpoint_schema(protocol=name)
    address = pm.hook.converge_address_schema(protocol=name)
    then: JSON = {"properties": {}}
    if isinstance(endpoint, Mapping):
        then["properties"]["endpoint"] = object_schema(endpoint)
        if any(_get(rules, "required") is True for rules in endpoint.values()):
            then["required"] = ["endpoint"]
    if isinstance(address, Mapping):
        item = {"properties": {"address": object_schema(address)}}
        then["properties"]["points"] = {"items": item}
    if not then["properties"]:
        return None
    condition = {"properties": {"protocol": {"const": name}}, "required": ["protocol"]}
    return {"if": condition, "then": then}


def _types(rules: Mapping[str, Any]) -> list[str]:
    kind = rules.get("type", [])
    return [kind] if isinstance(kind, str) else [str(k) for k in kind]


def _checks(rules: Mapping[str, Any]) -> list[str]:
    check = rules.get("check_with", [])
    checks = [check] if isinstance(check, str) else list(check) if isinstance(check, list) else []
    return [c for c in checks if isinstance(c, str)]


def _get(rules: Any, key: str) -> Any:
    return rules.get(key) if isinstance(rules, Mapping) else None


def _unique(variants: list[JSON]) -> list[JSON]:
    seen: dict[str, JSON] = {}
    for variant in variants:
        seen.setdefault(json.dumps(variant, sort_keys=True), variant)
    return list(seen.values())


def _is_json_scalar(value: Any) -> bool:
    return value is None or isinstance(value, (str, int, float, bool))
