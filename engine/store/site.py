"""A site collector's store when it sends its batches to the centre (docs/scale-out.md).

:class:`SiteStore` is the :class:`~engine.store.store.Store` a publishing run
(``converge run --publish``) writes to, through the same writer, spool and
deferred start and stop as any run. Each sealed batch is recorded in the
site's own audit log and put in the **outbox**, in one transaction:

- with ``keep_records`` (the run names a store, ``--db``) the batch and its
  records are stored as any run stores them, with their ``batch.stored`` entry;
- without (``--log``), the store holds the site's log only: plans, key
  versions, runs, checkpoints and one ``batch.sealed`` entry per batch, whose
  records are kept at the centre.

The outbox is the site's durable queue to the centre. A row leaves it only
when the centre answers that it committed the batch (or quarantined it): the
publisher (:mod:`engine.central.publisher`) reads it here, and stores here the
cosignatures the centre returns for the log's checkpoints.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, Engine, delete, func, insert, select
from sqlalchemy.exc import IntegrityError

from engine.audit import DEFAULT_AUDIT_KEY, Actor
from engine.sign.leaf import instant
from engine.sign.merkle import leaf_hash
from engine.store import auditlog
from engine.store.database import connect
from engine.store.sealed import SealedBatch
from engine.store.store import Head, Store
from engine.store.tables import AUDIT, CHECKPOINTS, COSIGNATURES, OUTBOX, PLANS
from engine.store.wire import BatchMessage


@dataclass(frozen=True)
class Publishing:
    """Who a site collector is to the centre, and whether it keeps records itself."""

    site: str
    collector: str
    keep_records: bool


@dataclass(frozen=True)
class Pending:
    """An outbox row, without its message: what the publisher orders and matches by."""

    id: int
    device: str
    root: bytes
    previous_root: bytes
    plan_digest: str


class SiteStore(Store):
    """The store of a site collector that publishes; see the module docstring."""

    def __init__(
        self,
        engine: Engine,
        actor: Actor,
        witness: Path | None,
        audit_key: str,
        publishing: Publishing,
    ) -> None:
        super().__init__(engine, actor, witness, audit_key)
        self.publishing = publishing

    @classmethod
    def attach_site(
        cls,
        target: str,
        actor: Actor,
        publishing: Publishing,
        witness: Path | None = None,
        audit_key: str = DEFAULT_AUDIT_KEY,
    ) -> SiteStore:
        """The site store at ``target``, not reached yet (:meth:`prepare` it)."""
        return cls(connect(target), actor, witness, audit_key, publishing)

    # --- what the writer calls -------------------------------------------------------------

    def write(self, sealed: SealedBatch, at: datetime | None = None) -> bool:
        """Record the batch (and with ``keep_records`` store it) and queue it for the centre,
        in one transaction; ``False`` when it was recorded before."""
        try:
            with self.transaction() as conn:
                seq = self._record(conn, sealed, at or datetime.now(UTC))
                if seq is None:
                    return False
                self._queue(conn, sealed, seq)
        except IntegrityError:
            return False
        return True

    def _record(self, conn: Connection, sealed: SealedBatch, at: datetime) -> int | None:
        if self.publishing.keep_records:
            return self.write_in(conn, sealed, at)
        head = sealed.head
        queued = select(OUTBOX.c.id).where(OUTBOX.c.device == head.device)
        if conn.execute(queued.where(OUTBOX.c.root == head.root)).first() is not None:
            return None
        return auditlog.append(
            conn, "batch.sealed", self.actor, sealed.audit_payload(), instant(at)
        )

    def _queue(self, conn: Connection, sealed: SealedBatch, seq: int) -> None:
        entry = conn.execute(select(AUDIT.c.entry).where(AUDIT.c.seq == seq)).scalar_one()
        origin = auditlog.origin(conn) or ""
        site = self.publishing
        message = BatchMessage(site.site, site.collector, origin, bytes(entry), sealed)
        head = sealed.head
        conn.execute(
            insert(OUTBOX).values(
                device=head.device,
                root=head.root,
                previous_root=head.previous_root,
                plan_digest=head.plan_digest,
                audit_seq=seq,
                message=message.to_bytes(),
                queued_at=instant(datetime.now(UTC)),
            )
        )

    def heads(self) -> dict[str, Head]:
        """Each device's newest batch: the stored one's, or without records the newest
        ``batch.sealed`` entry's."""
        if self.publishing.keep_records:
            return super().heads()
        return {
            device: Head(bytes.fromhex(p["root"]), p["window_end"])
            for device, p in self._sealed().items()
        }

    def chain_end(self, device: str, root: bytes) -> Head | None:
        """As :meth:`Store.chain_end`, from the ``batch.sealed`` entries without records."""
        if self.publishing.keep_records:
            return super().chain_end(device, root)
        following: dict[bytes, dict[str, Any]] = {}
        with self.reading() as conn:
            for entry in auditlog.entries(conn, ["batch.sealed"]):
                if entry.payload.get("device") == device:
                    following[bytes.fromhex(entry.payload["previous_root"])] = entry.payload
        end: Head | None = None
        while (payload := following.pop(root, None)) is not None:
            root = bytes.fromhex(payload["root"])
            end = Head(root, payload["window_end"])
        return end

    def _sealed(self) -> dict[str, dict[str, Any]]:
        """The payload of each device's newest ``batch.sealed`` entry."""
        newest: dict[str, dict[str, Any]] = {}
        with self.reading() as conn:
            for entry in auditlog.entries(conn, ["batch.sealed"]):
                newest[str(entry.payload.get("device"))] = entry.payload
        return newest

    # --- what the publisher calls ------------------------------------------------------------

    def pending(self, after: int = 0) -> list[Pending]:
        """The outbox rows after row ``after``, oldest first."""
        columns = (OUTBOX.c.id, OUTBOX.c.device, OUTBOX.c.root, OUTBOX.c.previous_root)
        query = select(*columns, OUTBOX.c.plan_digest).where(OUTBOX.c.id > after)
        with self.reading() as conn:
            rows = conn.execute(query.order_by(OUTBOX.c.id)).all()
        return [Pending(r.id, r.device, bytes(r.root), bytes(r.previous_root), r.plan_digest)
                for r in rows]  # fmt: skip

    def message(self, row_id: int) -> bytes | None:
        """The message of outbox row ``row_id``, if it is still there."""
        with self.reading() as conn:
            found = conn.execute(select(OUTBOX.c.message).where(OUTBOX.c.id == row_id)).scalar()
        return None if found is None else bytes(found)

    def settle(self, device: str, root: bytes) -> int:
        """Take the batch out of the outbox: the centre committed (or quarantined) it."""
        with self.transaction() as conn:
            done = conn.execute(
                delete(OUTBOX).where(OUTBOX.c.device == device, OUTBOX.c.root == root)
            )
        return int(done.rowcount or 0)

    def outbox_size(self) -> int:
        with self.reading() as conn:
            return int(conn.execute(select(func.count()).select_from(OUTBOX)).scalar_one())

    def plan(self, digest: str) -> tuple[bytes, str | None] | None:
        """A deployed plan's bytes and signed note, by digest."""
        query = select(PLANS.c.body, PLANS.c.signature).where(PLANS.c.digest == digest)
        with self.reading() as conn:
            row = conn.execute(query).first()
        return None if row is None else (bytes(row.body), row.signature)

    def newest_checkpoint(self) -> tuple[int, str] | None:
        """The size and signed note of the log's newest checkpoint."""
        query = select(CHECKPOINTS.c.size, CHECKPOINTS.c.note).order_by(CHECKPOINTS.c.size.desc())
        with self.reading() as conn:
            row = conn.execute(query.limit(1)).first()
        return None if row is None else (int(row.size), str(row.note))

    def checkpoint_note(self, size: int) -> str | None:
        """The signed note of the log's checkpoint of ``size`` entries, if there is one."""
        query = select(CHECKPOINTS.c.note).where(CHECKPOINTS.c.size == size).limit(1)
        with self.reading() as conn:
            found = conn.execute(query).scalar()
        return None if found is None else str(found)

    def leaf_hashes(self, start: int, end: int) -> list[bytes]:
        """The leaf hashes of the log's entries ``start`` to ``end - 1`` (for consistency
        proofs)."""
        query = select(AUDIT.c.entry).where(AUDIT.c.seq >= start, AUDIT.c.seq < end)
        with self.reading() as conn:
            return [
                leaf_hash(bytes(entry)) for (entry,) in conn.execute(query.order_by(AUDIT.c.seq))
            ]

    def cosigned_size(self) -> int:
        """The size of the newest checkpoint the centre cosigned (0 before the first)."""
        with self.reading() as conn:
            found = conn.execute(select(func.max(COSIGNATURES.c.size))).scalar()
        return int(found or 0)

    def add_cosignature(self, size: int, cosigner: str, timestamp: int, note: str) -> None:
        """Keep a checkpoint as the centre cosigned it."""
        with self.transaction() as conn:
            conn.execute(
                insert(COSIGNATURES).values(
                    size=size,
                    cosigner=cosigner,
                    timestamp=timestamp,
                    note=note,
                    received_at=instant(datetime.now(UTC)),
                )
            )


__all__ = ["Pending", "Publishing", "SiteStore"]
