"""The fast leaf writer is byte-identical to the general path, and both to rfc8785.

``leaf_bytes`` writes common records from a fixed template and hands anything
unusual to ``canonical_json(leaf_object(...))``. These properties generate
records with every optional member combination and awkward values, and check
that both paths give the same bytes, or fail with the same exception type.
"""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta, timezone
from typing import Any
from zoneinfo import ZoneInfo

import pytest
import rfc8785
from hypothesis import given, settings
from hypothesis import strategies as st

from engine.canonical import CanonicalError, canonical_json
from engine.records import Gap, GapReason, Quality, Reading, Record
from engine.sign import leaf
from engine.sign.leaf import LeafError, instant, leaf_bytes, leaf_object, record_leaf_hash
from engine.sign.merkle import leaf_hash

SAFE = 2**53 - 1
BERLIN = ZoneInfo("Europe/Berlin")
T0 = datetime(2026, 6, 1, 12, 0, 5, 12345, tzinfo=UTC)
HOUR = timedelta(hours=1)

AWKWARD = [
    '"',
    "\\",
    "\x00",
    "\x1f",
    "\x7f",
    "\b\f\n\r\t",
    "\u2028",
    "é",
    "µ",
    "\ufb01",
    "\U0001f600",
    "a\U00010000b",
    "\ud800",
    "",
    " ",
    "plc-1",
    "TT701_PV",
]
texts = st.sampled_from(AWKWARD) | st.text(max_size=12)
near_safe = st.integers(SAFE - 3, SAFE + 3) | st.integers(-SAFE - 3, -SAFE + 3)
integers = near_safe | st.integers(-1000, 1000) | st.integers()
special_floats = st.sampled_from(
    [
        0.0,
        -0.0,
        20.0,
        -20.0,
        21.35,
        0.1 + 0.2,
        1e15,
        1e16,
        1e21,
        1e22,
        1e-4,
        1e-5,
        1e-7,
        123456789012345680.0,
        5e-324,
        1.7976931348623157e308,
        9007199254740993.0,
        math.nan,
        math.inf,
        -math.inf,
    ]
)
floats = special_floats | st.floats() | st.floats(-1e6, 1e6).map(round)
values = st.none() | st.booleans() | texts | integers | floats
raw_codes = st.none() | integers | texts | st.booleans()

fixed_offsets = st.integers(-23 * 60, 23 * 60).map(lambda m: timezone(timedelta(minutes=m)))
zones = st.none() | st.just(UTC) | fixed_offsets | st.timezones()
edge_times = st.sampled_from(
    [
        datetime(2026, 6, 1, 12, 0, 5, 0, tzinfo=UTC),
        datetime(2026, 6, 1, 12, 0, 5, 999999, tzinfo=UTC),
        datetime(2026, 6, 1, 23, 59, 59, 999999, tzinfo=timezone(timedelta(hours=-5))),
        datetime(2026, 10, 25, 2, 30, tzinfo=BERLIN),
        datetime(2026, 10, 25, 2, 30, tzinfo=BERLIN, fold=1),
        datetime(2026, 3, 29, 2, 30, tzinfo=BERLIN),  # does not exist: a spring-forward gap
        datetime(1, 1, 1, 0, 30, tzinfo=timezone(timedelta(hours=1))),  # before year 1 in UTC
        datetime(9999, 12, 31, 23, 30, tzinfo=timezone(timedelta(hours=-1))),  # past year 9999
        datetime(2026, 6, 1, 12),  # naive
    ]
)
times = edge_times | st.builds(
    lambda d, fold: d.replace(fold=fold), st.datetimes(timezones=zones), st.integers(0, 1)
)
salts = (
    st.binary(min_size=16, max_size=16)
    | st.binary(max_size=20)
    | st.binary(min_size=16, max_size=16).map(bytearray)
)

readings = st.builds(
    Reading,
    device=texts,
    point=texts,
    collected_at=times,
    value=values,
    quality=st.sampled_from(Quality),
    source_at=st.none() | times,
    server_at=st.none() | times,
    raw_code=raw_codes,
    scheduled_at=st.none() | times,
    coalesced=st.integers(-2, 5) | near_safe,
    held=st.booleans() | st.sampled_from([0, 1, None, "true"]),
)
gaps = st.builds(
    Gap,
    device=texts,
    point=texts,
    scheduled_at=times,
    reason=st.sampled_from(GapReason),
    detail=texts,
    raw_code=raw_codes,
    last_scheduled_at=st.none() | times | st.just("2026-06-01T12:00:05Z"),
    slots=st.integers(-1, 4) | near_safe | st.booleans(),
)


def general(record: Record, salt: bytes) -> bytes:
    return canonical_json(leaf_object(record, salt))


def outcome(write: Any, record: Record, salt: bytes) -> tuple[str, Any]:
    try:
        return "ok", write(record, salt)
    except Exception as exc:
        return "error", type(exc)


@settings(max_examples=1500)
@given(readings | gaps, salts)
def test_fast_path_is_byte_identical_to_the_general_path(record: Record, salt: bytes):
    want = outcome(general, record, salt)
    assert outcome(leaf_bytes, record, salt) == want
    if want[0] == "ok":
        assert want[1] == rfc8785.dumps(leaf_object(record, salt))
        assert record_leaf_hash(record, salt) == leaf_hash(want[1])


ordinary_names = st.text("abcdefghijklmnopqrstuvwxyz0123456789-_./", min_size=1, max_size=16)
ordinary_times = st.datetimes(
    min_value=datetime(2000, 1, 1), max_value=datetime(2100, 1, 1), timezones=st.just(UTC)
)
ordinary_readings = st.builds(
    Reading,
    device=ordinary_names,
    point=ordinary_names,
    collected_at=ordinary_times,
    value=st.none() | st.booleans() | st.integers(-SAFE, SAFE) | st.floats(-1e15, 1e15),
    quality=st.sampled_from(Quality),
    source_at=st.none() | ordinary_times,
    server_at=st.none() | ordinary_times,
    raw_code=st.none() | st.integers(0, 2**32) | ordinary_names,
    scheduled_at=st.none() | ordinary_times,
    coalesced=st.integers(0, 1000),
    held=st.booleans(),
)
ordinary_gaps = st.builds(
    Gap,
    device=ordinary_names,
    point=ordinary_names,
    scheduled_at=ordinary_times,
    reason=st.sampled_from(GapReason),
    detail=st.text(max_size=30),
    raw_code=st.none() | st.integers(0, 255) | ordinary_names,
)


@st.composite
def ordinary_runs(draw: st.DrawFn) -> Gap:
    """A gap record of a run of slots: its last slot later than its first, a count above 1."""
    first = draw(ordinary_times)
    return Gap(
        draw(ordinary_names),
        draw(ordinary_names),
        first,
        draw(st.sampled_from(GapReason)),
        draw(st.text(max_size=30)),
        draw(st.none() | st.integers(0, 255)),
        first + draw(st.timedeltas(timedelta(microseconds=1), timedelta(days=30))),
        draw(st.integers(2, SAFE)),
    )


@settings(max_examples=500)
@given(ordinary_readings | ordinary_gaps | ordinary_runs(), st.binary(min_size=16, max_size=16))
def test_ordinary_records_take_the_fast_path(record: Record, salt: bytes):
    """Guards against a fast path that silently always falls back."""
    value = getattr(record, "value", None)
    if isinstance(value, float) and "e" in repr(value):
        return  # exponent forms are left to the general path on purpose
    assert leaf._fast_leaf(record, salt) == general(record, salt)


@pytest.mark.parametrize(
    "record, salt, error",
    [
        (Reading("d", "p", T0, 1.0), bytes(15), LeafError),
        (Reading("d", "p", T0, 1.0), bytes(17), LeafError),
        (Reading("d", "p", datetime(2026, 6, 1), 1.0), bytes(16), LeafError),
        (Reading("d", "p", T0, 1.0, scheduled_at=datetime(2026, 6, 1)), bytes(16), LeafError),
        (Gap("d", "p", datetime(2026, 6, 1), GapReason.TIMEOUT), bytes(16), LeafError),
        (Reading("d", "p", T0, math.nan), bytes(16), LeafError),
        (Reading("d", "p", T0, -math.inf), bytes(16), LeafError),
        (Reading("d", "p", T0, 2**53), bytes(16), CanonicalError),
        (Reading("d", "p", T0, -(2**53)), bytes(16), CanonicalError),
        (Reading("d", "p", T0, 1, raw_code=2**60), bytes(16), CanonicalError),
        (Reading("d", "p", T0, 1, coalesced=2**53), bytes(16), CanonicalError),
        (Gap("d", "p", T0, GapReason.EXCEPTION, raw_code=-(2**53)), bytes(16), CanonicalError),
        (Reading("d", "p", T0, math.nan), bytes(3), LeafError),  # the salt is checked first
        (Reading("d", "p", T0, 1, held=1), bytes(16), LeafError),  # type: ignore[arg-type]
        (Gap("d", "p", T0, GapReason.SHUTDOWN, slots=3), bytes(16), LeafError),  # no last slot
        (Gap("d", "p", T0, GapReason.SHUTDOWN, last_scheduled_at=T0), bytes(16), LeafError),
        (Gap("d", "p", T0, GapReason.SHUTDOWN, "", None, T0, 2), bytes(16), LeafError),  # not later
        (Gap("d", "p", T0, GapReason.SHUTDOWN, "", None, T0 + HOUR, 1), bytes(16), LeafError),
        (Gap("d", "p", T0, GapReason.SHUTDOWN, "", None, T0 + HOUR, 0), bytes(16), LeafError),
        (Gap("d", "p", T0, GapReason.SHUTDOWN, "", None, T0 + HOUR, True), bytes(16), LeafError),
        (Gap("d", "p", T0, GapReason.SHUTDOWN, slots=True), bytes(16), LeafError),
        (
            Gap("d", "p", T0, GapReason.SHUTDOWN, "", None, datetime(2026, 6, 2), 2),
            bytes(16),
            LeafError,
        ),  # a naive last slot
        (
            Gap("d", "p", T0, GapReason.SHUTDOWN, "", None, T0 + HOUR, 2**53),
            bytes(16),
            CanonicalError,
        ),
    ],
)
def test_refusals_match_the_general_path(record: Record, salt: bytes, error: type[Exception]):
    with pytest.raises(error):
        general(record, salt)
    with pytest.raises(error):
        leaf_bytes(record, salt)


@pytest.mark.parametrize(
    "value, text",
    [
        (20.0, "20"),
        (-0.0, "0"),
        (0.0, "0"),
        (1e21, "1e+21"),
        (1e-7, "1e-7"),
        (1e16, "10000000000000000"),
        (21.35, "21.35"),
        (-1.5, "-1.5"),
        (SAFE, str(SAFE)),
        (True, "true"),
        (None, "null"),
        ('a"b', '"a\\"b"'),
    ],
)
def test_numbers_and_strings_in_jcs_form(value: object, text: str):
    record = Reading("d", "p", T0, value)  # type: ignore[arg-type]
    data = leaf_bytes(record, bytes(16))
    assert data.endswith(b'"value":' + text.encode() + b"}")
    assert data == rfc8785.dumps(leaf_object(record, bytes(16)))


def test_equal_instants_in_other_zones_share_the_cached_text():
    leaf._INSTANTS.clear()
    berlin = datetime(2026, 6, 1, 14, 0, 5, 12345, tzinfo=BERLIN)
    offset = T0.astimezone(timezone(timedelta(hours=-3, minutes=-30)))
    assert berlin == T0 == offset
    texts = {leaf._utc(moment) for moment in (berlin, T0, offset)}
    assert texts == {instant(T0)} == {"2026-06-01T12:00:05.012345Z"}
    assert len(leaf._INSTANTS) == 1


@pytest.mark.parametrize("first_fold", [0, 1])
def test_a_repeated_wall_time_is_not_served_from_the_cache(first_fold: int):
    """Same tzinfo, fold ignored by ``==``: 02:30 CEST and 02:30 CET compare equal."""
    leaf._INSTANTS.clear()
    first = datetime(2026, 10, 25, 2, 30, tzinfo=BERLIN, fold=first_fold)
    second = first.replace(fold=1 - first_fold)
    assert first == second
    assert hash(first) == hash(second)
    assert instant(first) != instant(second)
    for moment in (first, second, first, second):
        r = Reading("d", "p", moment, 1.0, scheduled_at=moment)
        assert leaf_bytes(r, bytes(16)) == general(r, bytes(16))
        assert leaf._utc(moment) == instant(moment)


def test_a_point_whose_quality_changes_is_written_with_its_new_quality():
    salt = bytes(16)
    for quality in [Quality.GOOD, Quality.BAD, Quality.BAD, Quality.GOOD, Quality.STALE]:
        r = Reading("d", "p", T0, 1.5, quality, scheduled_at=T0)
        assert leaf_bytes(r, salt) == general(r, salt)
        assert f'"quality":"{quality.value}"'.encode() in leaf_bytes(r, salt)


def test_the_caches_are_bounded():
    leaf._INSTANTS.clear()
    start = datetime(2026, 6, 1, tzinfo=UTC)
    for i in range(leaf.CACHE_SIZE + 10):
        moment = start + timedelta(microseconds=i)
        r = Reading("d", f"p{i}", moment, 1.5, scheduled_at=moment)
        assert leaf_bytes(r, bytes(16)) == general(r, bytes(16))
    assert len(leaf._INSTANTS) <= leaf.CACHE_SIZE
    assert len(leaf._IDENTITIES) <= leaf.CACHE_SIZE


def test_a_name_that_only_equals_another_is_written_as_itself():
    """A str subclass that compares equal to another name must not take that name's text."""

    class Folded(str):
        def __eq__(self, other: object) -> bool:
            return isinstance(other, str) and self.lower() == other.lower()

        def __hash__(self) -> int:
            return hash(self.lower())

    for name in ["d3", Folded("D3")]:
        r = Reading(name, name, T0, 1.5, scheduled_at=T0)
        assert leaf_bytes(r, bytes(16)) == general(r, bytes(16))


def test_non_bmp_and_lone_surrogates_match_the_general_path():
    for name in ["\U0001f600", "x\ud800y", "\udfff"]:
        for record in (
            Reading(name, name, T0, name),
            Gap(name, "p", T0, GapReason.MALFORMED, name),
        ):
            assert outcome(leaf_bytes, record, bytes(16)) == outcome(general, record, bytes(16))
