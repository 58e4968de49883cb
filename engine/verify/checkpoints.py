"""Checkpoints and the witness file: signed by the log's own key when they say, one root per
size, consistent, in time order.

The log has one key (docs/audit.md): the auditor names it (``--audit-key``),
and the log names it in its origin and its first entry. Only versions of that
key, among the trusted ones, verify a checkpoint, and the version must be
valid at the time the checkpoint says it was signed (its ``time`` line,
inside the signed bytes; never a column). Every stored checkpoint must sign
the first ``size`` entries' root, agree with any other of its size (else the
log was forked), be consistent with the one before it, and be signed no
earlier than it: a checkpoint of a retired key's, back-dated into its
validity, cannot sign a rewritten log without contradicting the checkpoints
signed after the rotation. Every checkpoint of the witness file must be of
the stored log.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from itertools import pairwise
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, Row

from engine import audit
from engine.errors import VerificationError
from engine.keys import KeyVersion
from engine.sign import note
from engine.sign.merkle import MerkleTree, verify_consistency
from engine.store import reads
from engine.verify.log import Log
from engine.verify.report import Report
from engine.verify.trust import BadTime, instant

CLOCK_SLACK = timedelta(seconds=30)
"""How much later than a checkpoint's stated time a batch it signs may begin: none, as the
collector seals and signs in order on one clock, but for a clock stepped meanwhile."""


@dataclass(frozen=True)
class Signed:
    """A checkpoint whose signature verified, with its label and the time it was signed."""

    label: str
    checkpoint: note.Checkpoint
    at: datetime


@dataclass(frozen=True)
class LogKey:
    """The log's key as the auditor names it, and its trusted versions (empty: untrusted)."""

    name: str
    versions: Sequence[KeyVersion]
    origin: str | None


def check_checkpoints(conn: Connection, log: Log, key: LogKey, report: Report) -> list[Signed]:
    """Every stored checkpoint: by the log's key, of the stored log, one root per size,
    consistent and in time order; the ones that hold, by size."""
    rows = reads.checkpoints(conn)
    report.counts["checkpoints"] = len(rows)
    if not rows and log.hashes:
        report.add("audit log", "no checkpoint: nothing signs the log")
    tree = MerkleTree(log.hashes)
    signed = _signed(rows, key, report)
    _check_forks(signed, report)
    good = sorted((s for s in signed if _matches(s, tree, report)), key=_by_size)
    _check_consistency(good, tree, report)
    _check_time_order(good, report)
    _check_future(good, datetime.now(UTC), report)
    _check_windows(good, log, report)
    _note_rotations(good, key, report)
    return good


def check_log_key(log: Log, key: LogKey, report: Report) -> None:
    """The key the auditor names is the log's: trusted, and the one its origin and first entry
    name (a log made before logs named their key gets a note instead)."""
    if not key.versions:
        report.add("audit log", f"its key {key.name} is not among the trusted keys")
    named = audit.origin_key(key.origin) if key.origin else None
    if named is not None and named != key.name:
        report.add("audit log", f"its origin names the key {named}, not {key.name}")
    for again in log.of_kind("log.created"):
        if again.seq != 0:
            report.add(f"audit entry {again.seq}", "a second log.created: a log is made once")
    first = log.entries.get(0)
    if first is None or first.kind != "log.created":
        if log.hashes:
            report.notes.append(
                "the log's first entry does not name its key (a log made before"
                f" logs did): its checkpoints are checked under {key.name}"
            )
        return
    said = (first.payload.get("audit_key"), first.payload.get("origin"))
    if said != (key.name, key.origin):
        report.add(
            "audit entry 0",
            f"names the key {said[0]} and origin {said[1]}, not {key.name} and {key.origin}",
        )


def _signed(rows: Sequence[Row[Any]], key: LogKey, report: Report) -> list[Signed]:
    """The checkpoints of ``rows`` whose signature verifies; each must say its row's size."""
    signed = []
    for row in rows:
        label = f"checkpoint {row.id} (size {row.size})"
        found = open_signed(label, row.note, key, report)
        if found is None:
            continue
        if found.checkpoint.size != row.size:
            report.add(label, f"the note says size {found.checkpoint.size}")
        signed.append(found)
    return signed


def open_signed(label: str, text: str, key: LogKey, report: Report) -> Signed | None:
    """The checkpoint of ``text`` if the log's key signed it when it says; else None, the
    problem reported."""
    if key.origin is None:
        report.add(label, "the store has no log origin")
        return None
    try:
        return _open(label, text, key)
    except VerificationError as exc:
        report.add(label, f"signature does not verify ({exc})")
        return None


def _open(label: str, text: str, key: LogKey) -> Signed:
    """Precondition: ``key.origin`` is set. Raises VerificationError unless a version of the
    log's key signed ``text`` and was valid at the time the checkpoint states."""
    assert key.origin is not None
    for version in key.versions:
        verifier = note.verifier_key(key.origin, version.key)
        try:
            checkpoint = note.open_checkpoint(text, [verifier], key.origin)
        except note.NoKnownSignature:
            continue
        at = audit.signed_time(checkpoint)
        if at is None:
            raise note.MalformedCheckpoint("it states no signing time (one 'time' line)")
        if not version.valid_in_second(at):
            raise note.BadSignature(
                f"signed by {version.name} v{version.version} at {at.isoformat()}, outside its"
                f" validity"
            )
        return Signed(label, checkpoint, at)
    raise note.NoKnownSignature(f"no signature by the log's key {key.name}")


def check_witness(conn: Connection, witness: Path, log: Log, key: LogKey, report: Report) -> None:
    """Each checkpoint of the witness file must sign a prefix of the stored log, and be stored
    itself; stored checkpoints newer than the witness's newest are noted."""
    tree = MerkleTree(log.hashes)
    try:
        notes = list(audit.witness_notes(witness))
    except (OSError, ValueError, KeyError) as exc:
        report.add(f"witness {witness}", f"cannot be read ({exc})")
        return
    stored = reads.checkpoints(conn)
    sizes = {row.size for row in stored}
    newest = 0
    for number, text in notes:
        label = f"witness {witness.name}:{number}"
        found = open_signed(label, text, key, report)
        if found is None:
            continue
        size, root = found.checkpoint.size, found.checkpoint.root_hash
        newest = max(newest, size)
        if size > tree.size:
            report.add(
                label,
                f"the store is older than the witnessed log: it holds {tree.size} "
                f"entries, {size} were witnessed (restored copy?)",
            )
        elif tree.root(size) != root:
            report.add(label, "the store's log differs from the witnessed one (fork or rewrite)")
        elif size not in sizes:
            report.add(label, f"a checkpoint of the stored log (size {size}) that is not stored")
    _note_unwitnessed([row for row in stored if row.size > newest], witness, newest, report)


def _note_unwitnessed(rows: Sequence[Row[Any]], witness: Path, newest: int, report: Report) -> None:
    """Stored checkpoints the witness cannot vouch for: all after its newest line."""
    if rows:
        first = rows[0]
        report.notes.append(
            f"{len(rows)} stored checkpoint(s) from checkpoint {first.id} (size {first.size}) on"
            f" are newer than the newest line of {witness.name} (size {newest}): signed after"
            " it was copied, or by whoever holds the audit key; only a witness kept since"
            " vouches for them"
        )


def _by_size(signed: Signed) -> tuple[int, datetime]:
    return signed.checkpoint.size, signed.at


def _matches(signed: Signed, tree: MerkleTree, report: Report) -> bool:
    """Whether the stored log's first ``size`` entries hash to the checkpoint's root."""
    size = signed.checkpoint.size
    if size > tree.size:
        report.add(
            signed.label,
            f"the log was truncated: the checkpoint signs {size} entries, {tree.size} are stored",
        )
        return False
    if tree.root(size) != signed.checkpoint.root_hash:
        report.add(
            signed.label,
            f"the first {size} entries do not hash to the signed root "
            "(an entry was changed, removed or inserted)",
        )
        return False
    return True


def _check_forks(signed: list[Signed], report: Report) -> None:
    """Two signed checkpoints of one size with two roots: the log was forked."""
    seen: dict[int, tuple[str, bytes]] = {}
    for s in signed:
        other = seen.setdefault(s.checkpoint.size, (s.label, s.checkpoint.root_hash))
        if other[1] != s.checkpoint.root_hash:
            report.add(s.label, f"fork: {other[0]} signs another root for the same size")


def _check_consistency(good: list[Signed], tree: MerkleTree, report: Report) -> None:
    """Each checkpoint, by size, must be consistent (RFC 9162 proof) with the one before."""
    for old, new in pairwise(good):
        a, b = old.checkpoint, new.checkpoint
        try:
            proof = tree.consistency_proof(a.size, b.size)
            verify_consistency(a.size, b.size, a.root_hash, b.root_hash, proof)
        except VerificationError as exc:
            report.add(new.label, f"not consistent with the checkpoint of size {a.size} ({exc})")


def _check_time_order(good: list[Signed], report: Report) -> None:
    """A larger checkpoint is signed no earlier than a smaller one: a back-dated checkpoint
    (a retired key's, say) cannot follow one signed after it."""
    for old, new in pairwise(good):
        if new.at < old.at:
            report.add(
                new.label,
                f"signed at {new.at.isoformat()}, before the checkpoint of size "
                f"{old.checkpoint.size} (signed at {old.at.isoformat()}): back-dated",
            )


def _check_future(good: list[Signed], now: datetime, report: Report) -> None:
    """No checkpoint says it was signed after ``now`` (but for the minutes of
    :data:`~engine.audit.FUTURE_SLACK`)."""
    for signed in good:
        if signed.at > now + audit.FUTURE_SLACK:
            report.add(
                signed.label,
                f"signed at {signed.at.isoformat()}, after this verification's clock: dated in"
                " the future (a signer's clock set ahead dates what it signs ahead too)",
            )


def _check_windows(good: list[Signed], log: Log, report: Report) -> None:
    """A checkpoint signs no batch sealed after it: none (stored or dropped) whose window
    began later than the time the checkpoint states (but for :data:`CLOCK_SLACK`). So a
    retired key's checkpoints, dated back into its validity, cannot sign the batches sealed
    after its rotation."""
    batches = sorted(_window_starts(log))
    latest: tuple[int, datetime] | None = None
    taken = 0
    for signed in good:
        while taken < len(batches) and batches[taken][0] < signed.checkpoint.size:
            if latest is None or batches[taken][1] > latest[1]:
                latest = batches[taken]
            taken += 1
        if latest is not None and latest[1] > signed.at + CLOCK_SLACK:
            payload = log.entries[latest[0]].payload
            report.add(
                signed.label,
                f"signs the batch of {payload.get('device')} {payload.get('window_start')}"
                f" (audit entry {latest[0]}), whose window began after it was signed"
                f" ({signed.at.isoformat()}): back-dated",
            )


def _window_starts(log: Log) -> Iterator[tuple[int, datetime]]:
    """(seq, window start) of every entry that records a batch sealed, stored or dropped."""
    for entry in log.entries.values():
        if entry.kind in ("batch.stored", "batch.dropped"):
            try:
                yield entry.seq, instant(str(entry.payload.get("window_start")))
            except BadTime:
                continue  # the batch check names an entry that is not its batch's


def _note_rotations(good: list[Signed], key: LogKey, report: Report) -> None:
    """A rotation of the log's key after its newest checkpoint: what only the witness tells."""
    now = datetime.now(UTC)
    ends = [v.not_after for v in key.versions if v.not_after is not None and v.not_after <= now]
    newest = good[-1].at if good else None
    later = [end for end in ends if newest is not None and end > newest]
    if later:
        report.notes.append(
            f"the log's key {key.name} was rotated at {min(later).isoformat()}, after its newest"
            f" checkpoint ({newest.isoformat() if newest else '-'}): a log no longer written"
            " since, or a store rolled back to before the rotation; only a witness tells them"
            " apart (--witness)"
        )
