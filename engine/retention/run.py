"""A retention run: verify the store, then delete what expired, each batch with its receipt.

The order is what makes a run safe to kill at any instant:

1. take the store's retention lock (one run at a time; a second refuses);
2. make sure the log's key can sign (asked now, not after deleting);
3. verify the store (:func:`engine.verify.whole.verify_store`): nothing is deleted
   from a store that does not verify. Everything is checked whole (the audit
   log, checkpoints and tail, plans, batches, chains, receipts and holds) but
   the records, which are rehashed, and the batches' signatures, which are
   verified, only in the batches the run will delete from. That is what the
   run relies on or touches: it signs a checkpoint over the whole log, decides
   by plans and holds, and deletes from those batches. A batch it does not
   touch, its signatures and records, it neither relies on, changes nor
   signs (a checkpoint signs the log, and the batch's ``batch.stored`` entry
   is checked), so a tamper there is as visible to ``audit verify`` after the
   run as before it. The batches are chosen by their rows; from the
   check on, each is what its verified statement says (its window, size, plan
   and root), so a row changed for the choice and put back before the check
   decides nothing;
4. for a few batches with expired records at a time (:data:`GROUP_BATCHES`,
   fewer once they hold :data:`GROUP_RECORDS`): in **one transaction**
   (holding the store's write lock) fold in the hold entries written since the
   check (the holds are the log's, as the check rebuilt them: never the
   writable ``holds`` table); for each batch, re-read its records, check they
   still hash to its signed root, choose what goes
   (:mod:`engine.retention.select`), append its receipt and delete; then sign
   one checkpoint (:meth:`Store.signed <engine.store.store.Store.signed>`): a
   killed run leaves each transaction wholly before or after, and no receipt
   ever waits for a checkpoint. The checkpoint
   refuses a tail holding a hold, receipt or archive entry the run did not
   write (written without the key), and the transaction's deletions with it. Records
   the check of step 3 hashed, of a batch no receipt has deleted from, are
   compared with it by one digest of their bytes
   (:func:`engine.verify.records.records_digest`): equal, they are the records
   that hashed to the signed root, and are not hashed again.
"""

from __future__ import annotations

import uuid
from collections import Counter
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import partial
from operator import attrgetter
from pathlib import Path

from sqlalchemy import Connection

from engine.audit import Actor, seal_with
from engine.errors import RetentionError
from engine.keys import KeyStore
from engine.plans.body import PlanBody, PlanPoint, Retention
from engine.plans.expiry import expiry
from engine.retention import archive, receipt
from engine.retention.archive import Archived, archives
from engine.retention.select import Selection, select
from engine.sign.leaf import instant
from engine.sign.merkle import MerkleLog, leaf_hashes, root_of_hashes
from engine.store import auditlog, data
from engine.store.retention import (
    BatchRef,
    Erasure,
    Hold,
    batch_refs,
    erase,
    erased,
    erased_counts,
    retention_lock,
)
from engine.store.store import Store
from engine.verify.batches import BatchInfo
from engine.verify.records import records_digest
from engine.verify.retention import HOLD_KINDS, HoldBook
from engine.verify.trust import Trust
from engine.verify.whole import verify_store


class StoreUnverified(RetentionError):
    """The store does not verify, so a retention run deletes nothing from it."""


@dataclass(frozen=True)
class Job:
    """Who runs retention (a principal or a job) and with which keys.

    ``keys`` signs the checkpoints (the log's key); ``trust`` is what the store is
    verified against before anything is deleted; ``workers`` as for ``verify_store``
    (1 inside a collector, which must not fork). The witness file is the store's.
    """

    actor: Actor
    keys: KeyStore
    trust: Trust
    workers: int | None = None
    archives: Path = Path("archives")
    """Where archives are written (``on_expiry: archive``)."""


@dataclass
class Outcome:
    """What a run (or a forecast) did, or would do."""

    run: receipt.Run
    at: datetime
    deleted: Counter[tuple[str, str]] = field(default_factory=Counter)
    """Records deleted, by (device, point)."""
    rules: dict[tuple[str, str], set[str]] = field(default_factory=dict)
    """How they expired, by (device, point): ``window start + keep_at_most 30s``, ..."""
    batches: int = 0
    receipts: list[int] = field(default_factory=list)
    kept: Counter[int] = field(default_factory=Counter)
    """Expired records kept, by the hold that keeps them."""
    held_past: Counter[tuple[str, str]] = field(default_factory=Counter)
    """Records a hold keeps past their ``keep_at_most``, by (device, point)."""
    checkpoint: int | None = None
    """The size of the last checkpoint the run signed."""

    @property
    def records(self) -> int:
        return sum(self.deleted.values())

    def add(self, selection: Selection) -> None:
        device = selection.batch.device
        for group in selection.groups:
            rule = group.expiry.explain()
            for point, n in group.points.items():
                self.deleted[device, point] += n
                self.rules.setdefault((device, point), set()).add(rule)
        self.batches += bool(selection.groups)
        self.kept.update(selection.kept)
        for point, n in selection.held_past.items():
            self.held_past[device, point] += n


def apply(store: Store, job: Job) -> Outcome:
    """One retention run on ``store`` by ``job`` (see the module)."""
    started = datetime.now(UTC)
    outcome = Outcome(receipt.Run(str(uuid.uuid4()), instant(started)), started)
    with retention_lock(store.engine):
        seal_with(job.keys, store.audit_key, started)
        chosen = [batch.id for batch, _ in candidates(store, started)]
        book = HoldBook()
        digests, signed = _verified(store, job, chosen, book)
        work = _as_signed(store, signed, started)
        archived = _archive(store, job, work, book)
        for group in _groups(work):
            deleting = [(batch, plan, archived, digests.get(batch.id)) for batch, plan in group]
            _delete(store, deleting, (job, book), outcome)
    return outcome


GROUP_BATCHES = 8
"""At most this many batches are deleted from in one transaction under one checkpoint: a
run's cost is partly per transaction (its write lock, the checkpoint's reads, signature and
verification), which small batches would otherwise pay each; and ``audit verify`` checks
each checkpoint afterwards."""
GROUP_RECORDS = 50_000
"""A transaction takes a further batch only while its batches hold no more than this many
records (a larger batch goes alone): a collector waits for the write lock no longer than
these take (8 batches of 6,000 readings: 0.2-0.3 s on the benchmark's machine)."""


def _groups(work: list[tuple[BatchRef, PlanBody]]) -> Iterator[list[tuple[BatchRef, PlanBody]]]:
    """The batches to delete from, in order, a transaction's worth at a time."""
    group: list[tuple[BatchRef, PlanBody]] = []
    records = 0
    for batch, plan in work:
        if group and (len(group) == GROUP_BATCHES or records + batch.count > GROUP_RECORDS):
            yield group
            group, records = [], 0
        group.append((batch, plan))
        records += batch.count
    if group:
        yield group


def forecast(store: Store, at: datetime) -> Outcome:
    """What a run at ``at`` would delete, with the holds in force now; changes nothing."""
    outcome = Outcome(receipt.Run("forecast", instant(at)), at)
    with store.reading() as conn:
        held = HoldBook().read(auditlog.signed_since(conn, MerkleLog(), HOLD_KINDS))
    for batch, plan in candidates(store, at):
        with store.reading() as conn:
            outcome.add(select(batch, plan, held, data.batch_records(conn, batch.id), at))
    return outcome


def _archive(
    store: Store, job: Job, work: list[tuple[BatchRef, PlanBody]], book: HoldBook
) -> Archived | None:
    """Write the archive of what this run will delete under ``on_expiry: archive``, if any."""
    chosen = []
    with store.reading() as conn:
        held = book.read(auditlog.signed_since(conn, book.log, HOLD_KINDS))
        at = datetime.now(UTC)
        for batch, plan in work:
            if archives(plan):
                chosen.append(select(batch, plan, held, data.batch_records(conn, batch.id), at))
    return archive.write(store, job.keys, job.actor, job.archives, chosen)


def _verified(
    store: Store, job: Job, touched: list[int], book: HoldBook
) -> tuple[dict[int, bytes], dict[int, BatchInfo]]:
    """The store verifies, the records of the batches ``touched`` included (see the module);
    the digest of the records of each of those batches no receipt deleted from, and each of
    them as its verified statement says. ``book`` is filled with the holds the verified log
    states."""
    digests: dict[int, bytes] = {}
    signed: dict[int, BatchInfo] = {}
    report = verify_store(
        store,
        job.trust,
        audit_key=store.audit_key,
        workers=job.workers,
        records_of=touched,
        signatures_of=touched,
        digests=digests,
        holds=book,
        statements=signed,
    )
    if not report.ok:
        first = report.problems[0]
        count = len(report.problems)
        raise StoreUnverified(
            f"the store at {store.where} does not verify ({count} problem"
            f"{'s' if count > 1 else ''}; the first: {first}): retention deletes nothing from"
            " a store that does not verify (converge audit verify names every problem)"
        )
    return digests, signed


def candidates(store: Store, at: datetime) -> list[tuple[BatchRef, PlanBody]]:
    """The batches that still hold records, of a stored plan, and have some expired by ``at``,
    as their rows say (a forecast's; a run then decides by their verified statements,
    :func:`_as_signed`)."""
    with store.reading() as conn:
        return _due(conn, batch_refs(conn), erased_counts(conn), at)


def _as_signed(
    store: Store, signed: Mapping[int, BatchInfo], at: datetime
) -> list[tuple[BatchRef, PlanBody]]:
    """The batches a run chose, each as its verified statement says (its window, size, plan
    and root), never as its row said when it was chosen: a row changed for the choice and put
    back before the check decides nothing. Those not due by their statement are left."""
    refs = [
        BatchRef(b.id, b.device, b.window_start, b.window_end, b.count, b.plan_digest, b.root)
        for b in sorted(signed.values(), key=attrgetter("id"))
    ]
    with store.reading() as conn:
        return _due(conn, refs, {}, at)  # emptied batches: left out when they were chosen


def _due(
    conn: Connection, refs: list[BatchRef], gone: dict[int, int], at: datetime
) -> list[tuple[BatchRef, PlanBody]]:
    """Those of ``refs`` that still hold records (``gone``: how many receipts removed, by batch
    id), of a stored plan (read by its digest, which its bytes must hash to), with some
    expired by ``at``."""
    plans = {d: data.plan(conn, d) for d in {r.plan_digest for r in refs}}
    firsts = {d: _retentions(p) for d, p in plans.items() if p is not None}
    return [
        (ref, plan)
        for ref in refs
        if (plan := plans.get(ref.plan_digest)) is not None
        and ref.count > gone.get(ref.id, 0)
        and _earliest(firsts[ref.plan_digest], ref) <= at
    ]


def _retentions(plan: PlanBody) -> list[PlanPoint]:
    """One point of the plan for each distinct retention its points have."""
    found: dict[Retention, PlanPoint] = {}
    for point in plan.points:
        found.setdefault(point.retention, point)
    return list(found.values())


def _earliest(points: list[PlanPoint], ref: BatchRef) -> datetime:
    """When the first of a batch's records may expire (its plan's earliest expiry)."""
    start, end = datetime.fromisoformat(ref.window_start), datetime.fromisoformat(ref.window_end)
    found = [expiry(point, start, end) for point in points]
    moments = [e.expires for e in found if e is not None]
    return min(moments) if moments else datetime.max.replace(tzinfo=UTC)


Work = tuple[BatchRef, PlanBody, Archived | None, bytes | None]
"""A batch to delete from, its plan, the run's archive, and the digest of its records as the
run's check hashed them (None: the check kept none)."""


def _delete(store: Store, group: list[Work], by: tuple[Job, HoldBook], outcome: Outcome) -> None:
    """A few batches in one transaction: what expired of each goes, with its receipt, and a
    checkpoint signs them all (see the module)."""
    job, book = by
    erasures = []
    with store.signed(partial(seal_with, job.keys, store.audit_key)) as conn:
        held = book.read(auditlog.signed_since(conn, book.log, HOLD_KINDS))
        gone = erased(conn, [batch.id for batch, *_ in group])
        for work in group:
            done = _receipted(conn, work, _Deciding(job, held, gone), outcome)
            if done is not None:
                erasures.append(done)
        erase(conn, erasures)
    outcome.receipts += [e.receipt for e in erasures]
    outcome.checkpoint = erasures[-1].receipt + 1 if erasures else outcome.checkpoint


@dataclass(frozen=True)
class _Deciding:
    """What a run's transaction decides by: its job, the holds in force, and the leaf hashes
    earlier receipts kept of its batches (by batch id; :func:`~engine.store.retention.erased`)."""

    job: Job
    held: list[Hold]
    erased: dict[int, dict[int, bytes]]


def _receipted(conn: Connection, work: Work, by: _Deciding, outcome: Outcome) -> Erasure | None:
    """In a run's transaction: what expired of one batch goes, with its receipt (what the
    receipt erases; None when nothing of the batch goes). The caller erases it."""
    batch, plan, archived, digest = work
    at = datetime.now(UTC)
    records = data.batch_records(conn, batch.id)
    hashes = _checked(batch, records, by.erased.get(batch.id, {}), digest)
    selection = select(batch, plan, by.held, records, at)
    kept = archived.positions.get(batch.id, frozenset()) if archived else frozenset()
    selection.archived_only(kept)
    outcome.add(selection)
    if not selection.groups:
        return None
    removed = _removed(selection, records, hashes)
    said = receipt.payload(
        selection,
        removed,
        outcome.run,
        by.held,
        archived.as_json() if archived and selection.archive else None,
    )
    seq = auditlog.append(conn, "retention.deleted", by.job.actor, said, instant(at))
    return Erasure(batch.id, *removed, seq)


def _checked(
    batch: BatchRef,
    records: tuple[list[int], list[bytes]],
    gone: dict[int, bytes],
    digest: bytes | None,
) -> list[bytes] | None:
    """Make sure the batch's records (with the leaf hashes its receipts kept, ``gone``) hash to
    its signed root; their leaf hashes, or None when they are the very records the run's check
    hashed into that root (``digest``; and no receipt has deleted from the batch)."""
    positions, leaves = records
    if digest is not None and not gone and records_digest(positions, leaves) == digest:
        return None
    hashes = leaf_hashes(leaves)
    _check_root(batch, (positions, hashes), gone)
    return hashes


def _removed(
    selection: Selection, records: tuple[list[int], list[bytes]], hashes: list[bytes] | None
) -> tuple[list[int], bytes]:
    """The positions of the records that go, ascending, and their leaf hashes concatenated in
    that order: none when they are the batch's last records (nothing is left whose inclusion
    they would prove)."""
    positions, leaves = records
    if selection.remaining == 0:
        return positions, b""
    index = {p: i for i, p in enumerate(positions)}
    chosen = sorted(p for g in selection.groups for p in g.positions)
    if hashes is not None:
        return chosen, b"".join([hashes[index[p]] for p in chosen])
    return chosen, b"".join(leaf_hashes(leaves[index[p]] for p in chosen))


def _check_root(
    batch: BatchRef, records: tuple[list[int], list[bytes]], gone: dict[int, bytes]
) -> None:
    """The batch's records (the positions and leaf hashes of those stored, and of those its
    receipts erased) are its positions 0..count-1, each once, and hash to its signed root."""
    positions, hashes = records
    every = list(range(batch.count))
    if gone or positions != every:  # not simply the whole batch, in order
        merged = {**gone, **dict(zip(positions, hashes, strict=True))}
        if len(merged) != len(gone) + len(positions) or sorted(merged) != every:
            raise _unverified(batch)
        hashes = [merged[p] for p in every]
    if root_of_hashes(hashes) != batch.root:
        raise _unverified(batch)


def _unverified(batch: BatchRef) -> StoreUnverified:
    return StoreUnverified(
        f"batch {batch.id} ({batch.device} {batch.window_start}) no longer verifies: its"
        " records do not hash to its signed root; nothing is deleted from it, from the batches of"
        " its transaction, or after it"
    )


__all__ = ["Job", "Outcome", "StoreUnverified", "apply", "forecast"]
