"""The writer: sealed batches into the store, or into the spool while the store is away.

One :class:`Writer` per run, used by one thread or process at a time: the
evidence sink's writer thread, or the sealer process, which works on its own
copy (inherited at the fork) with its own connections (:meth:`Writer.own_connections`).
Every call says when it happens (``at``: the sink's clock when the batch was
sealed), so the writer keeps no clock of its own beyond the monotonic timers of
its retries and checkpoints.

When the database fails, the batch goes into the :class:`~engine.store.spool.Spool`
and the store is not tried again for ``retry_s``; once it answers, spooled
batches are replayed oldest first, ``replay_chunk`` after each live batch, so a
backlog never starves live data. Checkpoints of the audit log are signed every
``checkpoint_entries`` entries or ``checkpoint_s`` seconds, and at the end.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from engine.audit import Seal, seal_with
from engine.errors import CheckpointRefused, StoreError
from engine.evidence.config import EvidenceConfig
from engine.evidence.deferred import Deferred
from engine.keys import KeyStore
from engine.sign.batch import Statement
from engine.sign.leaf import instant
from engine.store.sealed import SealedBatch
from engine.store.spool import Spool
from engine.store.store import Head, Store

log = logging.getLogger(__name__)

_INHERITED: list[Spool] = []
"""The parent's spool connection in a forked writer: kept open, never used or closed here."""


@dataclass(frozen=True)
class Resumed:
    """Where a run takes up its devices (:meth:`Writer.resume`)."""

    heads: dict[str, Head]
    """Each device's chain head, for the devices that have one."""
    since: dict[str, str]
    """Per device, the instant from which none of its slots is accounted for by a sealed
    record: the restart's backfill (engine/collect/backfill.py) starts there."""


class Writer:
    """Stores, spools, replays, records deferred entries and checkpoints; see the module."""

    def __init__(
        self,
        store: Store,
        spool: Spool,
        keys: KeyStore,
        config: EvidenceConfig,
        store_error: str | None = None,
    ) -> None:
        self.store, self.spool, self.keys, self.config = store, spool, keys, config
        self.store_error = store_error
        """Why the store last failed, while it is away."""
        self.down_until = 0.0
        self.last_checkpoint = time.monotonic()
        self.refusal: str | None = None
        """Why the last checkpoint was refused, until one is signed: the next is tried once
        ``checkpoint_s`` have passed, not on every batch (each try reads the whole tail)."""
        self.deferred_due = True
        self.stats = {"stored": 0, "spooled": 0, "replayed": 0, "dropped": 0, "duplicates": 0}

    def own_connections(self) -> None:
        """In a forked process: leave the parent's database and spool connections alone and
        open this process's own."""
        self.store.engine.dispose(close=False)
        _INHERITED.append(self.spool)
        self.spool = Spool(self.spool.path, self.spool.max_bytes)

    def resume(self, devices: set[str], started: str) -> Resumed:
        """Where the run that started at ``started`` (an instant) takes up ``devices``.

        Each device's chain head is the spool's (newest local knowledge), else the
        store's. The spool's is stale when stored batches follow it (a run with another
        spool moved on since): then the end of the chain they make is taken. When the
        store answers, the spool keeps the heads of ``devices`` and notes that it knows
        their chains from now on (and since when), so that a later run can start, and
        account for their slots, while the store is away.
        """
        heads = self.spool.heads()
        starts = self._catch_up(devices, heads, started) if self.store_error is None else {}
        tracked = self.spool.tracked()
        since = {d: _since(heads.get(d), tracked.get(d), starts.get(d)) for d in devices}
        return Resumed(heads, {d: at for d, at in since.items() if at is not None})

    def _catch_up(self, devices: set[str], heads: dict[str, Head], started: str) -> dict[str, str]:
        """Bring ``heads`` up to the store's, kept in the spool with ``devices`` tracked since
        ``started``; the store's first run start per device (none when it does not answer)."""
        try:
            stored = self.store.heads()
            moved = {
                d: self.store.chain_end(d, head.root)
                for d, head in heads.items()
                if d in stored and stored[d].root != head.root
            }
            starts = self.store.first_starts()
        except StoreError:
            return {}
        newer = {d: head for d, head in moved.items() if head is not None}
        newer |= {d: head for d, head in stored.items() if d in devices and d not in heads}
        for device, head in newer.items():
            heads[device] = head
            self.spool.set_head(device, head)
        self.spool.track(devices, started)
        return starts

    def deliver(self, sealed: SealedBatch, head: Head, at: datetime) -> None:
        """Store one batch sealed at ``at``, or spool it; then replay and checkpoint as due."""
        self.spool.set_head(sealed.head.device, head)
        if (
            time.monotonic() < self.down_until
            or not self.record_deferred(at)
            or not self._write(sealed, live=True)
        ):
            self._spool(sealed, at)
            return
        self._replay(self.config.replay_chunk)
        self._maybe_checkpoint(at)

    def finish(self, records: int, at: datetime) -> dict[str, int]:
        """At the end of the run: replay what the store takes, record the stop, checkpoint
        (signed as of ``at``), close; the writer's stats.

        What the store does not take stays in the spool for the next run: batches,
        and the stop itself (after the start, if that was not recorded either).
        """
        try:
            if time.monotonic() >= self.down_until and self.record_deferred(at):
                self._replay(len(self.spool))
            stopped = {"records": records, **self.stats, "spooled_now": len(self.spool)}
            stop = Deferred(instant(datetime.now(UTC)), entries=(("collector.stopped", stopped),))
            self.spool.defer(stop.to_bytes())
            self.deferred_due = True
            self.record_deferred(at)  # the stop and a checkpoint after it, in one transaction
        finally:
            self.store.close()
        return dict(self.stats)

    def record_deferred(self, at: datetime) -> bool:
        """Give the store the audit entries deferred in the spool, oldest first: the starts
        and stops of runs it missed, each with a checkpoint signed as of ``at``. ``False``
        when it did not take them all (it is away)."""
        if not self.deferred_due:
            return True
        try:
            deferred = self.spool.deferred()
            if deferred and not self.store.prepared:  # away since the run started
                self.store.prepare()
            for row_id, data in deferred:
                Deferred.from_bytes(data).record(self.store, self._seal(at))
                self.spool.forget_deferred(row_id)
                self.last_checkpoint = time.monotonic()
        except CheckpointRefused as exc:  # the store cannot be signed: as away, but said why
            self._refused(exc, "this run's start or stop not recorded (its batches wait)")
            self._down(exc)
            return False
        except StoreError as exc:
            self._down(exc)
            return False
        self.deferred_due, self.store_error, self.refusal = False, None, None
        return True

    def _write(self, sealed: SealedBatch, live: bool, spooled_at: str | None = None) -> bool:
        """Store ``sealed``; a replayed batch's entry is dated when it was spooled, the time its
        signatures are judged at (a key may have been rotated since)."""
        when = None if spooled_at is None else datetime.fromisoformat(spooled_at)
        try:
            stored = self.store.write(sealed, when)
        except StoreError as exc:
            self._down(exc)
            return False
        key = ("stored" if live else "replayed") if stored else "duplicates"
        self.stats[key] += 1
        return True

    def _spool(self, sealed: SealedBatch, at: datetime) -> None:
        kept = self.spool.put(sealed, instant(at))
        self.stats["spooled" if kept else "dropped"] += 1

    def _replay(self, limit: int) -> None:
        """Log dropped batches, then store up to ``limit`` spooled ones, oldest first."""
        self._log_dropped()
        for row_id, sealed, spooled_at in self.spool.oldest(limit):
            if not self._write(sealed, live=False, spooled_at=spooled_at):
                return
            self.spool.remove(row_id)

    def _log_dropped(self) -> None:
        dropped = self.spool.dropped()
        if not dropped:
            return
        full = {
            "spool": str(self.spool.path),
            "dropped": len(dropped),
            "max_bytes": self.spool.max_bytes,
        }
        try:
            self.store.log("spool.full", full)
            for item in dropped:
                self.store.log("batch.dropped", _dropped_payload(item.statement, item.dropped_at))
                self.spool.forget_dropped(item.id)
        except StoreError as exc:
            self._down(exc)

    def _down(self, exc: StoreError) -> None:
        self.down_until = time.monotonic() + self.config.retry_s
        self.store_error = str(exc)

    def _maybe_checkpoint(self, at: datetime) -> None:
        due = time.monotonic() - self.last_checkpoint >= self.config.checkpoint_s
        if due or (
            self.refusal is None
            and self.store.entries_since_checkpoint() >= self.config.checkpoint_entries
        ):
            self._checkpoint(at)

    def _checkpoint(self, at: datetime) -> None:
        """Sign a checkpoint if the store answers; one the store refuses is logged (once, while
        the reason stays the same) and tried again an interval later: collecting goes on,
        unsigned, and ``audit verify`` names why."""
        try:
            self.store.checkpoint(self._seal(at))
        except CheckpointRefused as exc:
            self._refused(exc, "no checkpoint signed")
            self.last_checkpoint = time.monotonic()
            return
        except StoreError:
            return
        self.refusal, self.last_checkpoint = None, time.monotonic()

    def _refused(self, exc: CheckpointRefused, what: str) -> None:
        """Log a refusal, once while its reason stays the same."""
        if str(exc) != self.refusal:
            log.error("%s: %s", what, exc)
        self.refusal = str(exc)

    def _seal(self, now: datetime) -> Seal:
        return seal_with(self.keys, self.config.audit_key, now)


def _since(head: Head | None, tracked: str | None, started: str | None) -> str | None:
    """From when a device's slots are unaccounted for: just after its last sealed record;
    without a sealed batch, the first start of a run meant to collect it that the spool
    (tracking) or the store (``collector.started``) knows of; ``None`` if neither does."""
    if head is not None:
        return head.covered_until
    known = [at for at in (tracked, started) if at is not None]
    return min(known, key=datetime.fromisoformat, default=None)


def _dropped_payload(statement: bytes, dropped_at: str) -> dict[str, Any]:
    return {**Statement.parse(statement).members(), "dropped_at": dropped_at}
