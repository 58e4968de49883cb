"""RFC 9162 Merkle trees: the shared vectors, the published RFC 6962 data, and properties."""

from __future__ import annotations

import importlib.util
import json
from functools import cache
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sign_vectors import VECTORS, vectors

from engine import sign
from engine.errors import VerificationError
from engine.sign import proof as arithmetic
from engine.sign.merkle import (
    EMPTY_ROOT,
    HashLengthError,
    IndexOutOfRange,
    MerkleLog,
    MerkleTree,
    ProofLengthError,
    RootMismatch,
    TreeSizeError,
    consistency_proof,
    inclusion_proof,
    leaf_hash,
    node_hash,
    root,
    root_of_hashes,
    verify_consistency,
    verify_inclusion,
)

RFC6962 = json.loads((VECTORS / "merkle" / "rfc6962-roots.json").read_text())
RFC_LEAVES = [bytes.fromhex(x) for x in RFC6962["leaves"]]


def h(x: str) -> bytes:
    return bytes.fromhex(x)


def outcome(run: Any) -> dict[str, Any]:
    try:
        run()
    except VerificationError as exc:
        assert isinstance(exc, getattr(sign, type(exc).__name__))
        return {"valid": False, "error": type(exc).__name__}
    return {"valid": True}


# --- the vectors -----------------------------------------------------------


@pytest.mark.parametrize("v", vectors("inclusion"))
def test_inclusion_vector(v):
    proof = [h(x) for x in v["proof"]]
    args = (h(v["leaf_hash"]), v["leaf_index"], v["tree_size"], proof, h(v["root"]))
    assert outcome(lambda: verify_inclusion(*args)) == v["want"]


@pytest.mark.parametrize("v", vectors("consistency"))
def test_consistency_vector(v):
    proof = [h(x) for x in v["proof"]]
    args = (v["size1"], v["size2"], h(v["root1"]), h(v["root2"]), proof)
    assert outcome(lambda: verify_consistency(*args)) == v["want"]


def test_every_named_vector_exists():
    names = {p.stem for p in VECTORS.glob("*/*.json")}
    inclusion = {"happy-path", "wrong-index", "swapped-siblings", "truncated-proof"}
    inclusion |= {"extra-node", "wrong-root", "wrong-size"}
    consistency = {"happy-path", "truncated", "swapped-roots", "wrong-size", "size-zero"}
    consistency |= {"equal-sizes"}
    assert inclusion <= {p.stem for p in (VECTORS / "inclusion").glob("*.json")}
    assert consistency <= {p.stem for p in (VECTORS / "consistency").glob("*.json")}
    assert "rfc6962-roots" in names


def test_vectors_are_what_the_script_generates():
    spec = importlib.util.spec_from_file_location("generate", VECTORS / "generate.py")
    assert spec and spec.loader
    generate = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(generate)
    assert generate.stale(generate.render()) == [], "run python tests/vectors/generate.py"


# --- the published RFC 6962 test tree --------------------------------------


def test_roots_of_the_published_tree():
    for entry in RFC6962["roots"]:
        assert root(RFC_LEAVES[: entry["size"]]).hex() == entry["root"]
    assert root([]) == EMPTY_ROOT == h(RFC6962["empty_root"])


def test_published_inclusion_proofs_are_ours_and_verify():
    tree = MerkleTree.from_leaves(RFC_LEAVES)
    for p in RFC6962["inclusion_proofs"]:
        index, size = p["leaf_index"], p["tree_size"]
        got = tree.inclusion_proof(index, size)
        assert [x.hex() for x in got] == p["proof"]
        verify_inclusion(leaf_hash(RFC_LEAVES[index]), index, size, got, tree.root(size))


def test_published_consistency_proofs_are_ours_and_verify():
    tree = MerkleTree.from_leaves(RFC_LEAVES)
    for p in RFC6962["consistency_proofs"]:
        m, n = p["size1"], p["size2"]
        got = tree.consistency_proof(m, n)
        assert [x.hex() for x in got] == p["proof"]
        verify_consistency(m, n, tree.root(m), tree.root(n), got)


# --- hashing and roots -----------------------------------------------------


def mth(leaves: list[bytes]) -> bytes:
    """RFC 9162 §2.1.1 written as the RFC does, recursively: the reference for the fast code."""
    if not leaves:
        return EMPTY_ROOT
    if len(leaves) == 1:
        return leaf_hash(leaves[0])
    k = arithmetic.split_point(len(leaves))
    return node_hash(mth(leaves[:k]), mth(leaves[k:]))


def data(n: int) -> list[bytes]:
    return [i.to_bytes(4, "big") for i in range(n)]


@cache
def tree_of(n: int) -> MerkleTree:
    return MerkleTree.from_leaves(data(n))


def test_domain_separation_prefixes():
    assert leaf_hash(b"") == h("6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d")
    assert leaf_hash(b"\x01" + bytes(64)) != node_hash(bytes(32), bytes(32))


@pytest.mark.parametrize("n", range(70))
def test_fast_roots_equal_the_recursive_definition(n):
    leaves = data(n)
    want = mth(leaves)
    assert root(leaves) == want
    assert root_of_hashes([leaf_hash(d) for d in leaves]) == want
    assert tree_of(n).root() == want


def test_compact_log_root_equals_root_at_every_size():
    log, leaves = MerkleLog(), data(300)
    assert log.root() == EMPTY_ROOT
    for n, d in enumerate(leaves, start=1):
        assert log.append(d) == n - 1
        assert log.root() == tree_of(300).root(n), n
        assert len(log.hashes) == n.bit_count()


def test_compact_log_resumes_from_its_state():
    log = MerkleLog()
    for d in data(11):
        log.append(d)
    resumed = MerkleLog.from_state(log.size, list(log.hashes))
    resumed.append(b"next")
    log.append(b"next")
    assert resumed.root() == log.root() == root([*data(11), b"next"])
    with pytest.raises(ProofLengthError, match="got 2, want 3"):
        MerkleLog.from_state(11, log.hashes[:2])


def test_root_of_hashes_agrees_with_the_tree_on_many_leaves():
    hashes = [leaf_hash(i.to_bytes(4, "big")) for i in range(1 << 14)]
    assert root_of_hashes(hashes) == MerkleTree(hashes).root()


# --- the two views of the index arithmetic agree ---------------------------


@pytest.mark.parametrize("size", range(1, 65))
def test_inclusion_sides_follow_from_the_ranges(size):
    for index in range(size):
        ranges = arithmetic.inclusion_ranges(index, size)
        sides = [arithmetic.Side.LEFT if r.end <= index else arithmetic.Side.RIGHT for r in ranges]
        assert list(arithmetic.inclusion_sides(index, size)) == sides


@pytest.mark.parametrize("size2", range(2, 65))
def test_consistency_plan_follows_from_the_ranges(size2):
    for size1 in range(1, size2):
        ranges = arithmetic.consistency_ranges(size1, size2)
        plan = arithmetic.consistency_plan(size1, size2)
        assert plan.proof_length == len(ranges)
        assert plan.seed_is_root1 == (size1 & (size1 - 1) == 0)
        rest = ranges if plan.seed_is_root1 else ranges[1:]
        left = [arithmetic.Side.LEFT if r.end <= size1 else arithmetic.Side.RIGHT for r in rest]
        assert list(plan.sides) == left


# --- properties ------------------------------------------------------------


def flip(b: bytes, at: int) -> bytes:
    return b[:at] + bytes([b[at] ^ 0x01]) + b[at + 1 :]


@st.composite
def leaf_in_tree(draw: st.DrawFn) -> tuple[int, int]:
    n = draw(st.integers(1, 200))
    return n, draw(st.integers(0, n - 1))


@settings(max_examples=300)
@given(leaf_in_tree(), st.data())
def test_every_inclusion_proof_verifies_and_any_byte_change_fails(case, draw):
    n, i = case
    tree = tree_of(n)
    lh, proof, r = tree.levels[0][i], tree.inclusion_proof(i), tree.root()
    verify_inclusion(lh, i, n, proof, r)
    at = draw.draw(st.integers(0, 31))
    with pytest.raises(RootMismatch):
        verify_inclusion(flip(lh, at), i, n, proof, r)
    with pytest.raises(RootMismatch):
        verify_inclusion(lh, i, n, proof, flip(r, at))
    if proof:
        k = draw.draw(st.integers(0, len(proof) - 1))
        bad = [*proof[:k], flip(proof[k], at), *proof[k + 1 :]]
        with pytest.raises(RootMismatch):
            verify_inclusion(lh, i, n, bad, r)


@settings(max_examples=300)
@given(st.integers(2, 200), st.data())
def test_every_consistency_proof_verifies_and_swapped_roots_fail(n, draw):
    m = draw.draw(st.integers(1, n - 1))
    tree = tree_of(n)
    r1, r2, proof = tree.root(m), tree.root(n), tree.consistency_proof(m, n)
    verify_consistency(m, n, r1, r2, proof)
    with pytest.raises(RootMismatch):
        verify_consistency(m, n, r2, r1, proof)
    k, at = draw.draw(st.integers(0, len(proof) - 1)), draw.draw(st.integers(0, 31))
    with pytest.raises(RootMismatch):
        verify_consistency(m, n, r1, r2, [*proof[:k], flip(proof[k], at), *proof[k + 1 :]])


@settings(max_examples=100)
@given(leaf_in_tree())
def test_wrong_proof_length_is_its_own_error(case):
    n, i = case
    tree = tree_of(n)
    proof = tree.inclusion_proof(i)
    with pytest.raises(ProofLengthError, match=f"got {len(proof) + 1}, want {len(proof)}"):
        verify_inclusion(tree.levels[0][i], i, n, [*proof, tree.root()], tree.root())


# --- errors say got and want ------------------------------------------------


def test_root_mismatch_carries_both_roots():
    tree = tree_of(5)
    with pytest.raises(RootMismatch) as info:
        verify_inclusion(tree.levels[0][1], 1, 5, tree.inclusion_proof(1), tree.root(4))
    assert info.value.want == tree.root(4)
    assert info.value.got == tree.root(5)
    assert str(info.value) == f"root mismatch: got {tree.root(5).hex()}, want {tree.root(4).hex()}"


def test_messages_say_got_and_want():
    with pytest.raises(IndexOutOfRange, match="got 5, want 0 <= index < 5"):
        verify_inclusion(bytes(32), 5, 5, [], bytes(32))
    with pytest.raises(HashLengthError, match="got 31, want 32"):
        verify_inclusion(bytes(31), 0, 1, [], bytes(32))
    with pytest.raises(TreeSizeError, match="got 6, want <= 5"):
        verify_consistency(6, 5, bytes(32), bytes(32), [])
    with pytest.raises(TreeSizeError):
        tree_of(5).consistency_proof(2, 6)
    with pytest.raises(IndexOutOfRange):
        tree_of(5).inclusion_proof(5)
    with pytest.raises(TreeSizeError, match="got 6, want <= 5"):
        tree_of(5).inclusion_proof(1, 6)
    with pytest.raises(TreeSizeError):
        tree_of(5).root(6)


def test_proof_helpers_accept_leaf_data_or_a_tree():
    leaves = data(9)
    assert inclusion_proof(leaves, 3) == inclusion_proof(tree_of(9), 3)
    assert consistency_proof(leaves, 4, 9) == tree_of(9).consistency_proof(4, 9)
    assert consistency_proof(leaves, 0, 9) == []
    assert consistency_proof(leaves, 9, 9) == []
