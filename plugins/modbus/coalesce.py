"""Cover occupied addresses with the fewest read requests.

The problem: the values of one table (on one unit, read on one schedule)
occupy *extents*, closed ranges of addresses, each at most ``max_count``
wide. Cover them with requests, each one contiguous range of at most
``max_count`` addresses, such that no value is split between two requests
and no run of unmapped addresses inside a request is longer than ``max_gap``.
Use as few requests as possible.

The greedy: walk the extents by first address; add each to the open request
if the request, stretched to the extent's end, is still valid; otherwise open
a new request at the extent's first address.

Why the greedy is optimal. Values that share addresses (bits of one status
word) count as one extent, so number the now disjoint extents ``1..n`` in
address order, extent ``k`` being ``s_k..e_k``. Call the run ``i..j``
*valid* when ``e_j - s_i + 1 <= max_count`` and every gap
``s_(k+1) - e_k - 1`` with ``i <= k < j`` is at most ``max_gap``. A sub-run
of a valid run is valid: its width and its set of gaps only shrink.

1. Every valid set of ``m`` requests yields a partition of ``1..n`` into at
   most ``m`` valid runs. The extents a request reads whole are consecutive
   in address order, and the run they form is valid: its width is at most the
   request's, and its gaps are unmapped runs inside the request. Order these
   runs by first extent and cut from each what an earlier one already covers:
   what is left are disjoint sub-runs, valid, still covering ``1..n``.
2. The greedy stays ahead. Once extent ``j`` does not fit the open request,
   no later one does (the width only grows, and the gap before ``j`` stays
   inside), so each greedy run is the longest valid run from where it starts.
   Let greedy run ``k`` end at ``g_k`` and run ``k`` of any valid partition
   end at ``o_k``. If ``g_(k-1) >= o_(k-1)`` (vacuous for ``k = 1``), then
   ``g_(k-1)+1..o_k`` is a sub-run of the partition's run ``k``, hence valid,
   so ``g_k >= o_k``. By induction the greedy covers all ``n`` extents in no
   more runs than any valid partition, hence (by 1.) than any valid cover.

With extents that overlap without coinciding (which the planner reports as
``modbus-overlap``) the greedy still returns valid requests, only not
necessarily the fewest.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Protocol, TypeVar


class Extent(Protocol):
    """Anything that occupies addresses ``start..end`` (inclusive)."""

    @property
    def start(self) -> int: ...

    @property
    def end(self) -> int: ...


E = TypeVar("E", bound=Extent)


def coalesce(extents: Iterable[E], max_count: int, max_gap: int) -> list[list[E]]:
    """The extents grouped into the fewest valid requests, each in address order.

    Precondition: every extent is at most ``max_count`` wide (the planner
    reports wider values instead). The sort is stable, so extents with the
    same first address keep the order they came in.
    """
    runs: list[list[E]] = []
    end = 0
    for extent in sorted(extents, key=lambda e: e.start):
        if runs and _fits(runs[-1][0].start, end, extent, max_count, max_gap):
            runs[-1].append(extent)
            end = max(end, extent.end)
        else:
            runs.append([extent])
            end = extent.end
    return runs


def _fits(start: int, end: int, extent: Extent, max_count: int, max_gap: int) -> bool:
    """Whether the request ``start..end`` can take ``extent`` too."""
    return max(end, extent.end) - start + 1 <= max_count and extent.start - end - 1 <= max_gap
