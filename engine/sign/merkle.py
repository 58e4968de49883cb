"""RFC 9162 Merkle trees: hashing, roots, proofs and their verification.

Hashing (RFC 9162 §2.1.1), with SHA-256::

    leaf_hash(d)    = SHA-256(0x00 || d)
    node_hash(l, r) = SHA-256(0x01 || l || r)
    MTH({})         = SHA-256()              (the empty string)
    MTH(D[0:n])     = node_hash(MTH(D[0:k]), MTH(D[k:n]))   k = largest power of 2 < n

Which nodes form a proof is decided in :mod:`engine.sign.proof`; this module
only hashes and compares. Every failure is its own exception::

    VerificationError          evidence that does not verify (base; a ConvergeError)
    ├── RootMismatch           recomputed root differs from the claimed one (carries both)
    ├── ProofLengthError       the proof has the wrong number of hashes
    ├── HashLengthError        a hash is not 32 bytes
    ├── IndexOutOfRange        a leaf index at or beyond the tree size
    ├── TreeSizeError          a consistency proof from a larger to a smaller tree
    └── NoteError, CheckpointError  (see engine.sign.note)
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence

from engine.errors import VerificationError
from engine.sign.proof import (
    Side,
    consistency_plan,
    consistency_ranges,
    inclusion_ranges,
    inclusion_sides,
)

HASH_SIZE = 32
LEAF_PREFIX = b"\x00"
NODE_PREFIX = b"\x01"
EMPTY_ROOT = hashlib.sha256(b"").digest()

_sha256 = hashlib.sha256
_LEAF = _sha256(LEAF_PREFIX)
_NODE = _sha256(NODE_PREFIX)
"""SHA-256 having hashed a leaf's, a node's prefix: a copy of one, given the rest, hashes a
leaf or a node a third faster than a new hash of the prefix joined to it."""


class RootMismatch(VerificationError):
    """The root recomputed from a proof is not the root that was claimed."""

    def __init__(self, got: bytes, want: bytes, what: str = "root") -> None:
        self.got, self.want, self.what = got, want, what
        super().__init__(f"{what} mismatch: got {got.hex()}, want {want.hex()}")


class _GotWant(VerificationError):
    """A count that is not what the arithmetic says it must be."""

    what = "value"

    def __init__(self, got: int, want: int) -> None:
        self.got, self.want = got, want
        super().__init__(self.describe(got, want))

    def describe(self, got: int, want: int) -> str:
        return f"{self.what}: got {got}, want {want}"


class ProofLengthError(_GotWant):
    """The proof holds more or fewer hashes than its index and sizes call for."""

    what = "proof length"


class HashLengthError(_GotWant):
    """A leaf hash, root or proof hash that is not a SHA-256 digest."""

    what = "hash length in bytes"


class IndexOutOfRange(_GotWant):
    """A leaf index that is not below the tree size; ``want`` is the size."""

    what = "leaf index"

    def describe(self, got: int, want: int) -> str:
        return f"leaf index: got {got}, want 0 <= index < {want}"


class TreeSizeError(_GotWant):
    """A consistency proof asked from a larger tree (``got``) to a smaller one (``want``).

    Also raised when a proof is asked for beyond the leaves a tree holds.
    """

    def describe(self, got: int, want: int) -> str:
        return f"tree size: got {got}, want <= {want}"


# --- hashing ---------------------------------------------------------------


def leaf_hash(data: bytes) -> bytes:
    """``SHA-256(0x00 || data)``: the hash of one leaf."""
    hashed = _LEAF.copy()
    hashed.update(data)
    return hashed.digest()


def leaf_hashes(leaves: Iterable[bytes]) -> list[bytes]:
    """The hash of each leaf, in order (:func:`leaf_hash`, a loop the fastest)."""
    hashes: list[bytes] = []
    keep, start = hashes.append, _LEAF.copy
    for leaf in leaves:
        hashed = start()
        hashed.update(leaf)
        keep(hashed.digest())
    return hashes


def node_hash(left: bytes, right: bytes) -> bytes:
    """``SHA-256(0x01 || left || right)``: the hash of an interior node."""
    hashed = _NODE.copy()
    hashed.update(left + right)
    return hashed.digest()


def root_of_hashes(leaf_hashes: Sequence[bytes]) -> bytes:
    """``MTH`` of a tree given its leaf hashes: pairs level by level, an odd last node rises.

    Promoting the odd node unchanged (never duplicating it) gives exactly the
    RFC 9162 tree, whose left subtrees are perfect. O(n) hashing, no node objects.
    """
    level = list(leaf_hashes)
    if not level:
        return EMPTY_ROOT
    while len(level) > 1:
        nxt = _pair_up(level)
        if len(level) & 1:
            nxt.append(level[-1])
        level = nxt
    return level[0]


def _pair_up(level: list[bytes]) -> list[bytes]:
    """Hashes of nodes (0, 1), (2, 3), ... of a level; an odd last node is left out."""
    pairs = iter(level)
    hashes: list[bytes] = []
    keep, start = hashes.append, _NODE.copy
    for left, right in zip(pairs, pairs, strict=False):
        hashed = start()
        hashed.update(left + right)
        keep(hashed.digest())
    return hashes


def _largest_subtree_level(start: int, end: int) -> int:
    """Level of the largest perfect subtree that starts at leaf ``start`` and ends by ``end``."""
    level = (end - start).bit_length() - 1
    if start:
        level = min(level, (start & -start).bit_length() - 1)
    return level


def root(leaves: Iterable[bytes]) -> bytes:
    """``MTH`` of the leaves (their data, not yet hashed); each leaf is hashed once."""
    return root_of_hashes(leaf_hashes(leaves))


# --- trees that answer proofs ----------------------------------------------


class MerkleTree:
    """All perfect subtree hashes of a tree, so any proof up to its size is a lookup.

    ``levels[k][i]`` is the hash of leaves ``[i * 2**k, (i + 1) * 2**k)``; only
    complete subtrees are kept, so the hashes stay valid for every prefix size.
    Memory is about twice the leaf hashes.
    """

    def __init__(self, leaf_hashes: Iterable[bytes]) -> None:
        self.levels: list[list[bytes]] = [list(leaf_hashes)]
        while len(self.levels[-1]) > 1:
            self.levels.append(_pair_up(self.levels[-1]))

    @classmethod
    def from_leaves(cls, leaves: Iterable[bytes]) -> MerkleTree:
        return cls(leaf_hash(d) for d in leaves)

    @property
    def size(self) -> int:
        return len(self.levels[0])

    def range_hash(self, start: int, end: int) -> bytes:
        """``MTH(D[start:end])``.

        Requires ``0 <= start < end <= size`` and ``start`` a multiple of the
        smallest power of two ``>= end - start`` (true of every proof range).
        """
        parts: list[bytes] = []
        while start < end:
            level = _largest_subtree_level(start, end)
            parts.append(self.levels[level][start >> level])
            start += 1 << level
        acc = parts.pop()
        while parts:
            acc = node_hash(parts.pop(), acc)
        return acc

    def root(self, size: int | None = None) -> bytes:
        """The root at ``size`` leaves (default: all). Requires ``0 <= size <= self.size``."""
        size = self.size if size is None else size
        _check_sizes(size, self.size)
        return self.range_hash(0, size) if size else EMPTY_ROOT

    def inclusion_proof(self, index: int, size: int | None = None) -> list[bytes]:
        """The RFC 9162 inclusion proof of leaf ``index`` in the tree of ``size`` leaves.

        Requires ``0 <= index < size <= self.size``: raises IndexOutOfRange or TreeSizeError.
        """
        size = self.size if size is None else size
        _check_sizes(size, self.size)
        _check_index(index, size)
        return [self.range_hash(*r) for r in inclusion_ranges(index, size)]

    def consistency_proof(self, size1: int, size2: int | None = None) -> list[bytes]:
        """The RFC 9162 consistency proof from ``size1`` to ``size2`` leaves.

        Requires ``0 <= size1 <= size2 <= self.size``. Empty when ``size1`` is 0 or ``size2``.
        """
        size2 = self.size if size2 is None else size2
        _check_sizes(size1, size2)
        _check_sizes(size2, self.size)
        if size1 == 0:
            return []
        return [self.range_hash(*r) for r in consistency_ranges(size1, size2)]


def inclusion_proof(tree: MerkleTree | Sequence[bytes], index: int) -> list[bytes]:
    """Inclusion proof of leaf ``index`` in ``tree`` (a MerkleTree or the leaves' data)."""
    tree = tree if isinstance(tree, MerkleTree) else MerkleTree.from_leaves(tree)
    return tree.inclusion_proof(index)


def consistency_proof(tree: MerkleTree | Sequence[bytes], size1: int, size2: int) -> list[bytes]:
    """Consistency proof from ``size1`` to ``size2`` leaves of ``tree`` (tree or leaf data)."""
    tree = tree if isinstance(tree, MerkleTree) else MerkleTree.from_leaves(tree)
    return tree.consistency_proof(size1, size2)


# --- the append-only log ---------------------------------------------------


class MerkleLog:
    """An append-only tree that keeps only the O(log n) hashes needed for its root.

    ``hashes`` are the roots of the perfect subtrees that make up the tree,
    largest (leftmost) first: one per set bit of ``size``, as in a compact range.
    """

    def __init__(self) -> None:
        self.size = 0
        self.hashes: list[bytes] = []

    @classmethod
    def from_state(cls, size: int, hashes: Sequence[bytes]) -> MerkleLog:
        """Resume a log from a saved (size, hashes). Requires one hash per set bit of ``size``."""
        if len(hashes) != size.bit_count():
            raise ProofLengthError(len(hashes), size.bit_count())
        log = cls()
        log.size, log.hashes = size, [_checked(h) for h in hashes]
        return log

    def append(self, data: bytes) -> int:
        """Append one leaf's data; returns its index."""
        return self.append_hash(leaf_hash(data))

    def append_hash(self, hashed: bytes) -> int:
        """Append one leaf hash; merges one subtree per trailing 1 bit of the old size."""
        index, size = self.size, self.size
        while size & 1:
            hashed = node_hash(self.hashes.pop(), hashed)
            size >>= 1
        self.hashes.append(hashed)
        self.size = index + 1
        return index

    def root(self) -> bytes:
        """``MTH`` of every leaf appended so far."""
        if not self.hashes:
            return EMPTY_ROOT
        acc = self.hashes[-1]
        for left in reversed(self.hashes[:-1]):
            acc = node_hash(left, acc)
        return acc


# --- verification ----------------------------------------------------------


def _checked(h: bytes) -> bytes:
    if len(h) != HASH_SIZE:
        raise HashLengthError(len(h), HASH_SIZE)
    return h


def _check_index(index: int, size: int) -> None:
    if not 0 <= index < size:
        raise IndexOutOfRange(index, size)


def _check_sizes(size1: int, size2: int) -> None:
    if not 0 <= size1 <= size2:
        raise TreeSizeError(size1, size2)


def _check_length(proof: Sequence[bytes], want: int) -> None:
    if len(proof) != want:
        raise ProofLengthError(len(proof), want)
    for h in proof:
        _checked(h)


def _chain(seed: bytes, proof: Sequence[bytes], sides: Sequence[Side]) -> bytes:
    """Fold proof hashes into ``seed``, each on its side. Requires equal lengths."""
    for h, side in zip(proof, sides, strict=True):
        seed = node_hash(h, seed) if side is Side.LEFT else node_hash(seed, h)
    return seed


def _chain_left(seed: bytes, proof: Sequence[bytes], sides: Sequence[Side]) -> bytes:
    """Like :func:`_chain` but keeps only LEFT hashes: the same path in the older tree."""
    for h, side in zip(proof, sides, strict=True):
        if side is Side.LEFT:
            seed = node_hash(h, seed)
    return seed


def _match(got: bytes, want: bytes, what: str = "root") -> None:
    if got != want:
        raise RootMismatch(got, want, what)


def root_from_inclusion(leaf: bytes, index: int, size: int, proof: Sequence[bytes]) -> bytes:
    """The root that ``proof`` implies for ``leaf`` (a leaf hash) at ``index`` of ``size``.

    Requires ``0 <= index < size`` and 32-byte hashes (RFC 9162 §2.1.3.2).
    """
    _check_index(index, size)
    sides = inclusion_sides(index, size)
    _check_length(proof, len(sides))
    return _chain(_checked(leaf), proof, sides)


def verify_inclusion(
    leaf: bytes, index: int, size: int, proof: Sequence[bytes], root: bytes
) -> None:
    """Return if ``proof`` puts leaf hash ``leaf`` at ``index`` under ``root``; else raise.

    Requires ``0 <= index < size``. Raises IndexOutOfRange, HashLengthError,
    ProofLengthError or RootMismatch (got = recomputed, want = ``root``).
    """
    _match(root_from_inclusion(leaf, index, size, proof), _checked(root))


def verify_consistency(
    size1: int, size2: int, root1: bytes, root2: bytes, proof: Sequence[bytes]
) -> None:
    """Return if the tree (``size2``, ``root2``) extends the tree (``size1``, ``root1``).

    Requires ``0 <= size1 <= size2`` (RFC 9162 §2.1.4.2). The empty tree
    (root ``SHA-256()``) is a prefix of every tree and needs an empty proof, as
    do equal sizes, whose roots must then be equal. Raises TreeSizeError,
    HashLengthError, ProofLengthError or RootMismatch ("root1 mismatch" when
    the proof does not rebuild the old root, "root2 mismatch" for the new one).
    """
    _check_sizes(size1, size2)
    root1, root2 = _checked(root1), _checked(root2)
    if size1 == 0:
        _check_length(proof, 0)
        _match(root1, EMPTY_ROOT, "root1")
        return
    if size1 == size2:
        _check_length(proof, 0)
        _match(root2, root1, "root2")
        return
    plan = consistency_plan(size1, size2)
    _check_length(proof, plan.proof_length)
    seed, rest = (root1, proof) if plan.seed_is_root1 else (proof[0], proof[1:])
    _match(_chain_left(seed, rest, plan.sides), root1, "root1")
    _match(_chain(seed, rest, plan.sides), root2, "root2")
