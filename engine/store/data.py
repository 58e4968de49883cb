"""The reads behind access to the data: which plans were in force, and a device's records.

The guard (:mod:`engine.access`) decides on the plans these name; the records
come back in batch order with their batch, straight from the driver. Times
are instants (:func:`engine.sign.leaf.instant` text), which sort as they
compare, so ranges are string comparisons the indexes serve.
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from functools import lru_cache
from operator import itemgetter
from typing import Any

from sqlalchemy import Connection, Select, select

from engine.audit import AuditEntry
from engine.canonical import canonical_json
from engine.errors import PlanRejected, StoreError
from engine.plans.body import PlanBody
from engine.plans.format import read_plan
from engine.store.reads import as_bytes
from engine.store.tables import AUDIT, BATCHES, CHECKPOINTS, PLANS, SIGNATURES


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
    point_map: bytes | None
    """Its point map (docs/records.md), as stored: None in a batch stored before statements
    signed one."""


def devices(conn: Connection) -> list[str]:
    """Every device a plan was deployed for, sorted."""
    return sorted(str(d) for d in conn.execute(select(PLANS.c.device).distinct()).scalars())


def plan(conn: Connection, digest: str) -> PlanBody | None:
    """The stored plan of ``digest``, parsed; ``None`` when none is stored or it does not parse
    (``audit verify`` names it)."""
    found = _driver_rows(conn, "SELECT body FROM plans WHERE digest = ?", (digest,))
    return _parsed(digest, as_bytes(found[0][0])) if found else None


@lru_cache(maxsize=256)
def _parsed(digest: str, body: bytes) -> PlanBody | None:
    """A plan's bytes parsed, once per process: every request the guard decides needs the
    plans in force, and parsing a plan (its digest checked) costs far more than reading it.
    The bytes are the key, so a plan changed in the store is parsed (and checked) anew.
    ``None`` also for the bytes of another plan than ``digest`` (the one batches name): a row
    whose body was swapped for another signed plan's grants nothing."""
    try:
        parsed = read_plan(body, "plan")
    except PlanRejected:
        return None
    return parsed if parsed.digest == digest else None


def latest_plan(conn: Connection, device: str, at: str | None = None) -> PlanBody | None:
    """The plan of ``device`` deployed last (at or before ``at``, when given), as the audit log
    says (:func:`deployed_last`); ``None`` when none was, or its plan is not stored as its
    entry says (missing, changed, or another device's)."""
    found = deployed_last(conn, device, at)
    return None if found is None else found[1]


def deployed_last(
    conn: Connection, device: str, at: str | None = None
) -> tuple[str, PlanBody | None] | None:
    """The digest the newest ``plan.deployed`` entry for ``device`` names (dated at or before
    ``at``, when given), with its stored plan parsed: ``None`` for the plan when none is
    stored under the digest, its bytes are not that plan's, or the plan's own ``device.id``
    is another device. ``None`` when no entry names the device.

    The log decides, not the ``plans`` table: a plan row no entry names (its
    ``deployed_at`` however late) never decides, and a newer entry whose plan does not
    verify is not passed over for an older plan (docs/access.md, "The guard"). The
    entries are found on the index on their kind, narrowed by the device's canonical
    name where an entry's payload starts (its members sort ``device``, ``digest``), and
    each is parsed before it is believed; the newest is nearly always the one, so it is
    read alone first.
    """
    needle = b'"payload":{"device":' + canonical_json(device) + b',"digest":'
    found_in = "position(? in entry)" if conn.dialect.name == "postgresql" else "instr(entry, ?)"
    newest_first = (
        f"SELECT entry FROM audit_entries WHERE kind = 'plan.deployed' AND {found_in} > 0"
        " ORDER BY seq DESC"
    )
    digest = _first_deployed(_driver_rows(conn, f"{newest_first} LIMIT 1", (needle,)), device, at)
    if digest is None:
        digest = _first_deployed(_driver_rows(conn, newest_first, (needle,)), device, at)
    return None if digest is None else (digest, _of_device(plan(conn, digest), device))


def _first_deployed(rows: list[tuple[Any, ...]], device: str, at: str | None) -> str | None:
    """The digest the first of ``rows`` (an entry each) that is a deployment names."""
    return next((d for (raw,) in rows if (d := _deployed(raw, device, at)) is not None), None)


def _deployed(raw: object, device: str, at: str | None) -> str | None:
    """The digest a stored ``plan.deployed`` entry for ``device`` (dated at or before ``at``)
    names; ``None`` when it is not one (not canonical, another kind or device, later)."""
    try:
        entry = AuditEntry.parse(as_bytes(raw))
    except ValueError:
        return None
    payload, time = entry.payload, entry.time
    if entry.kind != "plan.deployed" or not isinstance(payload, dict):
        return None
    digest = payload.get("digest")
    if payload.get("device") != device or not isinstance(digest, str):
        return None
    if at is not None and not (isinstance(time, str) and time <= at):
        return None
    return digest


def _of_device(found: PlanBody | None, device: str) -> PlanBody | None:
    return found if found is not None and found.device.id == device else None


def plans_named(
    conn: Connection, device: str, start: str | None, end: str | None
) -> list[tuple[str, PlanBody | None]]:
    """Each plan digest the batches of ``device`` whose window meets ``[start, end)`` name, in
    digest order, with its stored plan parsed (``None`` when none is stored under it, or its
    bytes do not parse or are another plan's): one round trip, the plans' bytes in it.

    The device's distinct plan digests are walked on the index on (device, plan digest,
    window end), one step per digest, and each is kept when a batch naming it meets the
    range (one probe of that index, a scalar subquery with ``LIMIT 1``: as ``EXISTS``,
    PostgreSQL's planner may join it with every batch of the range when the table has no
    statistics yet): the cost grows with the device's plans, a few, not with its batches in
    the range. The guard asks this on every request, so it goes to the driver directly:
    building the statement through SQLAlchemy cost more than running it.
    """
    meets, values = "", [device, device, device]
    if start is not None:
        meets, values = meets + " AND window_end > ?", [*values, start]
    if end is not None:
        meets, values = meets + " AND window_start < ?", [*values, end]
    sql = (
        "WITH RECURSIVE named(digest) AS ("
        " SELECT (SELECT plan_digest FROM batches WHERE device = ?"
        " ORDER BY plan_digest LIMIT 1)"
        " UNION ALL"
        " SELECT (SELECT plan_digest FROM batches WHERE device = ? AND plan_digest > named.digest"
        " ORDER BY plan_digest LIMIT 1) FROM named WHERE named.digest IS NOT NULL)"
        " SELECT named.digest, plans.body FROM named LEFT JOIN plans ON plans.digest = named.digest"
        " WHERE named.digest IS NOT NULL AND (SELECT 1 FROM batches WHERE device = ?"
        f" AND plan_digest = named.digest{meets} LIMIT 1) IS NOT NULL ORDER BY named.digest"
    )
    rows = _driver_rows(conn, sql, tuple(values))
    return [(d, None if body is None else _parsed(d, as_bytes(body))) for d, body in rows]


def _driver_rows(conn: Connection, sql: str, values: tuple[Any, ...]) -> list[tuple[Any, ...]]:
    """The rows of ``sql`` (``?`` marking each value) from the driver of ``conn`` itself."""
    postgres = conn.dialect.name == "postgresql"
    cursor: Any = conn.connection.driver_connection.cursor()  # type: ignore[union-attr]
    try:
        cursor.execute(sql.replace("?", "%s") if postgres else sql, values)
        return [tuple(row) for row in cursor.fetchall()]
    finally:
        cursor.close()


def batches(conn: Connection, device: str, start: str | None, end: str | None) -> list[StoredBatch]:
    """The batches of ``device`` whose window meets ``[start, end)``, in window order."""
    query = _meeting(_BATCH.where(BATCHES.c.device == device), start, end)
    return _stored(conn, query.order_by(BATCHES.c.window_start, BATCHES.c.id))


def batch(conn: Connection, batch_id: int) -> StoredBatch | None:
    """The batch ``batch_id``, if one is stored."""
    found = _stored(conn, _BATCH.where(BATCHES.c.id == batch_id))
    return found[0] if found else None


def batch_of_entry(conn: Connection, seq: int) -> StoredBatch | None:
    """The batch whose row names audit entry ``seq`` as its ``batch.stored`` entry, if any."""
    found = _stored(conn, _BATCH.where(BATCHES.c.audit_seq == seq).order_by(BATCHES.c.id))
    return found[0] if found else None


_BATCH = select(BATCHES, AUDIT.c.time).outerjoin(AUDIT, AUDIT.c.seq == BATCHES.c.audit_seq)


def _stored(conn: Connection, query: Select[Any]) -> list[StoredBatch]:
    rows = conn.execute(query).all()
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
            None if r.point_map is None else as_bytes(r.point_map),
        )
        for r in rows
    ]


def _meeting(query: Select[Any], start: str | None, end: str | None) -> Select[Any]:
    """``query`` limited to the batches whose window meets ``[start, end)``."""
    if start is not None:
        query = query.where(BATCHES.c.window_end > start)
    if end is not None:
        query = query.where(BATCHES.c.window_start < end)
    return query


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
    merged, in position order, from the driver (no ORM row per record; each table read in the
    order of its (batch, position) index, merged only when both hold some)."""
    driver: Any = conn.connection.driver_connection
    marker = "%s" if conn.dialect.name == "postgresql" else "?"
    rows: list[tuple[int, Any]] = []
    for table in ("readings", "gap_records"):
        cursor = driver.cursor()
        try:
            cursor.execute(
                f"SELECT position, leaf FROM {table} WHERE batch_id = {marker} ORDER BY position",
                (batch_id,),
            )
            found = cursor.fetchall()
        finally:
            cursor.close()
        rows = sorted(rows + found) if rows and found else rows or found
    leaves = list(map(itemgetter(1), rows))
    if set(map(type, leaves)) - {bytes}:
        leaves = [as_bytes(leaf) for leaf in leaves]
    return list(map(itemgetter(0), rows)), leaves


def audit_entry(conn: Connection, seq: int) -> bytes | None:
    """The stored bytes of audit entry ``seq``, if there is one."""
    found = conn.execute(select(AUDIT.c.entry).where(AUDIT.c.seq == seq)).scalar()
    return None if found is None else as_bytes(found)


def audit_entries(conn: Connection, start: int, end: int) -> Iterator[bytes]:
    """The stored bytes of audit entries ``start .. end - 1``, in sequence order, streamed."""
    query = select(AUDIT.c.entry).where(AUDIT.c.seq >= start, AUDIT.c.seq < end)
    for entry in conn.execute(query.order_by(AUDIT.c.seq).execution_options(yield_per=10_000)):
        yield as_bytes(entry[0])


def latest_checkpoint(conn: Connection) -> tuple[int, str] | None:
    """(size, signed note) of the audit log's checkpoint of the largest size, if any."""
    query = select(CHECKPOINTS.c.size, CHECKPOINTS.c.note).order_by(CHECKPOINTS.c.size.desc())
    found = conn.execute(query.limit(1)).first()
    return None if found is None else (int(found.size), str(found.note))


def leaves(conn: Connection, batch_id: int) -> list[tuple[int, bytes]]:
    """(position, leaf bytes) of every record of a batch, readings and gap records merged,
    in position order, from the driver (no ORM row per record)."""
    positions, got = records_of(conn, [batch_id]).get(batch_id, ((), ()))
    return list(zip(positions, got, strict=True))


Records = tuple[Sequence[int], Sequence[bytes]]
"""A batch's records as two columns: their positions, ascending, and the leaf at each."""


def records_of(conn: Connection, ids: Sequence[int]) -> dict[int, Records]:
    """The records of the batches ``ids`` (those that hold any), by batch, readings and gap
    records merged in position order: one query per record table for all of them, straight
    from the driver. The rows become columns (batch id, position, leaf; one batch's need no
    batch id) and are cut where their batch id changes (``bisect``), so no Python code runs
    per record, only per batch."""
    return driver_records(conn.connection.driver_connection, conn.dialect.name == "postgresql", ids)


def driver_records(driver: Any, postgres: bool, ids: Sequence[int]) -> dict[int, Records]:
    """:func:`records_of` on a DB-API connection of the store's driver (a worker process's
    own, :func:`engine.store.reads.open_driver`)."""
    marks = ",".join(["%s" if postgres else "?"] * len(ids))
    # one batch's records need no batch id each: a fifth less to fetch
    named = "" if len(ids) == 1 else "batch_id, "
    found: dict[int, Records] = {}
    for table in ("readings", "gap_records"):
        # PostgreSQL sends bytea as hex text unless asked for binary: twice the bytes to send,
        # and to decode
        cursor = driver.cursor(binary=True) if postgres else driver.cursor()
        try:
            cursor.execute(
                f"SELECT {named}position, leaf FROM {table} WHERE batch_id IN ({marks})"
                f" ORDER BY {named}position",
                tuple(ids),
            )
            rows = cursor.fetchall()
        finally:
            cursor.close()
        columns = [list(map(column, rows)) for column in _COLUMNS[: 3 if named else 2]]
        batch_ids = columns.pop(0) if named else [ids[0]] * len(rows)
        positions, got = columns
        if set(map(type, got)) - {bytes}:
            if set(map(type, got)) - {bytes, memoryview, str}:  # a number an SQL edit wrote
                raise StoreError(
                    f"{table} of batches {', '.join(map(str, ids))}: a leaf that is not bytes:"
                    " the store was changed outside Converge (converge audit verify names it)"
                )
            got = list(map(as_bytes, got))
        if set(map(type, positions)) - {int}:  # SQLite keeps text an SQL edit writes
            raise StoreError(
                f"{table} of batches {', '.join(map(str, ids))}: a position that is not an"
                " integer: the store was changed outside Converge (converge audit verify names it)"
            )
        start = 0
        while start < len(batch_ids):
            batch_id = batch_ids[start]
            end = bisect_right(batch_ids, batch_id, start)
            cut = positions[start:end], got[start:end]
            held = found.get(batch_id)
            found[batch_id] = cut if held is None else _merged(held, cut)
            start = end
    return found


def _merged(one: Records, other: Records) -> Records:
    """The records of both, in position order (a batch's readings and its gap records)."""
    positions, got = zip(*sorted([*zip(*one, strict=True), *zip(*other, strict=True)]), strict=True)
    return positions, got


_COLUMNS = (itemgetter(0), itemgetter(1), itemgetter(2))
