"""Which nodes form a proof: the index arithmetic of RFC 9162 §2.1, with no hashing.

Two views of the same trees, each derived independently from the RFC, so a
test can hold one against the other:

* the *prover's* view (§2.1.3.1 ``PATH``, §2.1.4.1 ``SUBPROOF``): the leaf
  ranges ``[start, end)`` whose subtree hashes make up a proof, in proof order;
* the *verifier's* view (§2.1.3.2, §2.1.4.2): for each proof hash, whether it
  is a left sibling (hashed in front of the running value) or a right sibling
  (hashed after it), found by walking the bits of the index and the size.

A tree of size ``n`` over leaves ``D[0:n]`` is the RFC 9162 Merkle Tree Hash
``MTH``: the left subtree of any node covers the largest power of two strictly
smaller than the node's leaf count.
"""

from __future__ import annotations

from enum import Enum
from typing import NamedTuple


class Range(NamedTuple):
    """The leaves ``D[start:end]`` whose ``MTH`` is one proof hash."""

    start: int
    end: int


class Side(Enum):
    """Where a proof hash goes relative to the running hash."""

    LEFT = "left"  # HASH(0x01 || proof hash || running hash)
    RIGHT = "right"  # HASH(0x01 || running hash || proof hash)


class ConsistencyPlan(NamedTuple):
    """How a verifier consumes a consistency proof from size1 to size2.

    ``seed_is_root1``: size1 is a power of two, so the first subtree hash is
    the old root itself and is not sent in the proof (RFC 9162 §2.1.4.2 step 2).
    ``sides``: one entry per proof hash after the seed; LEFT hashes are part of
    both trees, RIGHT hashes only of the newer one.
    """

    seed_is_root1: bool
    sides: tuple[Side, ...]

    @property
    def proof_length(self) -> int:
        return len(self.sides) + (0 if self.seed_is_root1 else 1)


def split_point(n: int) -> int:
    """The largest power of two strictly smaller than ``n``. Requires ``n >= 2``."""
    return 1 << ((n - 1).bit_length() - 1)


def is_power_of_two(n: int) -> bool:
    return n > 0 and n & (n - 1) == 0


def inclusion_ranges(index: int, size: int) -> list[Range]:
    """The ranges of RFC 9162 ``PATH(index, D[0:size])``, lowest level first.

    Requires ``0 <= index < size``.
    """
    out: list[Range] = []
    lo, hi = 0, size
    while hi - lo > 1:
        mid = lo + split_point(hi - lo)
        if index < mid:
            out.append(Range(mid, hi))
            hi = mid
        else:
            out.append(Range(lo, mid))
            lo = mid
    out.reverse()
    return out


def consistency_ranges(size1: int, size2: int) -> list[Range]:
    """The ranges of RFC 9162 ``PROOF(size1, D[0:size2])``, lowest level first.

    Requires ``0 < size1 <= size2``; the proof for ``size1 == size2`` is empty.
    """
    out: list[Range] = []
    lo, hi, whole = 0, size2, True
    while size1 != hi:
        mid = lo + split_point(hi - lo)
        if size1 <= mid:
            out.append(Range(mid, hi))
            hi = mid
        else:
            out.append(Range(lo, mid))
            lo, whole = mid, False
    if not whole:
        out.append(Range(lo, hi))
    out.reverse()
    return out


def _walk(fn: int, sn: int) -> list[Side]:
    """The sides met walking from node ``fn`` up to the root of a level whose last node is ``sn``.

    This is the loop of RFC 9162 §2.1.3.2 step 4 and §2.1.4.2 step 6 without
    the hashing: it ends when ``sn`` reaches 0, so its length is the proof length.
    """
    sides: list[Side] = []
    while sn > 0:
        if fn & 1 or fn == sn:
            sides.append(Side.LEFT)
            while not fn & 1 and fn != 0:
                fn, sn = fn >> 1, sn >> 1
        else:
            sides.append(Side.RIGHT)
        fn, sn = fn >> 1, sn >> 1
    return sides


def inclusion_sides(index: int, size: int) -> tuple[Side, ...]:
    """One side per hash of the inclusion proof of leaf ``index`` in a tree of ``size``.

    Requires ``0 <= index < size``. The proof length is ``len(result)``.
    """
    return tuple(_walk(index, size - 1))


def consistency_plan(size1: int, size2: int) -> ConsistencyPlan:
    """How to verify a consistency proof between trees of ``size1`` and ``size2`` leaves.

    Requires ``0 < size1 < size2`` (equal or empty sizes need no proof).
    """
    fn, sn = size1 - 1, size2 - 1
    while fn & 1:
        fn, sn = fn >> 1, sn >> 1
    return ConsistencyPlan(is_power_of_two(size1), tuple(_walk(fn, sn)))
