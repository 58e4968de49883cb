"""Checkpoints and the witness file: signed by a trusted key, one root per size, consistent.

Every stored checkpoint must be signed by a trusted key version valid when
it was made, sign the first ``size`` entries' root, agree with any other of
its size (else the log was forked) and be consistent with the one before it.
Every checkpoint of the witness file must be of the stored log: a store
that holds fewer entries, or others, was restored or rewritten.
"""

from __future__ import annotations

from collections.abc import Sequence
from itertools import pairwise
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, Row

from engine import audit
from engine.errors import VerificationError
from engine.sign import note
from engine.sign.merkle import MerkleTree, verify_consistency
from engine.store import reads
from engine.verify.log import Log
from engine.verify.report import Report
from engine.verify.trust import Trust, instant

Signed = list[tuple[str, note.Checkpoint]]
"""Checkpoints whose signature verifies, each with its label."""


def check_checkpoints(
    conn: Connection, log: Log, origin: str | None, trust: Trust, report: Report
) -> None:
    """Every stored checkpoint: signed, of the stored log, one root per size, consistent."""
    rows = reads.checkpoints(conn)
    report.counts["checkpoints"] = len(rows)
    if not rows and log.hashes:
        report.add("audit log", "no checkpoint: nothing signs the log")
    tree = MerkleTree(log.hashes)
    signed = _signed(rows, origin, trust, report)
    _check_forks(signed, report)
    good = [(label, c) for label, c in signed if _matches(label, c, tree, report)]
    _check_consistency(good, tree, report)
    last = max((c.size for _, c in good), default=0)
    if good and last < tree.size:
        report.notes.append(f"audit entries {last}..{tree.size - 1} are after the last checkpoint")


def _signed(rows: Sequence[Row[Any]], origin: str | None, trust: Trust, report: Report) -> Signed:
    """The checkpoints of ``rows`` whose signature verifies; each must say its row's size."""
    signed: Signed = []
    for row in rows:
        label = f"checkpoint {row.id} (size {row.size})"
        checkpoint = _checkpoint(
            label, row.note, origin, trust, signed_at=row.created_at, report=report
        )
        if checkpoint is None:
            continue
        if checkpoint.size != row.size:
            report.add(label, f"the note says size {checkpoint.size}")
        signed.append((label, checkpoint))
    return signed


def check_witness(
    witness: Path, log: Log, origin: str | None, trust: Trust, report: Report
) -> None:
    """Each checkpoint of the witness file must sign a prefix of the stored log."""
    tree = MerkleTree(log.hashes)
    try:
        notes = list(audit.witness_notes(witness))
    except (OSError, ValueError, KeyError) as exc:
        report.add(f"witness {witness}", f"cannot be read ({exc})")
        return
    for number, text in notes:
        label = f"witness {witness.name}:{number}"
        checkpoint = _checkpoint(label, text, origin, trust, signed_at=None, report=report)
        if checkpoint is None:
            continue
        if checkpoint.size > tree.size:
            report.add(
                label,
                f"the store is older than the witnessed log: it holds {tree.size} "
                f"entries, {checkpoint.size} were witnessed (restored copy?)",
            )
        elif tree.root(checkpoint.size) != checkpoint.root_hash:
            report.add(label, "the store's log differs from the witnessed one (fork or rewrite)")


def _checkpoint(
    label: str,
    text: str,
    origin: str | None,
    trust: Trust,
    *,
    signed_at: str | None,
    report: Report,
) -> note.Checkpoint | None:
    """The checkpoint of ``text``, if a trusted key signed it; else None, the problem reported."""
    if origin is None:
        report.add(label, "the store has no log origin")
        return None
    try:
        return _open(text, origin, trust, signed_at)
    except VerificationError as exc:
        report.add(label, f"signature does not verify ({exc})")
        return None


def _open(text: str, origin: str, trust: Trust, signed_at: str | None) -> note.Checkpoint:
    """The checkpoint of ``text`` if a trusted version, valid when it signed, signed it."""
    for version in trust.versions():
        verifier = note.verifier_key(origin, version.key)
        try:
            checkpoint = note.open_checkpoint(text, [verifier], origin)
        except note.NoKnownSignature:
            continue
        if signed_at is not None and not version.valid_at(instant(signed_at)):
            raise note.BadSignature(
                f"signed by {version.name} v{version.version} outside its validity"
            )
        return checkpoint
    raise note.NoKnownSignature("no signature by a trusted key")


def _matches(label: str, checkpoint: note.Checkpoint, tree: MerkleTree, report: Report) -> bool:
    """Whether the stored log's first ``checkpoint.size`` entries hash to its root."""
    if checkpoint.size > tree.size:
        report.add(
            label,
            f"the log was truncated: the checkpoint signs {checkpoint.size} "
            f"entries, {tree.size} are stored",
        )
        return False
    if tree.root(checkpoint.size) != checkpoint.root_hash:
        report.add(
            label,
            f"the first {checkpoint.size} entries do not hash to the signed root "
            "(an entry was changed, removed or inserted)",
        )
        return False
    return True


def _check_forks(signed: Signed, report: Report) -> None:
    """Two signed checkpoints of one size with two roots: the log was forked."""
    seen: dict[int, tuple[str, bytes]] = {}
    for label, checkpoint in signed:
        other = seen.setdefault(checkpoint.size, (label, checkpoint.root_hash))
        if other[1] != checkpoint.root_hash:
            report.add(label, f"fork: {other[0]} signs another root for the same size")


def _check_consistency(good: Signed, tree: MerkleTree, report: Report) -> None:
    """Each checkpoint, by size, must be consistent (RFC 9162 proof) with the one before."""
    ordered = sorted(good, key=lambda lc: lc[1].size)
    for (_, old), (label, new) in pairwise(ordered):
        try:
            proof = tree.consistency_proof(old.size, new.size)
            verify_consistency(old.size, new.size, old.root_hash, new.root_hash, proof)
        except VerificationError as exc:
            report.add(label, f"not consistent with the checkpoint of size {old.size} ({exc})")
