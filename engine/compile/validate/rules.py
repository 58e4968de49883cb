"""The cerberus validator of Converge: strict types and our own value checks.

Schemas in :mod:`engine.compile.validate.schemas` name these checks with ``check_with``
(``'check_with': 'duration'``). A failing check files a :data:`PROBLEM`
error whose ``info`` is ``(code, detail)``: the stable finding code and the
message text that follows the field's dotted path. Plugin schemas are run
by the same validator, so they may use these checks too.
"""

from __future__ import annotations

import copy
import math
import re
from collections.abc import Callable
from datetime import date, datetime
from difflib import get_close_matches
from functools import cache, lru_cache
from typing import Any, ClassVar
from zoneinfo import ZoneInfo, available_timezones

import cerberus
from cerberus import errors
from croniter import croniter

from engine.durations import parse_duration
from engine.model import KEBAB_ID

PROBLEM = errors.ErrorDefinition(0x0F, None)
"""A failed Converge check; ``info`` is ``(code, detail)``."""

DEVICE_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")
ROLE = re.compile(r"[a-z0-9][a-z0-9_.-]*")
ISO_DATE = re.compile(r"\d{4}-\d{2}-\d{2}")

CRON_FIELDS = "fields: minute hour day-of-month month day-of-week"
_CRON_NOISE = re.compile(r"^\[.*?\]\s*(is not acceptable,?\s*)?")

LAST_DAY = date(9999, 12, 30)
"""The last date a waiver may end on: it ends at midnight after that day, which must exist."""

DURATION_EXAMPLE = "a duration such as 5s or 90d"
DATE_EXAMPLE = "a date such as 2027-03-31"


def show(value: Any) -> str:
    """A value as a user wrote it in YAML, on one line and short enough for a message."""
    if isinstance(value, str):
        text = value if len(value) <= 60 else f"{value[:57]}..."
        return f"'{_LINE_BREAKING.sub(_escaped, text)}'"
    if isinstance(value, bool) or value is None:
        return _YAML_WORDS[value]
    if isinstance(value, date):
        return value.isoformat(" ") if isinstance(value, datetime) else value.isoformat()
    if isinstance(value, (dict, list)):
        return "a mapping" if isinstance(value, dict) else "a list"
    return _number(value)


def _number(value: Any) -> str:
    """A number as YAML writes it (``.nan``, ``-.inf``); a huge integer by its size."""
    if isinstance(value, float) and not math.isfinite(value):
        return ".nan" if math.isnan(value) else ("-.inf" if value < 0 else ".inf")
    if isinstance(value, int) and value.bit_length() > 64:
        return f"an integer of {value.bit_length()} bits"
    return str(value)


_YAML_WORDS: dict[bool | None, str] = {True: "true", False: "false", None: "null"}
_LINE_BREAKING = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]")


def _escaped(match: re.Match[str]) -> str:
    return match.group().encode("unicode_escape").decode("ascii")


def glob_problem(pattern: str) -> str | None:
    """Why ``pattern`` is not a usable shell glob (``* ? [..]``), or ``None``."""
    if not pattern:
        return "is empty"
    i = 0
    while i < len(pattern):
        if pattern[i] == "[":
            end = _class_end(pattern, i)
            if end < 0:
                return f"has an unclosed '[' at character {i + 1} (write '[[]' for a literal '[')"
            reversed_range = _reversed_range(pattern[i + 1 : end])
            if reversed_range:
                return f"has a reversed range '{reversed_range}' that matches nothing"
            i = end
        i += 1
    return None


def _class_end(pattern: str, start: int) -> int:
    """Index of the ``]`` closing the class at ``start`` (fnmatch's rules), or -1."""
    j = start + 1
    if j < len(pattern) and pattern[j] == "!":
        j += 1
    if j < len(pattern) and pattern[j] == "]":
        j += 1
    return pattern.find("]", j)


def _reversed_range(body: str) -> str | None:
    body = body.removeprefix("!")
    for k in range(len(body) - 2):
        if body[k + 1] == "-" and body[k] > body[k + 2]:
            return body[k : k + 3]
    return None


def cron_problem(expression: str) -> str | None:
    """Why croniter refuses ``expression``, or ``None`` when it is valid."""
    try:
        if croniter.is_valid(expression):
            return None
        croniter(expression)
    except Exception as exc:  # croniter raises several kinds on odd input
        reason = _CRON_NOISE.sub("", str(exc)).rstrip(".")
        return f"{reason or 'not accepted'} ({CRON_FIELDS})"
    return f"not accepted ({CRON_FIELDS})"


@lru_cache(maxsize=1)
def known_timezones() -> frozenset[str]:
    return frozenset(available_timezones())


def timezone_known(name: str) -> bool:
    if name in known_timezones():
        return True
    try:
        ZoneInfo(name)
    except (ValueError, KeyError, OSError, UnicodeError):
        return False
    return True


class _CheckedSchema(cerberus.schema.DefinitionSchema):  # type: ignore[misc]
    """A definition schema that is checked once, not again on each copy.

    cerberus 1.3 copies the root schema every time it normalises a document
    and re-checks each field of the copy, hashing the schema and the type
    map each time: half a millisecond for a ten-field Modbus address, which
    made validation of a 100,000-point site take a minute. The copies are
    made only to resolve registry references, which Converge's schemas do
    not use, so the rules of a copy are the rules already checked.
    """

    def copy(self) -> _CheckedSchema:
        clone = copy.copy(self)
        clone.schema = self.schema.copy()
        return clone

    def __setitem__(self, key: str, value: Any) -> None:
        self.schema[key] = value


class ConvergeValidator(cerberus.Validator):  # type: ignore[misc]
    """cerberus with strict types (``true`` is not a number) and Converge's checks."""

    @property
    def schema(self) -> Any:
        return self._schema

    @schema.setter
    def schema(self, schema: Any) -> None:
        if schema is None or self.is_child or isinstance(schema, _CheckedSchema):
            self._schema = schema
        else:
            self._schema = _CheckedSchema(self, schema)

    types_mapping: ClassVar[dict[str, cerberus.TypeDefinition]] = {
        **cerberus.Validator.types_mapping,
        "integer": cerberus.TypeDefinition("integer", (int,), (bool,)),
        "float": cerberus.TypeDefinition("float", (float, int), (bool,)),
        "number": cerberus.TypeDefinition("number", (float, int), (bool,)),
        "date": cerberus.TypeDefinition("date", (date,), (datetime,)),
    }

    def _problem(self, field: str, code: str, detail: str) -> None:
        self._error(field, PROBLEM, code, detail)

    def _check_with_duration(self, field: str, value: Any) -> None:
        self._check_duration(field, value, positive=False)

    def _check_with_positive_duration(self, field: str, value: Any) -> None:
        self._check_duration(field, value, positive=True)

    def _check_duration(self, field: str, value: Any, *, positive: bool) -> None:
        if not isinstance(value, str):
            return  # cerberus runs check_with on null values too; 'nullable' reports them
        if not any(c.isdigit() for c in value):
            self._problem(field, "wrong-type", f" must be {DURATION_EXAMPLE}, got {show(value)}")
            return
        try:
            ms = parse_duration(value)
        except ValueError as exc:
            self._problem(field, "duration-invalid", f": {exc}")
            return
        if positive and ms == 0:
            self._problem(field, "bad-value", f" must be longer than 0, got {show(value)}")

    def _check_with_kebab_id(self, field: str, value: Any) -> None:
        if isinstance(value, str) and not KEBAB_ID.fullmatch(value):
            detail = (
                " must be a kebab-case id such as gmp-process-data (lowercase letters and"
                f" digits, words joined by single hyphens), got {show(value)}"
            )
            self._problem(field, "id-invalid", detail)

    def _check_with_device_id(self, field: str, value: Any) -> None:
        if isinstance(value, str) and not DEVICE_ID.fullmatch(value):
            detail = (
                " must start with a letter or digit and use only letters, digits, '_', '.'"
                f" and '-' (it becomes a file name), got {show(value)}"
            )
            self._problem(field, "id-invalid", detail)

    def _check_with_role(self, field: str, value: Any) -> None:
        if isinstance(value, str) and not ROLE.fullmatch(value):
            detail = (
                " must be a role name: lowercase letters, digits, '_', '.' and '-',"
                f" starting with a letter or digit, got {show(value)}"
            )
            self._problem(field, "id-invalid", detail)

    def _check_with_glob(self, field: str, value: Any) -> None:
        if isinstance(value, str):
            problem = glob_problem(value)
            if problem:
                self._problem(field, "glob-invalid", f" glob {show(value)} {problem}")

    def _check_with_name(self, field: str, value: Any) -> None:
        if isinstance(value, str) and not value:
            self._problem(field, "bad-value", " must not be empty")

    def _check_with_cron(self, field: str, value: Any) -> None:
        if isinstance(value, str):
            problem = cron_problem(value)
            if problem:
                detail = f" {show(value)} is not a valid cron expression: {problem}"
                self._problem(field, "cron-invalid", detail)

    def _check_with_timezone(self, field: str, value: Any) -> None:
        if isinstance(value, str) and not timezone_known(value):
            detail = f" {show(value)} is not a known IANA time zone{_zone_hint(value)}"
            self._problem(field, "timezone-unknown", detail)

    def _check_with_iso_date(self, field: str, value: Any) -> None:
        if isinstance(value, str) and not _is_iso_date(value):
            self._problem(field, "wrong-type", f" must be {DATE_EXAMPLE}, got {show(value)}")
        elif _is_day(value) and parse_date(value) > LAST_DAY:
            detail = (
                f" must be {LAST_DAY.isoformat()} or earlier (the day after it must exist),"
                f" got {show(value)}"
            )
            self._problem(field, "bad-value", detail)

    def _check_with_finite(self, field: str, value: Any) -> None:
        if _is_number(value) and not math.isfinite(value):
            self._problem(field, "bad-value", f" must be a finite number, got {show(value)}")

    def _check_with_positive(self, field: str, value: Any) -> None:
        if _is_number(value) and math.isfinite(value) and value <= 0:
            self._problem(field, "bad-value", f" must be greater than 0, got {show(value)}")


class _Refused(Exception):
    """A check of the probe failed (never leaves this module)."""


class _Probe(ConvergeValidator):
    """Runs one ``check_with`` check on one value and says only whether it passed."""

    def _problem(self, field: str, code: str, detail: str) -> None:
        raise _Refused


_PROBE = _Probe({})


@cache
def check_with(name: str) -> Callable[[Any], bool] | None:
    """The ``check_with`` check ``name`` as a predicate, for the fast acceptor (fastcheck)."""
    method = getattr(_PROBE, f"_check_with_{name}", None)
    if method is None:
        return None

    def passes(value: Any) -> bool:
        try:
            method("value", value)
        except _Refused:
            return False
        return True

    return passes


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _zone_hint(name: str) -> str:
    close = get_close_matches(name, sorted(known_timezones()), n=1)
    if close:
        return f" (did you mean '{close[0]}'?)"
    return " (such as Europe/Zurich or UTC)"


def _is_day(value: Any) -> bool:
    """A date (not a time) or the ISO text of one."""
    if isinstance(value, str):
        return _is_iso_date(value)
    return isinstance(value, date) and not isinstance(value, datetime)


def _is_iso_date(text: str) -> bool:
    if not ISO_DATE.fullmatch(text):
        return False
    try:
        date.fromisoformat(text)
    except ValueError:
        return False
    return True


def parse_date(value: date | str) -> date:
    """A schema-valid ``expires`` value as a date (YAML date or ISO string)."""
    return value if isinstance(value, date) else date.fromisoformat(value)
