"""A fast yes for valid documents; cerberus for everything else.

cerberus spends some 50 microseconds on a five-field address, and a large
site has tens of thousands of distinct points and addresses. This module
compiles a flat cerberus schema that uses only the simplest rules (``type``,
``required``, ``nullable``, ``allowed``, ``min``, ``max``, ``empty``,
``regex``, ``default``, ``meta``) into a plain function that answers one
question: is this document valid, and if so, what is it normalized? It never
produces an error: on "no", or for any schema it does not fully understand,
the caller runs cerberus, which stays the only source of findings. A
property test holds the "yes" answers to cerberus's on generated documents.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sized
from typing import Any

import cerberus

Check = Callable[[Any], bool]
Accept = Callable[[Mapping[str, Any]], dict[str, Any] | None]

SIMPLE_RULES = frozenset(
    {"type", "required", "nullable", "allowed", "min", "max", "empty", "regex", "default", "meta"}
)


def compile_schema(
    schema: Mapping[str, Any], types: Mapping[str, cerberus.TypeDefinition]
) -> Accept | None:
    """A function that returns the normalized document when it is valid, else ``None``.

    ``None`` instead of a function when the schema uses anything beyond the
    simple rules (nested schemas, ``check_with``, dependencies, ...).
    """
    fields: dict[str, tuple[Check, bool, bool, Any]] = {}
    for name, rules in schema.items():
        if not isinstance(rules, Mapping) or not set(rules) <= SIMPLE_RULES:
            return None
        if "default" in rules and rules.get("required"):
            return None
        check = _field_check(rules, types)
        if check is None:
            return None
        fields[name] = (
            check,
            bool(rules.get("required")),
            bool(rules.get("nullable")),
            rules.get("default", _NO_DEFAULT),
        )
    return _acceptor(fields)


_NO_DEFAULT = object()


def _acceptor(fields: dict[str, tuple[Check, bool, bool, Any]]) -> Accept:
    def accept(document: Mapping[str, Any]) -> dict[str, Any] | None:
        if not all(key in fields for key in document):
            return None
        result = dict(document)
        for name, (check, required, nullable, default) in fields.items():
            value = result.get(name)
            if default is not _NO_DEFAULT and (
                name not in result or (value is None and not nullable)
            ):
                result[name] = value = default
            if name not in result:
                if required:
                    return None
                continue
            if value is None:
                if not nullable:
                    return None
                continue
            if not check(value):
                return None
        return result

    return accept


def _field_check(
    rules: Mapping[str, Any], types: Mapping[str, cerberus.TypeDefinition]
) -> Check | None:
    checks: list[Check] = []
    kinds = rules.get("type")
    if kinds is not None:
        names = [kinds] if isinstance(kinds, str) else list(kinds)
        if not all(name in types for name in names):
            return None
        definitions = [types[name] for name in names]
        checks.append(lambda v: any(_is(v, d) for d in definitions))
    if "allowed" in rules:
        allowed = list(rules["allowed"])
        checks.append(lambda v: isinstance(v, (str, int, float)) and v in allowed)
    if "min" in rules:
        low = rules["min"]
        checks.append(lambda v: _ordered(v, low) and v >= low)
    if "max" in rules:
        high = rules["max"]
        checks.append(lambda v: _ordered(v, high) and v <= high)
    if rules.get("empty") is False:
        checks.append(lambda v: not isinstance(v, Sized) or len(v) > 0)
    if "regex" in rules:
        pattern = rules["regex"] if rules["regex"].endswith("$") else rules["regex"] + "$"
        matcher = re.compile(pattern).match
        checks.append(lambda v: isinstance(v, str) and matcher(v) is not None)
    return lambda v: all(check(v) for check in checks)


def _is(value: Any, definition: cerberus.TypeDefinition) -> bool:
    return isinstance(value, definition.included_types) and not isinstance(
        value, definition.excluded_types
    )


def _ordered(value: Any, bound: Any) -> bool:
    """Whether ``value`` and ``bound`` compare as cerberus would without an error."""
    numbers = (int, float)
    both_numbers = isinstance(value, numbers) and isinstance(bound, numbers)
    return (both_numbers and not isinstance(value, bool)) or type(value) is type(bound)
