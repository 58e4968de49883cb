"""The reads behind access to the data: which plans were in force, and a device's records.

The guard (:mod:`engine.access`) decides on the plans these name; the records
come back in batch order with their batch, straight from the driver. Times
are instants (:func:`engine.sign.leaf.instant` text), which sort as they
compare, so ranges are string comparisons the indexes serve.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, select

from engine.errors import PlanRejected
from engine.plans.body import PlanBody
from engine.plans.format import read_plan
from engine.store.reads import as_bytes
from engine.store.tables import AUDIT, BATCHES, PLANS, SIGNATURES


@dataclass(frozen=True)
class StoredBatch:
    """A batch row as data access needs it (its records are read apart)."""

    id: int
    device: str
    window_start: str
    window_end: str
    plan_digest: str
    statement: bytes
    count: int
    entry_time: str | None
    """The time its ``batch.stored`` entry records: when it was signed."""
    entry_seq: int
    """The sequence number of its ``batch.stored`` entry."""
    signatures: dict[str, bytes]


def devices(conn: Connection) -> list[str]:
    """Every device a plan was deployed for, sorted."""
    return sorted(str(d) for d in conn.execute(select(PLANS.c.device).distinct()).scalars())


def plan(conn: Connection, digest: str) -> PlanBody | None:
    """The stored plan of ``digest``, parsed; ``None`` when none is stored or it does not parse
    (``audit verify`` names it)."""
    body = conn.execute(select(PLANS.c.body).where(PLANS.c.digest == digest)).scalar()
    if body is None:
        return None
    try:
        return read_plan(as_bytes(body), f"plan {digest}")
    except PlanRejected:
        return None


def latest_plan(conn: Connection, device: str, at: str | None = None) -> PlanBody | None:
    """The plan of ``device`` deployed last (at or before ``at``, when given)."""
    query = select(PLANS.c.digest).where(PLANS.c.device == device)
    if at is not None:
        query = query.where(PLANS.c.deployed_at <= at)
    digest = conn.execute(query.order_by(PLANS.c.deployed_at.desc()).limit(1)).scalar()
    return None if digest is None else plan(conn, str(digest))


def batches(conn: Connection, device: str, start: str | None, end: str | None) -> list[StoredBatch]:
    """The batches of ``device`` whose window meets ``[start, end)``, in window order."""
    query = (
        select(BATCHES, AUDIT.c.time)
        .outerjoin(AUDIT, AUDIT.c.seq == BATCHES.c.audit_seq)
        .where(BATCHES.c.device == device)
    )
    if start is not None:
        query = query.where(BATCHES.c.window_end > start)
    if end is not None:
        query = query.where(BATCHES.c.window_start < end)
    rows = conn.execute(query.order_by(BATCHES.c.window_start, BATCHES.c.id)).all()
    signed = _signatures(conn, [r.id for r in rows])
    return [
        StoredBatch(
            r.id,
            r.device,
            r.window_start,
            r.window_end,
            r.plan_digest,
            as_bytes(r.statement),
            r._mapping["count"],
            r.time,
            r.audit_seq,
            signed.get(r.id, {}),
        )
        for r in rows
    ]


def _signatures(conn: Connection, ids: list[int]) -> dict[int, dict[str, bytes]]:
    found: dict[int, dict[str, bytes]] = {}
    for start in range(0, len(ids), 500):
        chunk = ids[start : start + 500]
        for batch_id, key, signature in conn.execute(
            select(SIGNATURES).where(SIGNATURES.c.batch_id.in_(chunk))
        ):
            found.setdefault(batch_id, {})[key] = bytes(signature)
    return found


def batch_records(conn: Connection, batch_id: int) -> tuple[list[int], list[bytes]]:
    """The positions and leaf bytes of every record of a batch, readings and gap records
    merged, in position order, from the driver (no ORM row per record)."""
    cursor: Any = conn.connection.driver_connection.cursor()  # type: ignore[union-attr]
    marker = "%s" if conn.dialect.name == "postgresql" else "?"
    cursor.execute(
        f"SELECT position, leaf FROM readings WHERE batch_id = {marker} UNION ALL "
        f"SELECT position, leaf FROM gap_records WHERE batch_id = {marker} ORDER BY 1",
        (batch_id, batch_id),
    )
    try:
        rows = cursor.fetchall()
    finally:
        cursor.close()
    leaves = [leaf if type(leaf) is bytes else as_bytes(leaf) for _, leaf in rows]
    return [position for position, _ in rows], leaves


def leaves(conn: Connection, batch_id: int) -> list[tuple[int, bytes]]:
    """(position, leaf bytes) of every record of a batch, in position order."""
    positions, blobs = batch_records(conn, batch_id)
    return list(zip(positions, blobs, strict=True))
