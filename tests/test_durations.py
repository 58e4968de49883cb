"""Durations: whole numbers and a unit, to and from milliseconds."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from engine.durations import MAX_MS, UNIT_MS, format_duration, parse_duration


@pytest.mark.parametrize(
    ("text", "ms"),
    [
        ("500ms", 500),
        ("0s", 0),
        ("5s", 5_000),
        ("2m", 120_000),
        ("1h", 3_600_000),
        ("90d", 90 * 86_400_000),
        ("1w", 604_800_000),
        ("7y", 220_752_000_000),
        ("10y", 315_360_000_000),
        ("1000y", MAX_MS),
    ],
)
def test_parse(text, ms):
    assert parse_duration(text) == ms


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("1.5h", "the number must be whole; write 90m"),
        ("1h30m", "write one number and one unit: 90m"),
        ("1d12h", "write one number and one unit: 36h"),
        ("2w0d", "write one number and one unit: 2w"),
        ("1m500ms", "write one number and one unit: 60500ms"),
        ("999y2y", "no longer than the maximum of 1000y"),
        ("0.3ms", "the number must be whole; use a smaller unit"),
        ("5", "missing unit; add one of ms, s, m, h, d, w or y, e.g. 5s"),
        ("5x", "unknown unit 'x'"),
        ("5M", "unknown unit 'M'"),
        ("-5s", "cannot be negative"),
        ("5 s", "without spaces"),
        ("", "it is empty"),
        ("fast", "write a whole number and a unit"),
        ("1001y", "longer than the maximum of 1000y"),
    ],
)
def test_parse_refuses_with_a_reason(text, fragment):
    with pytest.raises(ValueError, match="invalid duration") as caught:
        parse_duration(text)
    assert f"'{text}'" in str(caught.value)
    assert fragment in str(caught.value)


@pytest.mark.parametrize(
    ("ms", "text"),
    [
        (0, "0ms"),
        (1, "1ms"),
        (1500, "1500ms"),
        (5000, "5s"),
        (90_000, "90s"),
        (5_400_000, "90m"),
        (86_400_000, "1d"),
        (14 * 86_400_000, "2w"),
        (220_752_000_000, "7y"),
    ],
)
def test_format_uses_the_largest_exact_unit(ms, text):
    assert format_duration(ms) == text


def test_format_refuses_negative():
    with pytest.raises(ValueError, match="negative"):
        format_duration(-1)


@given(st.integers(min_value=0, max_value=MAX_MS))
def test_format_then_parse_round_trips(ms):
    assert parse_duration(format_duration(ms)) == ms


@given(st.integers(min_value=0, max_value=1000), st.sampled_from(sorted(UNIT_MS)))
def test_any_written_duration_survives_formatting(number, unit):
    ms = parse_duration(f"{number}{unit}")
    assert parse_duration(format_duration(ms)) == ms


@given(st.text(max_size=12))
def test_parse_never_fails_other_than_value_error(text):
    try:
        parse_duration(text)
    except ValueError as exc:
        assert str(exc).startswith("invalid duration")
