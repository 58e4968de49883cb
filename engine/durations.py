"""Durations as policy and site files write them: ``<whole number><unit>``.

Units are ``ms s m h d w y``; a year is 365 days (retention law counts
calendar years, but a fixed length keeps plans deterministic and the
difference is at most a day per leap year). Only whole numbers are
accepted: ``1.5h`` is refused with the exact equivalent (``90m``) offered.
The plan writes every duration as an integer number of milliseconds.
"""

from __future__ import annotations

import re
from decimal import Decimal, InvalidOperation

UNIT_MS: dict[str, int] = {
    "ms": 1,
    "s": 1000,
    "m": 60 * 1000,
    "h": 60 * 60 * 1000,
    "d": 24 * 60 * 60 * 1000,
    "w": 7 * 24 * 60 * 60 * 1000,
    "y": 365 * 24 * 60 * 60 * 1000,
}
"""Milliseconds per unit."""

MAX_MS = 1000 * UNIT_MS["y"]
"""Longest duration accepted (1000y): longer is surely a typo, and it keeps every
duration an exact integer in JSON (below 2**53)."""

_UNITS_TEXT = "ms, s, m, h, d, w or y"
_DURATION = re.compile(r"([0-9]+)(ms|s|m|h|d|w|y)")
_NUMBER_UNIT = re.compile(r"([+-]?)([0-9]*\.?[0-9]*)\s*([A-Za-z]*)")
_COMPOUND = re.compile(r"(?:[0-9]+(?:ms|s|m|h|d|w|y)){2,}")
"""Several numbers and units, as in ``1h30m``: one of each is written (``90m``)."""


def parse_duration(text: str) -> int:
    """Milliseconds in ``text`` (e.g. ``"90d"``, ``"500ms"``).

    Raises :class:`ValueError` with a message meant for users, naming the text.
    """
    match = _DURATION.fullmatch(text)
    if match is None:
        raise ValueError(f"invalid duration '{text}': {_why_invalid(text)}")
    ms = int(match.group(1)) * UNIT_MS[match.group(2)]
    if ms > MAX_MS:
        raise ValueError(f"invalid duration '{text}': longer than the maximum of 1000y")
    return ms


def format_duration(ms: int) -> str:
    """``ms`` in the largest unit that divides it exactly: 5000 -> ``"5s"``, 0 -> ``"0ms"``."""
    if ms < 0:
        raise ValueError(f"a duration cannot be negative, got {ms}ms")
    for unit in sorted(UNIT_MS, key=UNIT_MS.__getitem__, reverse=True):
        if ms and ms % UNIT_MS[unit] == 0:
            return f"{ms // UNIT_MS[unit]}{unit}"
    return f"{ms}ms"


def _why_invalid(text: str) -> str:
    """The plain-words reason why ``text`` is not a duration."""
    parts = _NUMBER_UNIT.fullmatch(text.strip())
    if not text.strip():
        return f"it is empty; write a whole number and a unit ({_UNITS_TEXT}), e.g. 90d"
    if _COMPOUND.fullmatch(text.strip()):
        return _compound_hint(text.strip())
    if parts is None or not any(c.isdigit() for c in parts.group(2)):
        return f"write a whole number and a unit ({_UNITS_TEXT}), e.g. 90d"
    return _why_number_unit(*parts.groups())


def _why_number_unit(sign: str, number: str, unit: str) -> str:
    """The reason for text shaped like a signed number and a unit, e.g. ``-1.5 h``."""
    if sign == "-":
        return "a duration cannot be negative"
    if not unit:
        return f"missing unit; add one of {_UNITS_TEXT}, e.g. {number}s"
    if unit not in UNIT_MS:
        return f"unknown unit '{unit}'; use {_UNITS_TEXT}"
    if "." in number:
        return _whole_number_hint(number, unit)
    return f"write the number and the unit without spaces or signs, e.g. {number}{unit}"


def _compound_hint(text: str) -> str:
    """For ``1h30m``: one number and one unit, and the sum in the largest exact unit."""
    total = sum(int(number) * UNIT_MS[unit] for number, unit in _DURATION.findall(text))
    if total > MAX_MS:
        return "one number and one unit, and no longer than the maximum of 1000y"
    return f"write one number and one unit: {format_duration(total)}"


def _whole_number_hint(number: str, unit: str) -> str:
    """For ``1.5h``: say that numbers are whole, and offer ``90m`` when exact."""
    try:
        ms = Decimal(number) * UNIT_MS[unit]
    except InvalidOperation:
        ms = Decimal("0.5")
    if ms == ms.to_integral_value() and 0 < ms <= MAX_MS:
        return f"the number must be whole; write {format_duration(int(ms))}"
    return "the number must be whole; use a smaller unit"
