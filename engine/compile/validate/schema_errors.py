"""cerberus errors translated into Converge findings, at the exact place.

cerberus reports a tree: group errors (a nested mapping or list failed)
hold their children in ``info[0]``. Only the leaves are user errors. Each
leaf has an absolute ``document_path`` (turned into ``path:line:col`` by
the :class:`~engine.compile.load.Document`) and a ``schema_path`` that, walked
through the schema, gives the rules of the field (what type it wants,
which keys are allowed at that level). cerberus's own English is never
shown: each error code has our message and a stable finding code.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from datetime import date
from difflib import get_close_matches
from typing import Any

from cerberus import errors
from cerberus.errors import ValidationError

from engine.compile.load import DocPath, Document
from engine.compile.validate.fastcheck import Accept, compile_schema
from engine.compile.validate.rules import (
    DATE_EXAMPLE,
    DURATION_EXAMPLE,
    PROBLEM,
    ConvergeValidator,
    check_with,
    show,
)
from engine.errors import Finding, Location, error

_PLAIN_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_-]*")


@dataclass(frozen=True)
class Problem:
    """A finding and the document path it is about (to tell which device it breaks)."""

    path: DocPath
    finding: Finding


def dotted(path: Iterable[str | int]) -> str:
    """``('devices', 2, 'limits', 'min_interval')`` -> ``devices[2].limits.min_interval``."""
    text = ""
    for part in path:
        if isinstance(part, int):
            text += f"[{part}]"
        elif _PLAIN_KEY.fullmatch(part):
            text += f".{part}" if text else part
        else:
            text += f"[{json.dumps(part)}]"
    return text


def suggestion(word: object, choices: Iterable[str]) -> str:
    """`` (did you mean 'x'?)`` for the closest choice, or an empty string."""
    if not isinstance(word, str):
        return ""
    close = get_close_matches(word, list(choices), n=1)
    return f" (did you mean '{close[0]}'?)" if close else ""


def problems(
    found: Iterable[ValidationError], schema: Mapping[str, Any], doc: Document, base: DocPath = ()
) -> list[Problem]:
    """Every leaf of cerberus's error tree as a :class:`Problem`.

    ``base`` prefixes the document paths when ``schema`` validated a part of
    ``doc`` (a device's ``endpoint``, a point's ``address``).
    """
    return [_Leaf(err, schema, doc, base).problem() for err in leaves(found)]


def leaves(found: Iterable[ValidationError]) -> Iterator[ValidationError]:
    """The errors users act on: group errors are opened, *of-rules reported whole."""
    for err in found:
        if err.is_group_error and not err.is_logic_error:
            yield from leaves(err.child_errors)
        else:
            yield err


def walk(schema: Mapping[str, Any], schema_path: Iterable[Any]) -> Mapping[str, Any]:
    """The part of ``schema`` at ``schema_path`` (``{}`` when it cannot be followed)."""
    node: Any = schema
    try:
        for part in schema_path:
            node = node[part]
    except (KeyError, IndexError, TypeError):
        return {}
    return node if isinstance(node, Mapping) else {}


class _Leaf:
    """One leaf error with what its message needs: path, value and field rules."""

    def __init__(
        self, err: ValidationError, schema: Mapping[str, Any], doc: Document, base: DocPath
    ) -> None:
        self.err = err
        self.schema = schema
        self.doc = doc
        self.path: DocPath = (*base, *err.document_path)
        self.field = dotted(self.path)
        self.value = err.value
        self.rules = walk(schema, tuple(err.schema_path)[:-1])

    def problem(self) -> Problem:
        handler = _HANDLERS.get(self.err.code, _Leaf.other)
        return Problem(self.path, handler(self))

    def at_value(self, code: str, message: str) -> Finding:
        return error(self.doc.at(self.path), code, message)

    def unknown(self) -> Finding:
        key = self.path[-1]
        allowed = [str(k) for k in walk(self.schema, self.err.schema_path)]
        where = f" in {dotted(self.path[:-1])}" if len(self.path) > 1 else ""
        message = f"unknown key {show(key)}{where}{suggestion(key, allowed)}"
        return error(self.doc.key_at(self.path), "unknown-key", message)

    def missing(self) -> Finding:
        parent = self.path[:-1]
        where = f" in {dotted(parent)}" if parent else ""
        message = f"missing required key '{self.path[-1]}'{where}"
        return error(self.doc.at(parent), "missing-key", message)

    def bad_type(self) -> Finding:
        message = f"{self.field} must be {expected(self.rules)}, got {show(self.value)}"
        return self.at_value("wrong-type", message + type_hint(self.value, self.rules))

    def null(self) -> Finding:
        message = f"{self.field} must be {expected(self.rules)}, got nothing (the value is empty)"
        return self.at_value("wrong-type", message)

    def empty(self) -> Finding:
        return self.at_value("bad-value", f"{self.field} must not be empty")

    def unallowed(self) -> Finding:
        allowed = [str(a) for a in self.err.constraint or ()]
        hint = suggestion(self.value, allowed)
        message = f"{self.field} must be one of {', '.join(allowed)}, got {show(self.value)}{hint}"
        return self.at_value("bad-value", message)

    def unallowed_many(self) -> Finding:
        allowed = ", ".join(str(a) for a in self.err.constraint or ())
        bad = ", ".join(show(v) for v in self.err.info[0])
        return self.at_value("bad-value", f"{self.field} may only contain {allowed}; got {bad}")

    def out_of_range(self) -> Finding:
        low, high = self.rules.get("min"), self.rules.get("max")
        if low is not None and high is not None:
            want = f"between {low} and {high}"
        else:
            want = f"at least {low}" if low is not None else f"at most {high}"
        return self.at_value("bad-value", f"{self.field} must be {want}, got {show(self.value)}")

    def length(self) -> Finding:
        low, high = self.rules.get("minlength"), self.rules.get("maxlength")
        things = "characters" if isinstance(self.value, str) else "items"
        want = f"at least {low}" if self.err.code == errors.MIN_LENGTH.code else f"at most {high}"
        return self.at_value("bad-value", f"{self.field} must have {want} {things}")

    def regex(self) -> Finding:
        description = self.rules.get("meta", {}).get("description")
        meant = f" ({description})" if isinstance(description, str) else ""
        message = f"{self.field} must match {self.err.constraint}{meant}, got {show(self.value)}"
        return self.at_value("bad-value", message)

    def needs(self) -> Finding:
        """``dependencies``: a key that is only meaningful together with another."""
        if self.err.code == errors.DEPENDENCIES_FIELD.code:
            want = f"'{self.err.info[0]}' to be set"
        else:
            wanted = dict(self.err.constraint or {})
            want = " and ".join(f"'{key}' to be {_any_of(v)}" for key, v in wanted.items())
        where = f" in {dotted(self.path[:-1])}" if len(self.path) > 1 else ""
        return self.at_value("missing-key", f"{self.field} needs {want}{where}")

    def excludes(self) -> Finding:
        other = self.err.info[0] if self.err.info else self.err.constraint
        message = f"{self.field} cannot be used together with {other}"
        return self.at_value("bad-value", message)

    def ours(self) -> Finding:
        code, detail = (str(part) for part in self.err.info[:2])
        return self.at_value(code, f"{self.field}{detail}")

    def custom(self) -> Finding:
        text = " ".join(str(part) for part in self.err.info) or "is not valid"
        return self.at_value("bad-value", f"{self.field}: {text}")

    def other(self) -> Finding:
        if self.err.is_logic_error:
            return self.at_value("bad-value", f"{self.field} matches none of its allowed forms")
        rule = self.err.rule or "schema"
        return self.at_value("bad-value", f"{self.field} is not valid (rule '{rule}')")


_HANDLERS: dict[int, Callable[[_Leaf], Finding]] = {
    errors.UNKNOWN_FIELD.code: _Leaf.unknown,
    errors.REQUIRED_FIELD.code: _Leaf.missing,
    errors.BAD_TYPE.code: _Leaf.bad_type,
    errors.NOT_NULLABLE.code: _Leaf.null,
    errors.EMPTY_NOT_ALLOWED.code: _Leaf.empty,
    errors.UNALLOWED_VALUE.code: _Leaf.unallowed,
    errors.UNALLOWED_VALUES.code: _Leaf.unallowed_many,
    errors.MIN_VALUE.code: _Leaf.out_of_range,
    errors.MAX_VALUE.code: _Leaf.out_of_range,
    errors.MIN_LENGTH.code: _Leaf.length,
    errors.MAX_LENGTH.code: _Leaf.length,
    errors.REGEX_MISMATCH.code: _Leaf.regex,
    errors.DEPENDENCIES_FIELD.code: _Leaf.needs,
    errors.DEPENDENCIES_FIELD_VALUE.code: _Leaf.needs,
    errors.EXCLUDES_FIELD.code: _Leaf.excludes,
    PROBLEM.code: _Leaf.ours,
    errors.CUSTOM.code: _Leaf.custom,
}


def _any_of(values: Any) -> str:
    if isinstance(values, list):
        return " or ".join(show(v) for v in values)
    return show(values)


_TYPE_WORDS: dict[str, tuple[str, str]] = {
    "string": ("a string", "strings"),
    "dict": ("a mapping", "mappings"),
    "list": ("a list", "lists"),
    "boolean": ("true or false", "booleans"),
    "integer": ("a whole number", "whole numbers"),
    "number": ("a number", "numbers"),
    "float": ("a number", "numbers"),
    "date": (DATE_EXAMPLE, "dates"),
}


def _types(rules: Mapping[str, Any]) -> list[str]:
    kind = rules.get("type", [])
    return [kind] if isinstance(kind, str) else [str(k) for k in kind]


def expected(rules: Mapping[str, Any]) -> str:
    """What a field wants, in words: ``a string or a list of strings``."""
    if rules.get("check_with") in ("duration", "positive_duration"):
        return DURATION_EXAMPLE
    if rules.get("check_with") == "iso_date":
        return DATE_EXAMPLE
    return " or ".join(_type_phrase(kind, rules) for kind in _types(rules)) or "something else"


def _type_phrase(kind: str, rules: Mapping[str, Any]) -> str:
    words = _TYPE_WORDS.get(kind, (f"a {kind}", f"{kind} values"))
    item = rules.get("schema")
    if kind == "list" and isinstance(item, Mapping) and isinstance(item.get("type"), str):
        item_words = _TYPE_WORDS.get(item["type"])
        if item_words:
            return f"a list of {item_words[1]}"
    return words[0]


def type_hint(value: Any, rules: Mapping[str, Any]) -> str:
    """The likely fix for a wrong type: quote a YAML boolean, add a unit, bracket a list."""
    kinds = _types(rules)
    is_scalar = isinstance(value, (bool, int, float, date))
    if rules.get("check_with") == "iso_date":
        return ""
    if rules.get("check_with") in ("duration", "positive_duration"):
        number = isinstance(value, int) and not isinstance(value, bool)
        return f" (add a unit, e.g. {value}s)" if number else ""
    if "string" in kinds and is_scalar:
        plain = show(value)
        return f'; put it in quotes if it is meant as text: "{plain}"'
    if "list" in kinds and isinstance(value, str):
        return f" (write [{value}] for a list of one)"
    return ""


def run(
    schema: Mapping[str, Any],
    data: Mapping[str, Any],
    doc: Document,
    base: DocPath = (),
    *,
    normalize: bool = True,
) -> tuple[list[Problem], dict[str, Any]]:
    """Validate ``data`` (found at ``base`` in ``doc``): its problems and normalized copy.

    ``normalize=False`` skips applying defaults, for schemas that have none.
    Raises :class:`cerberus.SchemaError` when ``schema`` itself is malformed.
    """
    validator, accept = _validator(schema, normalize)
    if accept is not None:
        accepted = accept(data)
        if accepted is not None:
            return [], accepted
    try:
        validator.validate(data, normalize=normalize)
    except (TypeError, AttributeError, KeyError):
        # cerberus 1.3 normalises before it checks types, and crashes on some
        # wrong types (a mapping where a list of mappings belongs); checking
        # without normalising reports the wrong type instead.
        validator.validate(data, normalize=False)
    return problems(validator._errors, schema, doc, base), dict(validator.document or {})


_VALIDATORS: dict[int, tuple[Mapping[str, Any], ConvergeValidator, Accept | None, bool]] = {}


def _validator(
    schema: Mapping[str, Any], normalize: bool
) -> tuple[ConvergeValidator, Accept | None]:
    """One validator per schema object (building one checks the whole schema, which is
    slow), and the fast acceptor of valid documents when the schema is simple enough
    (not when defaults are not to be applied but the schema has some)."""
    cached = _VALIDATORS.get(id(schema))
    if cached is None or cached[0] is not schema:
        validator = ConvergeValidator(schema)
        accept = compile_schema(schema, validator.types_mapping, check_with)
        cached = _VALIDATORS[id(schema)] = (schema, validator, accept, _has_defaults(schema))
    _, validator, accept, defaults = cached
    return validator, (accept if normalize or not defaults else None)


def _has_defaults(schema: Mapping[str, Any]) -> bool:
    return any(isinstance(rules, Mapping) and "default" in rules for rules in schema.values())


def not_a_mapping(doc: Document, kind: str, first_key: str) -> Finding:
    """The one finding for a file whose top level is not a mapping (or is empty)."""
    start = f"a {kind} file is a mapping that starts with '{first_key}:'"
    if doc.data is None:
        return error(Location(doc.path), "wrong-type", f"the file is empty; {start}")
    return error(Location(doc.path), "wrong-type", f"{start}, got {show(doc.data)}")


def value_at(data: Any, path: DocPath) -> Any:
    """The value at ``path`` in plain data, or ``None`` when there is none."""
    for part in path:
        if isinstance(data, dict):
            if part not in data:
                return None
            data = data[part]
        elif isinstance(data, list) and isinstance(part, int) and 0 <= part < len(data):
            data = data[part]
        else:
            return None
    return data
