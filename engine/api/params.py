"""What a request to the read API may ask: its names, time range, interval and format, bounded.

Every check raises :class:`~engine.errors.InputError` with a message for the caller; the
API answers 400 with it (414 for a query string past :data:`MAX_QUERY`), and the refusal is
an ``access.decision`` entry like any other. The bounds are docs/access.md's.
"""

from __future__ import annotations

import argparse
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Literal

from engine.access.data import Range
from engine.commands.options import moment
from engine.durations import parse_duration
from engine.errors import InputError
from engine.sign.leaf import instant

MAX_RANGE = timedelta(days=366)
"""The longest time range one request may ask for."""
DEFAULT_RANGE = timedelta(days=1)
"""The range when ``start`` is not given: the day before ``end`` (as PI Web API's ``*-1d``)."""
MIN_INTERVAL = timedelta(seconds=1)
MAX_INTERVALS = 10_000
"""The most intervals one summary may have."""
MAX_QUERY = 2048
"""The longest query string, in bytes, the API reads."""
MAX_NAME = 200
"""The longest device or point name in a path."""
MAX_PATH = 2 * MAX_NAME + 64
"""The most characters of a request's path a decision entry holds (two names and an
endpoint's words fit)."""
MAX_QUOTED = 40
"""The most characters of a parameter's name or value a refusal's message quotes."""

Form = Literal["json", "csv"]


@dataclass(frozen=True)
class Window:
    """The time range of a request: ``[start, end)``."""

    start: datetime
    end: datetime

    @property
    def span(self) -> Range:
        return Range(instant(self.start), instant(self.end))


def window(start: str | None, end: str | None, now: datetime) -> Window:
    """The range ``start`` and ``end`` name (RFC 3339 instants or dates); ``end`` defaults
    to ``now``, ``start`` to :data:`DEFAULT_RANGE` before ``end``."""
    until = _moment("end", end) if end is not None else now
    since = _moment("start", start) if start is not None else until - DEFAULT_RANGE
    if until <= since:
        raise InputError(f"end ({instant(until)}) must be after start ({instant(since)})")
    if until - since > MAX_RANGE:
        raise InputError(
            f"the range from {instant(since)} to {instant(until)} is longer than"
            f" {MAX_RANGE.days} days: ask for it in parts"
        )
    return Window(since, until)


def _moment(name: str, text: str) -> datetime:
    try:
        return moment(text)
    except argparse.ArgumentTypeError as exc:
        raise InputError(f"{name}: {exc}") from None


def interval(text: str | None, span: Window) -> timedelta:
    """The summary's interval: a duration (``15m``, ``1h``, ``1d``); the whole range when
    not given."""
    if text is None:
        return span.end - span.start
    try:
        length = timedelta(milliseconds=parse_duration(text))
    except ValueError as exc:
        raise InputError(f"interval: {exc}") from None
    if length < MIN_INTERVAL:
        raise InputError(f"interval {text!r} is shorter than {MIN_INTERVAL.seconds} s")
    if (span.end - span.start) / length > MAX_INTERVALS:
        raise InputError(
            f"interval {text!r} cuts the range into more than {MAX_INTERVALS:,} intervals"
        )
    return length


def name(text: str, what: str) -> str:
    """A device or point name from a path: at most :data:`MAX_NAME` characters, printable."""
    if not text or len(text) > MAX_NAME:
        raise InputError(f"a {what} name has 1 to {MAX_NAME} characters")
    if not text.isprintable():
        raise InputError(f"the {what} name {text!r} holds a control character")
    return text


def form(asked: str | None, accept: str | None) -> Form:
    """CSV or JSON: ``?format=`` when given, else ``text/csv`` in the Accept header, else JSON."""
    if asked is not None:
        if asked not in ("json", "csv"):
            raise InputError(f"format {asked!r}: json or csv")
        return "csv" if asked == "csv" else "json"
    return "csv" if accept is not None and "text/csv" in accept else "json"


def only(given: Sequence[tuple[str, str]], known: Iterable[str]) -> dict[str, str]:
    """The query parameters ``given`` (name, value pairs) by name; parameters the endpoint
    does not take, and a parameter given twice, are refused (a misspelt ``start`` would
    otherwise quietly read the last day)."""
    names = [name for name, _ in given]
    unknown = sorted(set(names) - set(known))
    if unknown:
        raise InputError(
            f"unknown query parameter {quoted(unknown)}; this endpoint takes"
            f" {', '.join(sorted(known)) or 'none'}"
        )
    twice = sorted({name for name in names if names.count(name) > 1})
    if twice:
        raise InputError(f"query parameter {quoted(twice)} given more than once")
    return dict(given)


def quoted(names: Iterable[str]) -> str:
    """Names as the caller sent them, each quoted (``!r``: a control character in one shows
    as its escape) and cut to :data:`MAX_QUOTED` characters, for a refusal's message."""
    return ", ".join(repr(clipped(name, MAX_QUOTED)) for name in names)


def clipped(text: str, most: int = MAX_NAME) -> str:
    """``text`` as sent, cut to ``most`` characters (and ``…``) when it is longer: what a
    decision entry may hold of a name it refuses (the HTTP layer lets 16 KiB through)."""
    return text if len(text) <= most else text[:most] + "…"
