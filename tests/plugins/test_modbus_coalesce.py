"""The greedy coalescing against brute force on small random register maps."""

from __future__ import annotations

from dataclasses import dataclass
from itertools import pairwise

from hypothesis import given
from hypothesis import strategies as st

from plugins.modbus.coalesce import coalesce


@dataclass(frozen=True)
class Value:
    start: int
    end: int


@st.composite
def register_maps(draw: st.DrawFn) -> tuple[list[Value], int, int]:
    """Disjoint values, some bools sharing a register, with a request limit and a gap."""
    max_count = draw(st.integers(1, 8))
    max_gap = draw(st.integers(0, 3))
    values: list[Value] = []
    address = draw(st.integers(0, 3))
    for _ in range(draw(st.integers(1, 7))):
        if values and values[-1].start == values[-1].end and draw(st.booleans()):
            values.append(values[-1])  # another bit of the same register
            continue
        width = draw(st.integers(1, max_count))
        values.append(Value(address, address + width - 1))
        address += width + draw(st.integers(0, 4))
    return draw(st.permutations(values)), max_count, max_gap


def valid(request: tuple[int, int], values: list[Value], max_count: int, max_gap: int) -> bool:
    """Whether one request is allowed: width, and no hole longer than ``max_gap``."""
    low, high = request
    mapped = {a for v in values for a in range(v.start, v.end + 1)}
    hole = 0
    for address in range(low, high + 1):
        hole = 0 if address in mapped else hole + 1
        if hole > max_gap:
            return False
    return high - low + 1 <= max_count


def fewest_requests(values: list[Value], max_count: int, max_gap: int) -> int:
    """Brute force: the smallest set of valid requests that reads every value whole.

    Every request from any start to any end within the map is a candidate;
    a DP over subsets of values finds the fewest that cover them all.
    """
    distinct = sorted(set(values), key=lambda v: v.start)
    first, last = distinct[0].start, distinct[-1].end
    covers = set()
    for low in range(first, last + 1):
        for high in range(low, min(last, low + max_count - 1) + 1):
            if valid((low, high), distinct, max_count, max_gap):
                inside = [low <= v.start and v.end <= high for v in distinct]
                covers.add(sum(1 << i for i, yes in enumerate(inside) if yes))
    everything = (1 << len(distinct)) - 1
    best = {0: 0}
    for mask in range(everything + 1):
        if mask in best:
            for cover in covers:
                merged = mask | cover
                best[merged] = min(best.get(merged, len(distinct) + 1), best[mask] + 1)
    return best[everything]


@given(register_maps())
def test_greedy_uses_as_few_requests_as_brute_force(case: tuple[list[Value], int, int]):
    values, max_count, max_gap = case
    assert len(coalesce(values, max_count, max_gap)) == fewest_requests(values, max_count, max_gap)


@given(register_maps())
def test_every_request_is_valid_and_reads_each_value_once(case: tuple[list[Value], int, int]):
    values, max_count, max_gap = case
    runs = coalesce(values, max_count, max_gap)
    assert sorted((v.start, v.end) for run in runs for v in run) == sorted(
        (v.start, v.end) for v in values
    )
    for run in runs:
        request = (run[0].start, max(v.end for v in run))
        assert valid(request, run, max_count, max_gap)
        assert [v.start for v in run] == sorted(v.start for v in run)
    for before, after in pairwise(runs):
        assert max(v.end for v in before) < after[0].start
