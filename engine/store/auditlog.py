"""The audit log in the store: entries appended in the writer's transaction, checkpoints signed.

The log's compact state (size and the roots of its perfect subtrees) is read
and written in the transaction that appends, never kept in memory, so an
entry and what it records commit together or not at all. The format of what
is stored is :mod:`engine.audit`'s.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from typing import Any

from sqlalchemy import Connection, func, insert, select, update

from engine.audit import (
    ORIGIN_KEY,
    STATE_KEY,
    AuditEntry,
    CheckpointSigner,
    now_instant,
    saved_state,
)
from engine.sign.merkle import MerkleLog
from engine.sign.note import Checkpoint
from engine.store.tables import AUDIT, CHECKPOINTS, META


def origin(conn: Connection) -> str:
    """The log's origin line, made once per store: ``converge/audit/<random uuid>``."""
    found = conn.execute(select(META.c.value).where(META.c.key == ORIGIN_KEY)).scalar()
    if found is not None:
        return str(found)
    made = f"converge/audit/{uuid.uuid4()}"
    conn.execute(insert(META).values(key=ORIGIN_KEY, value=made))
    return made


def _state(conn: Connection) -> MerkleLog:
    text = conn.execute(select(META.c.value).where(META.c.key == STATE_KEY)).scalar()
    if text is None:
        return MerkleLog()
    saved = json.loads(text)
    return MerkleLog.from_state(saved["size"], [bytes.fromhex(h) for h in saved["hashes"]])


def _save_state(conn: Connection, log: MerkleLog, first: bool) -> None:
    text = json.dumps(saved_state(log))
    if first:
        conn.execute(insert(META).values(key=STATE_KEY, value=text))
    else:
        conn.execute(update(META).where(META.c.key == STATE_KEY).values(value=text))


def append(
    conn: Connection, kind: str, actor: str, payload: dict[str, Any], at: str | None = None
) -> int:
    """Append one entry in ``conn``'s transaction; returns its sequence number.

    The caller holds the store's write lock (every write transaction does).
    """
    log = _state(conn)
    first = log.size == 0
    entry = AuditEntry(log.size, at or now_instant(), kind, actor, payload)
    data = entry.to_bytes()
    log.append(data)
    conn.execute(insert(AUDIT).values(seq=entry.seq, time=entry.time, kind=kind, entry=data))
    _save_state(conn, log, first)
    return entry.seq


def size(conn: Connection) -> int:
    return _state(conn).size


def last_checkpoint_size(conn: Connection) -> int:
    return int(conn.execute(select(func.coalesce(func.max(CHECKPOINTS.c.size), 0))).scalar_one())


def checkpoint(conn: Connection, sign: CheckpointSigner) -> str | None:
    """Sign and store a checkpoint of the log as it stands; ``None`` when nothing is new.

    The caller appends the note to the witness file once this transaction has
    committed (:func:`witness_append`), never before.
    """
    log = _state(conn)
    if log.size == 0 or log.size == last_checkpoint_size(conn):
        return None
    note = sign(Checkpoint(origin(conn), log.size, log.root()))
    conn.execute(insert(CHECKPOINTS).values(size=log.size, note=note, created_at=now_instant()))
    return note


def entries(conn: Connection, kinds: list[str] | None = None) -> Iterator[AuditEntry]:
    """Every entry in sequence order, of ``kinds`` when given."""
    query = select(AUDIT.c.entry).order_by(AUDIT.c.seq)
    if kinds:
        query = query.where(AUDIT.c.kind.in_(kinds))
    for (data,) in conn.execute(query):
        yield AuditEntry.parse(bytes(data))
