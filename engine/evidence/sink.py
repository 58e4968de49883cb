"""The collector's evidence sink: records → signed batches → the store, or the spool.

:class:`EvidenceSink` is a collector :class:`~engine.collect.sinks.Sink`. Each
record goes into the :class:`~engine.sign.batch.Batcher`. With
``writer="thread"`` each finished batch is signed by every key its plan
requires and stored in a worker thread (so device tasks never wait for the
database); with ``writer="process"`` each closed window goes, unhashed, to the
sealer process (:mod:`engine.evidence.sealer`), which hashes, signs and stores it
with the same :meth:`EvidenceSink.deliver` on the second core.

When the database fails, the batch goes into the :class:`Spool` and the store
is not tried again for ``retry_s``; once it answers, spooled batches are
replayed oldest first, ``replay_chunk`` after each live batch, so a backlog
never starves live data. Checkpoints of the audit log are signed every
``checkpoint_entries`` entries or ``checkpoint_s`` seconds, and at close.
"""

from __future__ import annotations

import asyncio
import json
import socket
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from engine.canonical import canonical_json
from engine.collect.backfill import missed
from engine.evidence.sealer import Sealer, cut
from engine.keys import KeyStore, KeyVersion
from engine.plans.signature import signature_name
from engine.records import Record
from engine.sign.batch import (
    Batch,
    Batcher,
    DevicePlan,
    Statement,
    Window,
    covered_until,
    device_plan,
    epoch_ms,
    sign_batch,
)
from engine.sign.leaf import instant
from engine.sign.note import Checkpoint, sign_checkpoint
from engine.store.database import StoreError
from engine.store.sealed import SealedBatch
from engine.store.spool import DEFAULT_MAX_BYTES, Spool
from engine.store.store import Head, Store

Now = Callable[[], datetime]


@dataclass
class EvidenceConfig:
    """How often the sink checkpoints, retries and replays (the plan decides the windows)."""

    audit_key: str = "audit-log"
    checkpoint_entries: int = 1000
    checkpoint_s: float = 60.0
    grace_ms: int = 5_000
    retry_s: float = 5.0
    replay_chunk: int = 8
    writer_queue: int = 10_000
    """Batches (or windows, for the sealer) waiting before the collector waits (back-pressure)."""
    writer: Literal["thread", "process"] = "thread"
    """Where batches are hashed, signed and stored: a thread beside the event loop, or
    (``process``, Linux) a forked sealer process on another core (engine/evidence/sealer.py)."""


def actor() -> str:
    return f"converge-run@{socket.gethostname()}"


def check_signers(
    plans: Iterable[Mapping[str, Any]], keys: KeyStore, audit_key: str, at: datetime
) -> None:
    """Refuse to start unless every key the plans require, and the audit key, can sign now."""
    needed = {audit_key} | {
        k
        for p in plans
        for point in device_plan(p).points.values()
        if point.required
        for k in point.keys
    }
    for name in sorted(needed):
        keys.signer(name, at)


class EvidenceSink:
    """Batches, signs and stores every record; see the module docstring."""

    def __init__(
        self,
        plans: list[Mapping[str, Any]],
        store: Store,
        keys: KeyStore,
        spool: Spool,
        *,
        config: EvidenceConfig | None = None,
        now: Now = lambda: datetime.now(UTC),
        store_error: str | None = None,
    ) -> None:
        """``store_error``: why the store did not answer as the run started (it is then not
        tried again before the first batch: a server that does not answer takes seconds)."""
        self.store, self.keys, self.spool = store, keys, spool
        self.config, self.now = config or EvidenceConfig(), now
        self.store_error = store_error
        """Why the store last failed, while it is away."""
        check_signers(plans, keys, self.config.audit_key, now())
        self.heads = self._resume({str(p["device"]["id"]) for p in plans})
        in_process = self.config.writer == "process"
        self.batcher = Batcher(
            plans,
            self._sealed,
            grace_ms=self.config.grace_ms,
            previous_roots={d: h.root for d, h in self.heads.items()},
            on_window=self._closed if in_process else None,
        )
        self.queue: asyncio.Queue[Any] = asyncio.Queue(self.config.writer_queue)
        self.down_until = 0.0
        self.last_checkpoint = time.monotonic()
        self.stats = {"stored": 0, "spooled": 0, "replayed": 0, "dropped": 0, "duplicates": 0}
        self.records = 0
        self.next_flush = time.monotonic() + 1.0
        self.deferred_due = True
        if store_error is None:
            self.record_deferred()  # before the fork: one process records them, once
        self.sealer = Sealer(self) if in_process else None  # forks: everything above is set
        self.writer = asyncio.create_task(self._send_all() if in_process else self._write_all())

    def _resume(self, devices: set[str]) -> dict[str, Head]:
        """Each device's chain head: the spool's (newest local knowledge), else the store's.

        The spool's is stale when stored batches follow it (a run with another spool
        moved on since): then the end of the chain they make is taken. When the store
        answers, the spool keeps the heads of ``devices`` and notes that it knows their
        chains from now on, so that a later run can start while the store is away.
        """
        heads = self.spool.heads()
        if self.store_error is not None:
            return heads
        try:
            stored = self.store.heads()
            moved = {
                d: self.store.chain_end(d, head.root)
                for d, head in heads.items()
                if d in stored and stored[d].root != head.root
            }
        except StoreError:
            return heads
        newer = {d: head for d, head in moved.items() if head is not None}
        newer |= {d: head for d, head in stored.items() if d in devices and d not in heads}
        for device, head in newer.items():
            heads[device] = head
            self.spool.set_head(device, head)
        self.spool.track(devices)
        return heads

    async def backfill(
        self, plans: Iterable[Mapping[str, Any]], until: datetime, fallback_every_ms: int
    ) -> int:
        """Put a ``shutdown`` gap for every slot since each device's last stored window.

        Called once, before collection starts; returns how many gaps it put.
        """
        count = 0
        for plan in plans:
            head = self.heads.get(str(plan["device"]["id"]))
            if head is None:
                continue
            since = epoch_ms(datetime.fromisoformat(head.covered_until))
            for gap in missed(plan, since, epoch_ms(until), fallback_every_ms):
                await self.put(gap)
                count += 1
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
        await self.writer
        if self.sealer is None:
            await asyncio.to_thread(self.finish)
            return
        self.stats.update(await self.sealer.stop(self.records))
        self.store.close()

    def summary(self) -> str:
        """One line for the end of a run: what was stored, spooled, dropped, and where."""
        s = self.stats
        return (
            f"evidence: {self.records:,} records; {s['stored']} batches stored, "
            f"{s['replayed']} replayed from the spool, {s['spooled']} spooled, "
            f"{s['dropped']} dropped, {s['duplicates']} duplicates ignored; "
            f"{len(self.spool)} waiting in {self.spool.path}; store {self.store.where}"
        )

    async def _sealed(self, batch: Batch) -> None:
        signers = {k: self.keys.signer(k, self.now()) for k in batch.keys}
        sealed = SealedBatch.of(batch, sign_batch(batch, signers))
        await self.queue.put((sealed, Head(batch.root, covered_until(batch.entries[-1].record))))

    async def _write_all(self) -> None:
        while (item := await self.queue.get()) is not None:
            await asyncio.to_thread(self.deliver, *item)

    async def _closed(self, plan: DevicePlan, window: int, records: Window) -> None:
        """In process mode: a closed window goes to the sealer (engine/evidence/sealer.py).

        Unhashed, so that the event loop stays light, unless the sealer lags (the
        cut before this one still waits for room in the socket) or collection is
        over: then the collector hashes it and computes its root itself. With
        PostgreSQL on two cores, the sealer and the server share one core while
        the collector has the other, and this evens the work out (docs/benchmarks.md).
        """
        if self.writer.done():
            await self.writer  # raises the sealer's failure
        lagging = self.batcher.closed or not self.queue.empty()
        await self.queue.put(cut(plan, window, records, self.now(), hashed=lagging))

    async def _send_all(self) -> None:
        assert self.sealer is not None
        while (item := await self.queue.get()) is not None:
            await self.sealer.send(item)

    # --- in the writer thread, or in the sealer process ------------------------------

    def deliver(self, sealed: SealedBatch, head: Head) -> None:
        """Store one sealed batch, or spool it; then replay and checkpoint as due.

        Runs in the writer thread, or in the sealer process (engine/evidence/sealer.py).
        """
        self.spool.set_head(sealed.head.device, head)
        if (
            time.monotonic() < self.down_until
            or not self.record_deferred()
            or not self._write(sealed, live=True)
        ):
            self._spool(sealed)
            return
        self._replay(self.config.replay_chunk)
        self._maybe_checkpoint()

    def _write(self, sealed: SealedBatch, live: bool, spooled_at: str | None = None) -> bool:
        """Store ``sealed``; a replayed batch's entry is dated when it was spooled, the time its
        signatures are judged at (a key may have been rotated since)."""
        at = None if spooled_at is None else datetime.fromisoformat(spooled_at)
        try:
            stored = self.store.write(sealed, at)
        except StoreError as exc:
            self._down(exc)
            return False
        key = ("stored" if live else "replayed") if stored else "duplicates"
        self.stats[key] += 1
        return True

    def _spool(self, sealed: SealedBatch) -> None:
        kept = self.spool.put(sealed, instant(self.now()))
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
        try:
            self.store.log(
                "spool.full",
                {
                    "spool": str(self.spool.path),
                    "dropped": len(dropped),
                    "max_bytes": self.spool.max_bytes,
                },
            )
            for item in dropped:
                self.store.log("batch.dropped", _dropped_payload(item.statement, item.dropped_at))
                self.spool.forget_dropped(item.id)
        except StoreError as exc:
            self._down(exc)

    def record_deferred(self) -> bool:
        """Give the store the audit entries deferred in the spool, oldest first: the starts
        and stops of runs it missed. ``False`` when it did not take them all (it is away)."""
        if not self.deferred_due:
            return True
        try:
            deferred = self.spool.deferred()
            if deferred and not self.store.prepared:  # away since the run started
                self.store.prepare()
            for row_id, data in deferred:
                Deferred.from_bytes(data).record(self.store)
                self.spool.forget_deferred(row_id)
        except StoreError as exc:
            self._down(exc)
            return False
        self.deferred_due, self.store_error = False, None
        return True

    def _down(self, exc: StoreError) -> None:
        self.down_until = time.monotonic() + self.config.retry_s
        self.store_error = str(exc)

    def _maybe_checkpoint(self) -> None:
        due = time.monotonic() - self.last_checkpoint >= self.config.checkpoint_s
        if due or self.store.entries_since_checkpoint() >= self.config.checkpoint_entries:
            self._checkpoint()

    def _checkpoint(self) -> None:
        try:
            self.store.checkpoint(self._sign_checkpoint)
        except StoreError:
            return
        self.last_checkpoint = time.monotonic()

    def _sign_checkpoint(self, checkpoint: Checkpoint) -> str:
        key = self.keys.signer(self.config.audit_key, self.now())
        return sign_checkpoint(checkpoint, checkpoint.origin, key)

    def finish(self) -> None:
        """At close: replay what the store will take, record the stop, checkpoint, close.

        What the store does not take stays in the spool for the next run: batches,
        and the stop itself (after the start, if that was not recorded either).
        """
        try:
            if time.monotonic() >= self.down_until and self.record_deferred():
                self._replay(len(self.spool))
            stopped = {"records": self.records, **self.stats, "spooled_now": len(self.spool)}
            stop = Deferred(instant(datetime.now(UTC)), entries=(("collector.stopped", stopped),))
            self.spool.defer(stop.to_bytes())
            self.deferred_due = True
            if self.record_deferred():
                self._checkpoint()
        finally:
            self.store.close()


def _dropped_payload(statement: bytes, dropped_at: str) -> dict[str, Any]:
    return {**Statement.parse(statement).members(), "dropped_at": dropped_at}


@dataclass(frozen=True)
class Deferred:
    """Audit entries the store must get before any batch: a run's start or its stop.

    A start is the run's plans (their bytes and signed notes), its signing key
    versions and a ``collector.started`` entry. Each is kept in the spool until
    the store has recorded it, so a collector can start (and stop) while the
    store is away; plans and key versions the store has already are skipped.
    """

    at: str
    """When it happened (an instant): the entries are dated so, however late they are logged."""
    plans: tuple[tuple[bytes, str | None], ...] = ()
    keys: tuple[KeyVersion, ...] = ()
    entries: tuple[tuple[str, dict[str, Any]], ...] = ()
    """(kind, payload) of each entry to log after the plans and keys."""

    def record(self, store: Store) -> None:
        if self.plans:
            store.deploy_plans(
                ((json.loads(data), data, note) for data, note in self.plans), self.at
            )
        if self.keys:
            store.record_keys(self.keys)
        for kind, payload in self.entries:
            store.log(kind, payload, self.at)

    def to_bytes(self) -> bytes:
        return canonical_json(
            {
                "at": self.at,
                "plans": [[data.decode(), note] for data, note in self.plans],
                "keys": [version.as_dict() for version in self.keys],
                "entries": [list(entry) for entry in self.entries],
            }
        )

    @classmethod
    def from_bytes(cls, data: bytes) -> Deferred:
        obj = json.loads(data)
        return cls(
            obj["at"],
            tuple((text.encode(), note) for text, note in obj["plans"]),
            tuple(map(KeyVersion.from_dict, obj["keys"])),
            tuple((kind, payload) for kind, payload in obj["entries"]),
        )


@dataclass(frozen=True)
class EvidenceTarget:
    """Where a run's evidence goes: the store, the spool beside the collector, the witness."""

    db: str
    spool: Path
    witness: Path
    max_spool_bytes: int = DEFAULT_MAX_BYTES


def open_evidence(
    plans: list[Mapping[str, Any]],
    plans_dir: Path,
    target: EvidenceTarget,
    keys: KeyStore,
    config: EvidenceConfig,
) -> EvidenceSink:
    """Make the sink, with the run's start (plans, key versions) recorded in the store.

    Must be called in the event loop that runs the collection. When the store
    does not answer, the start waits in the spool with the batches, and
    ``sink.store_error`` says why; but only if the spool knows where every
    device's chain ends (it was used before, for these devices): otherwise
    raises StoreError, as a chain started afresh could fork the store's.
    """
    check_signers(plans, keys, config.audit_key, datetime.now(UTC))  # before anything is written
    store = Store.attach(target.db, actor(), target.witness)
    spool = Spool(target.spool, target.max_spool_bytes)
    try:
        error = _reach(store, spool, plans)
        started = {"plans": [p["digest"] for p in plans], "spool": str(target.spool)}
        start = Deferred(
            instant(datetime.now(UTC)),
            plans=tuple((canonical_json(p), _signature(plans_dir, p)) for p in plans),
            keys=tuple(v for name in keys.names() for v in keys.versions(name)),
            entries=(("collector.started", started),),
        )
        spool.defer(start.to_bytes())
        return EvidenceSink(plans, store, keys, spool, config=config, store_error=error)
    except BaseException:
        spool.close()
        store.close()
        raise


def _reach(store: Store, spool: Spool, plans: Iterable[Mapping[str, Any]]) -> str | None:
    """Prepare the store; if it is away, say why, or raise unless the spool can carry the run."""
    try:
        store.prepare()
    except StoreError as exc:
        devices = sorted({str(p["device"]["id"]) for p in plans})
        unknown = [device for device in devices if not spool.knows_chain(device)]
        if unknown:
            raise StoreError(
                f"{exc}; collection cannot start without the store: the spool {spool.path} "
                f"does not know where the chains of {', '.join(unknown)} end (it knows those "
                f"of the devices of runs that started with the store). Start again when the "
                f"store answers."
            ) from exc
        return str(exc)
    return None


def _signature(plans_dir: Path, plan: Mapping[str, Any]) -> str | None:
    path = plans_dir / signature_name(str(plan["device"]["id"]))
    try:
        return path.read_text("utf-8")
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise StoreError(f"cannot read {path}: {exc.strerror}") from exc


__all__ = [
    "Deferred",
    "EvidenceConfig",
    "EvidenceSink",
    "EvidenceTarget",
    "actor",
    "check_signers",
    "open_evidence",
]
