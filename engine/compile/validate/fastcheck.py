"""A fast yes for valid documents; cerberus for everything else.

cerberus spends some 50 microseconds on a five-field address and half a
millisecond on a device, and a large site has tens of thousands of them.
This module compiles a cerberus schema that uses only the common rules
(``type``, ``required``, ``nullable``, ``allowed``, ``min``, ``max``,
``empty``, ``regex``, ``default``, ``meta``, ``check_with``, ``schema``,
``valuesrules``, ``keysrules``) into a plain function that answers one
question: is this document valid, and if so, what is it normalized? It never
produces an error: on "no", or for any schema it does not fully understand,
the caller runs cerberus, which stays the only source of findings. A nested
schema (a mapping's fields, a list's items) is compiled the same way;
defaults are applied at the top level only, so a nested schema with defaults
is not compiled. ``check_with`` names are turned into predicates by the
caller's ``checker``. A property test holds the "yes" answers to cerberus's
on generated documents (tests/test_fastcheck.py).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sized
from typing import Any

import cerberus

Check = Callable[[Any], bool]
Accept = Callable[[Mapping[str, Any]], dict[str, Any] | None]
Checker = Callable[[str], Check | None]
"""The predicate of a ``check_with`` name, or ``None`` when it has none."""

RULES = frozenset(
    {
        "type",
        "required",
        "nullable",
        "allowed",
        "min",
        "max",
        "empty",
        "regex",
        "default",
        "meta",
        "check_with",
        "schema",
        "valuesrules",
        "keysrules",
    }
)
Types = Mapping[str, cerberus.TypeDefinition]
Field = tuple[Check, bool, bool, Any]


def compile_schema(schema: Mapping[str, Any], types: Types, checker: Checker) -> Accept | None:
    """A function that returns the normalized document when it is valid, else ``None``.

    ``None`` instead of a function when the schema uses anything beyond the
    rules above (dependencies, coercion, ...).
    """
    fields = _fields(schema, types, checker, nested=False)
    return None if fields is None else _acceptor(fields)


def _fields(
    schema: Mapping[str, Any], types: Types, checker: Checker, *, nested: bool
) -> dict[str, Field] | None:
    fields: dict[str, Field] = {}
    for name, rules in schema.items():
        if not isinstance(rules, Mapping) or not set(rules) <= RULES:
            return None
        if "default" in rules and (nested or rules.get("required")):
            return None
        check = _field_check(rules, types, checker)
        if check is None:
            return None
        fields[name] = (
            check,
            bool(rules.get("required")),
            bool(rules.get("nullable")),
            rules.get("default", _NO_DEFAULT),
        )
    return fields


_NO_DEFAULT = object()


def _acceptor(fields: dict[str, Field]) -> Accept:
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


def _field_check(rules: Mapping[str, Any], types: Types, checker: Checker) -> Check | None:
    checks: list[Check] = []
    kinds = rules.get("type")
    names = [] if kinds is None else [kinds] if isinstance(kinds, str) else list(kinds)
    if not all(name in types for name in names):
        return None
    if names:
        checks.append(_typed([types[name] for name in names]))
    for rule in ("allowed", "min", "max", "empty", "regex"):
        if rule in rules:
            checks.append(_SIMPLE[rule](rules[rule]))
    for rule in ("check_with", "schema", "valuesrules", "keysrules"):
        if rule in rules:
            check = _NESTED[rule](rules[rule], names, types, checker)
            if check is None:
                return None
            checks.append(check)
    return _every(checks)


def _every(checks: list[Check]) -> Check:
    """One predicate for all of ``checks`` (this is the hot path of validation)."""
    if not checks:
        return lambda v: True
    if len(checks) == 1:
        return checks[0]
    if len(checks) == 2:
        first, second = checks
        return lambda v: first(v) and second(v)

    def every(value: Any) -> bool:
        for check in checks:  # noqa: SIM110 - all() over a generator is slower here
            if not check(value):
                return False
        return True

    return every


def _typed(definitions: list[cerberus.TypeDefinition]) -> Check:
    """Whether a value is of one of the types (cerberus's included and excluded types)."""
    pairs = [(d.included_types, d.excluded_types) for d in definitions]
    if len(pairs) == 1:
        [(included, excluded)] = pairs
        return lambda v: isinstance(v, included) and not isinstance(v, excluded)
    return lambda v: any(isinstance(v, inc) and not isinstance(v, exc) for inc, exc in pairs)


def _allowed(allowed: Any) -> Check:
    choices = list(allowed)
    return lambda v: isinstance(v, (str, int, float)) and v in choices


def _min(low: Any) -> Check:
    return lambda v: _ordered(v, low) and v >= low


def _max(high: Any) -> Check:
    return lambda v: _ordered(v, high) and v <= high


def _empty(allowed: Any) -> Check:
    if allowed is not False:
        return lambda v: True
    return lambda v: not isinstance(v, Sized) or len(v) > 0


def _regex(pattern: str) -> Check:
    matcher = re.compile(pattern if pattern.endswith("$") else pattern + "$").match
    return lambda v: isinstance(v, str) and matcher(v) is not None


_SIMPLE: dict[str, Callable[[Any], Check]] = {
    "allowed": _allowed,
    "min": _min,
    "max": _max,
    "empty": _empty,
    "regex": _regex,
}


def _check_with(names: Any, kinds: list[str], types: Types, checker: Checker) -> Check | None:
    wanted = [names] if isinstance(names, str) else names
    if not isinstance(wanted, list) or not all(isinstance(n, str) for n in wanted):
        return None  # a callable, which cerberus runs itself
    predicates = [checker(name) for name in wanted]
    if any(p is None for p in predicates):
        return None
    return _every([p for p in predicates if p is not None])


def _schema(sub: Any, kinds: list[str], types: Types, checker: Checker) -> Check | None:
    """``schema``: a mapping's fields (``type: dict``) or a list's items (``type: list``)."""
    if not isinstance(sub, Mapping) or ("dict" in kinds) == ("list" in kinds):
        return None
    if "dict" in kinds:
        fields = _fields(sub, types, checker, nested=True)
        if fields is None:
            return None
        accept = _acceptor(fields)
        return lambda v: not isinstance(v, Mapping) or accept(v) is not None
    item = _field_check(sub, types, checker)
    if item is None or "default" in sub:
        return None
    return lambda v: not isinstance(v, list) or all(_present(i) and item(i) for i in v)


def _values(rules: Any, kinds: list[str], types: Types, checker: Checker) -> Check | None:
    item = _field_check(rules, types, checker) if isinstance(rules, Mapping) else None
    if item is None or "default" in rules:
        return None
    return lambda v: not isinstance(v, Mapping) or all(_present(i) and item(i) for i in v.values())


def _keys(rules: Any, kinds: list[str], types: Types, checker: Checker) -> Check | None:
    item = _field_check(rules, types, checker) if isinstance(rules, Mapping) else None
    if item is None or "default" in rules:
        return None
    return lambda v: not isinstance(v, Mapping) or all(item(k) for k in v)


def _present(value: Any) -> bool:
    """An item or mapping value that is ``None`` is left to cerberus (``nullable`` rules)."""
    return value is not None


_NESTED: dict[str, Callable[[Any, list[str], Types, Checker], Check | None]] = {
    "check_with": _check_with,
    "schema": _schema,
    "valuesrules": _values,
    "keysrules": _keys,
}


def _ordered(value: Any, bound: Any) -> bool:
    """Whether ``value`` and ``bound`` compare as cerberus would without an error."""
    numbers = (int, float)
    both_numbers = isinstance(value, numbers) and isinstance(bound, numbers)
    return (both_numbers and not isinstance(value, bool)) or type(value) is type(bound)
