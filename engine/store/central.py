"""The central store: the reads and writes ingesters make beside storing batches.

:class:`CentralStore` is the one PostgreSQL store every ingester of a centre
writes to (docs/scale-out.md). Every write is one transaction under the
store's advisory lock, as any store's, so the central audit log stays one
sequence however many ingesters there are. This module holds the SQL; what
is refused and why is :mod:`engine.central`'s to decide.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from sqlalchemy import Connection, insert, select, update

from engine import audit
from engine.keys import KeyVersion
from engine.plans.body import PlanBody
from engine.plans.format import read_plan
from engine.sign.batch import ZERO_ROOT
from engine.sign.leaf import instant
from engine.store import auditlog
from engine.store.store import Store, key_payload
from engine.store.tables import (
    BATCHES,
    PLANS,
    QUARANTINE,
    SITE_DEVICES,
    WITNESSED,
)


@dataclass(frozen=True)
class Refused:
    """A message the centre refuses: where it came from, what it was, why, and whether its bytes
    are kept (not when it is larger than an ingester accepts)."""

    site: str
    topic: str
    kind: str
    reason: str
    payload: bytes
    device: str | None = None
    root: bytes | None = None
    keep: bool = True

    def entry(self, row_id: int) -> dict[str, Any]:
        """The payload of its ``message.quarantined`` entry."""
        said: dict[str, Any] = {
            "quarantine": row_id,
            "site": self.site,
            "topic": self.topic,
            "kind": self.kind,
            "reason": self.reason,
            "size": len(self.payload),
            "sha256": hashlib.sha256(self.payload).hexdigest(),
        }
        if self.device is not None:
            said["device"] = self.device
        if self.root is not None:
            said["root"] = self.root.hex()
        return said


class Place(StrEnum):
    """Where a batch stands against its device's stored chain."""

    STORED = "stored"  # this very batch is stored already
    NEXT = "next"  # it continues the chain (or starts it)
    FORK = "fork"  # another batch follows its predecessor, or it starts a second chain
    WAITING = "waiting"  # its predecessor is not stored (yet)
    AFTER_QUARANTINED = "after-quarantined"  # its predecessor was quarantined


@dataclass(frozen=True)
class Witnessed:
    """The newest checkpoint the centre cosigned of one site log."""

    origin: str
    site: str
    size: int
    root: bytes


class CentralStore(Store):
    """A store that ingesters write the sites' batches, plans and keys to; see the module."""

    plans: dict[str, PlanBody]
    sites: dict[str, str]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.plans, self.sites = {}, {}

    # --- quarantine ------------------------------------------------------------------------

    def quarantine(self, refused: Refused) -> int:
        """Keep a refused message with its ``message.quarantined`` entry; the row's id."""
        with self.transaction() as conn:
            return self.quarantine_in(conn, refused)

    def quarantine_in(self, conn: Connection, refused: Refused) -> int:
        """As :meth:`quarantine`, in ``conn``'s transaction. The same bytes refused again (a
        site sends a message until it is answered) are kept once."""
        digest = hashlib.sha256(refused.payload).hexdigest()
        same = select(QUARANTINE.c.id).where(
            QUARANTINE.c.site == refused.site, QUARANTINE.c.sha256 == digest
        )
        found = conn.execute(same.limit(1)).scalar()
        if found is not None:
            return int(found)
        now = audit.now_instant()
        row_id = conn.execute(
            insert(QUARANTINE)
            .values(
                received_at=now,
                site=refused.site,
                topic=refused.topic,
                kind=refused.kind,
                reason=refused.reason,
                size=len(refused.payload),
                sha256=digest,
                device=refused.device,
                root=refused.root,
                message=refused.payload if refused.keep else None,
                audit_seq=-1,
            )
            .returning(QUARANTINE.c.id)
        ).scalar_one()
        seq = auditlog.append(conn, "message.quarantined", self.actor, refused.entry(row_id), now)
        conn.execute(update(QUARANTINE).where(QUARANTINE.c.id == row_id).values(audit_seq=seq))
        return int(row_id)

    # --- chains ----------------------------------------------------------------------------

    def place(self, conn: Connection, device: str, previous: bytes, root: bytes) -> Place:
        """Where a batch of ``device`` with ``previous`` and ``root`` stands (in the lock).

        One query reads the batches that decide it: this one, its predecessor, and any
        other that follows its predecessor (a device's first batch: any batch of it).
        """
        mine = select(BATCHES.c.root, BATCHES.c.previous_root).where(BATCHES.c.device == device)
        near = (
            mine.limit(2)
            if previous == ZERO_ROOT
            else mine.where(
                (BATCHES.c.root == root)
                | (BATCHES.c.root == previous)
                | (BATCHES.c.previous_root == previous)
            )
        )
        rows = [(bytes(r.root), bytes(r.previous_root)) for r in conn.execute(near)]
        if any(stored == root for stored, _ in rows):
            return Place.STORED
        if previous == ZERO_ROOT:
            return Place.FORK if rows else Place.NEXT
        if not any(stored == previous for stored, _ in rows):
            held = select(QUARANTINE.c.id).where(
                QUARANTINE.c.device == device, QUARANTINE.c.root == previous
            )
            found = conn.execute(held.limit(1)).first()
            return Place.WAITING if found is None else Place.AFTER_QUARANTINED
        taken = any(before == previous for _, before in rows)
        return Place.FORK if taken else Place.NEXT

    # --- sites, plans and keys -------------------------------------------------------------

    def device_site(self, conn: Connection, device: str) -> str | None:
        """The site that sends ``device``'s batches, if one does (kept once read: a device's
        site never changes)."""
        if device in self.sites:
            return self.sites[device]
        found = conn.execute(
            select(SITE_DEVICES.c.site).where(SITE_DEVICES.c.device == device)
        ).scalar()
        if found is None:
            return None
        self.sites[device] = str(found)
        return str(found)

    def plan_in(self, conn: Connection, digest: str) -> PlanBody | None:
        """The deployed plan of ``digest`` (kept once read: a digest names one plan for ever)."""
        if digest in self.plans:
            return self.plans[digest]
        found = conn.execute(select(PLANS.c.body).where(PLANS.c.digest == digest)).scalar()
        if found is None:
            return None
        self.plans[digest] = plan = read_plan(bytes(found), f"plan {digest}")
        return plan

    def deploy_site_plan(
        self, plan: PlanBody, signature: str | None, site: str, seal: audit.Seal
    ) -> str | None:
        """Deploy a site's plan, its device bound to the site, with a checkpoint after it (a
        ``plan.deployed`` entry is never an unsigned tail of the log). ``None`` once deployed
        (now or before); the device's site when it is another site's device."""
        note_text = None
        with self.transaction() as conn:
            at = audit.now_instant()
            owner = self.device_site(conn, plan.device.id)
            if owner is not None and owner != site:
                return owner
            if owner is None:
                conn.execute(
                    insert(SITE_DEVICES).values(device=plan.device.id, site=site, since=at)
                )
            if self._deploy(conn, [(plan, signature)], at):
                note_text = auditlog.checkpoint(conn, seal)
        self._witness(note_text)
        return None

    def log_site_keys(self, site: str, versions: Iterable[KeyVersion]) -> int:
        """A ``key.generated`` or ``key.rotated`` entry (naming the site) for each of a site's
        key versions the central log lacks; how many were new."""
        with self.transaction() as conn:
            logged = {
                (e.payload.get("site"), e.payload["name"], e.payload["version"])
                for e in auditlog.entries(conn, ["key.generated", "key.rotated"])
            }
            new = [v for v in versions if (site, v.name, v.version) not in logged]
            for v in sorted(new, key=lambda v: (v.created_at, v.name, v.version)):
                kind = "key.generated" if v.version == 1 else "key.rotated"
                payload = {**key_payload(v), "site": site}
                auditlog.append(conn, kind, self.actor, payload, instant(v.created_at))
        return len(new)

    # --- witnessing ------------------------------------------------------------------------

    def witnessed(self, conn: Connection, origin: str) -> Witnessed | None:
        row = conn.execute(select(WITNESSED).where(WITNESSED.c.origin == origin)).first()
        if row is None:
            return None
        return Witnessed(row.origin, row.site, int(row.size), bytes(row.root))

    def set_witnessed(
        self, conn: Connection, seen: Witnessed, note_text: str, timestamp: int
    ) -> None:
        """Record ``seen`` as the newest cosigned checkpoint of its log, with a
        ``checkpoint.cosigned`` entry."""
        at = audit.now_instant()
        values = {"site": seen.site, "size": seen.size, "root": seen.root, "note": note_text,
                  "cosigned_at": at}  # fmt: skip
        if self.witnessed(conn, seen.origin) is None:
            conn.execute(insert(WITNESSED).values(origin=seen.origin, **values))
        else:
            conn.execute(update(WITNESSED).where(WITNESSED.c.origin == seen.origin).values(values))
        said = {"site": seen.site, "origin": seen.origin, "size": seen.size,
                "root": seen.root.hex(), "timestamp": timestamp}  # fmt: skip
        auditlog.append(conn, "checkpoint.cosigned", self.actor, said, at)

    # --- the central log's checkpoints -----------------------------------------------------

    def checkpointed_size(self) -> int:
        """The size of the log's newest checkpoint."""
        with self.reading() as conn:
            return self.checkpointed_size_in(conn)

    @staticmethod
    def checkpointed_size_in(conn: Connection) -> int:
        return auditlog.last_checkpoint_size(conn)


__all__ = ["CentralStore", "Place", "Refused", "Witnessed"]
