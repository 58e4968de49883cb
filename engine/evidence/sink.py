"""The collector's evidence sink: records → batches → signed → the store, or the spool.

:class:`EvidenceSink` is a collector :class:`~engine.collect.sinks.Sink`. Each
record goes into the :class:`~engine.evidence.batcher.Batcher`. With
``writer="thread"`` each finished batch is signed by every key its plan
requires here, and stored by the run's :class:`~engine.evidence.writer.Writer`
in a worker thread (so device tasks never wait for the database); with
``writer="process"`` each closed window goes, unhashed, to the sealer process
(:mod:`engine.evidence.sealer`), which hashes, signs and stores it with its own
copy of the writer, on the second core.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterable, Sequence
from datetime import UTC, datetime
from typing import Any

from engine.collect.backfill import missed
from engine.evidence.batcher import Batcher, Window
from engine.evidence.config import EvidenceConfig
from engine.evidence.sealer import Job, Sealer, cut
from engine.evidence.writer import Writer
from engine.keys import KeyStore
from engine.plans.body import PlanBody
from engine.records import Record
from engine.sign.batch import Batch, BatchSpec, covered_until, epoch_ms, sign_batch
from engine.sign.leaf import instant
from engine.store.sealed import SealedBatch
from engine.store.spool import Spool
from engine.store.store import Head, Store

Now = Callable[[], datetime]


def check_signers(plans: Iterable[PlanBody], keys: KeyStore, audit_key: str, at: datetime) -> None:
    """Refuse to start unless every key the plans require, and the audit key, can sign now."""
    for name in sorted({audit_key}.union(*(p.required_keys for p in plans))):
        keys.signer(name, at)


class EvidenceSink:
    """Batches, signs and stores every record; see the module docstring."""

    def __init__(
        self,
        plans: Sequence[PlanBody],
        store: Store,
        keys: KeyStore,
        spool: Spool,
        *,
        config: EvidenceConfig | None = None,
        now: Now = lambda: datetime.now(UTC),
        store_error: str | None = None,
        started: str | None = None,
    ) -> None:
        """``store_error``: why the store did not answer as the run started (it is then not
        tried again before the first batch: a server that does not answer takes seconds).
        ``started``: when the run started, as its ``collector.started`` entry says (default
        now)."""
        self.keys, self.config, self.now = keys, config or EvidenceConfig(), now
        check_signers(plans, keys, self.config.audit_key, now())
        self.writer = Writer(store, spool, keys, self.config, store_error)
        resumed = self.writer.resume({p.device.id for p in plans}, started or instant(now()))
        self.heads, self.since = resumed.heads, resumed.since
        in_process = self.config.writer == "process"
        self.batcher = Batcher(
            plans,
            self._sealed,
            grace_ms=self.config.grace_ms,
            previous_roots={d: h.root for d, h in self.heads.items()},
            on_window=self._closed if in_process else None,
        )
        self.queue: asyncio.Queue[Any] = asyncio.Queue(self.config.writer_queue)
        self.records = 0
        self.next_flush = time.monotonic() + 1.0
        if store_error is None:
            self.writer.record_deferred(now())  # before the fork: one process records them
        self.sealer = Sealer(self._job()) if in_process else None
        self.task = asyncio.create_task(self._send_all() if in_process else self._write_all())

    def _job(self) -> Job:
        previous = {device: head.root for device, head in self.heads.items()}
        return Job(self.writer, self.batcher.plans, previous)

    @property
    def stats(self) -> dict[str, int]:
        """Batches stored, replayed, spooled, dropped and duplicates ignored so far (in
        process mode: once closed)."""
        return self.writer.stats

    @property
    def store_error(self) -> str | None:
        return self.writer.store_error

    async def backfill(
        self, plans: Iterable[PlanBody], until: datetime, fallback_every_ms: int
    ) -> int:
        """Put ``shutdown`` gap records for every slot of every point before ``until`` that no
        sealed record accounts for (since each device's :attr:`since`), one per point.

        Called once, before collection starts, which then takes every slot from ``until``
        on. Each device's records are put in time order and no window is closed by time
        meanwhile, so none is reopened: the backfill adds at most one batch per device per
        window. Returns how many slots the records stand for.
        """
        count = 0
        for plan in plans:
            device = plan.device.id
            if device not in self.since:
                continue
            since = epoch_ms(datetime.fromisoformat(self.since[device]))
            for gap in missed(plan, since, epoch_ms(until), fallback_every_ms):
                if self.batcher.add(gap):
                    await self.batcher.emit_earlier(device)
                self.records += 1
                count += gap.slots
        return count

    async def put(self, record: Record) -> None:
        if self.batcher.add(record):
            await self.batcher.emit_earlier(record.device)
        self.records += 1
        if time.monotonic() >= self.next_flush:
            # a quiet device's window is closed by time, not only by its next record
            self.next_flush = time.monotonic() + 1.0
            await self.batcher.flush(self.now())

    async def close(self) -> None:
        await self.batcher.close()
        await self.queue.put(None)
        await self.task
        if self.sealer is None:
            await asyncio.to_thread(self.writer.finish, self.records, self.now())
            return
        self.writer.stats.update(await self.sealer.stop(self.records, self.now()))
        self.writer.store.close()

    def summary(self) -> str:
        """One line for the end of a run: what was stored, spooled, dropped, and where."""
        s, spool = self.stats, self.writer.spool
        return (
            f"evidence: {self.records:,} records; {s['stored']} batches stored, "
            f"{s['replayed']} replayed from the spool, {s['spooled']} spooled, "
            f"{s['dropped']} dropped, {s['duplicates']} duplicates ignored; "
            f"{len(spool)} waiting in {spool.path}; store {self.writer.store.where}"
        )

    async def _sealed(self, batch: Batch) -> None:
        at = self.now()
        signers = {k: self.keys.signer(k, at) for k in batch.keys}
        sealed = SealedBatch.of(batch, sign_batch(batch, signers))
        entries = batch.entries
        reach = [entries[-1].record, *(entries[i].record for i in sealed.gaps)]
        head = Head(batch.root, covered_until(reach))
        await self.queue.put((sealed, head, at))

    async def _write_all(self) -> None:
        while (item := await self.queue.get()) is not None:
            await asyncio.to_thread(self.writer.deliver, *item)

    async def _closed(self, spec: BatchSpec, window: int, records: Window) -> None:
        """In process mode: a closed window goes to the sealer (engine/evidence/sealer.py).

        Unhashed, so that the event loop stays light, unless the sealer lags (the
        cut before this one still waits for room in the socket) or collection is
        over: then the collector hashes it and computes its root itself. With
        PostgreSQL on two cores, the sealer and the server share one core while
        the collector has the other, and this evens the work out (docs/benchmarks.md).
        """
        if self.task.done():
            await self.task  # raises the sealer's failure
        lagging = self.batcher.closed or not self.queue.empty()
        await self.queue.put(cut(spec, window, records, self.now(), hashed=lagging))

    async def _send_all(self) -> None:
        assert self.sealer is not None
        while (item := await self.queue.get()) is not None:
            await self.sealer.send(item)
