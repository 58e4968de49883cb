"""The audit log in the store: entries appended in the writer's transaction, checkpoints signed.

The log's compact state (size and the roots of its perfect subtrees) is read
and written in the transaction that appends, never kept in memory, so an
entry and what it records commit together or not at all. The format of what
is stored is :mod:`engine.audit`'s.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, func, insert, select, update

from engine.audit import (
    ORIGIN_KEY,
    STATE_KEY,
    TAIL_KINDS,
    Actor,
    AuditEntry,
    CheckpointSigner,
    new_origin,
    now_instant,
    origin_key,
    saved_state,
    signed_time,
    time_line,
)
from engine.errors import CheckpointRefused, StoreError, VerificationError
from engine.sign.merkle import MerkleLog
from engine.sign.note import Checkpoint, split_note
from engine.store.tables import AUDIT, CHECKPOINTS, META


def origin(conn: Connection) -> str | None:
    """The log's origin line, if the log has been made."""
    found = conn.execute(select(META.c.value).where(META.c.key == ORIGIN_KEY)).scalar()
    return None if found is None else str(found)


def make(conn: Connection, audit_key: str, actor: Actor) -> str:
    """The log's origin, made with its first entry (``log.created``) when the store is new.

    A store whose log is signed by another key than ``audit_key`` is refused:
    one log has one key (docs/audit.md).
    """
    found = origin(conn)
    if found is not None:
        named = origin_key(found)
        if named is not None and named != audit_key:
            raise StoreError(
                f"the audit log of this store is signed by the key {named} (its origin"
                f" {found} names it), not {audit_key}: use --audit-key {named}"
            )
        return found
    made = new_origin(audit_key)
    conn.execute(insert(META).values(key=ORIGIN_KEY, value=made))
    if size(conn) == 0:
        append(conn, "log.created", actor, {"origin": made, "audit_key": audit_key})
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
    conn: Connection, kind: str, actor: Actor, payload: dict[str, Any], at: str | None = None
) -> int:
    """Append one entry in ``conn``'s transaction; returns its sequence number.

    The caller holds the store's write lock (every write transaction does).
    """
    log = _state(conn)
    first = log.size == 0
    entry = AuditEntry(log.size, at or now_instant(), kind, actor.as_json(), payload)
    data = entry.to_bytes()
    log.append(data)
    conn.execute(insert(AUDIT).values(seq=entry.seq, time=entry.time, kind=kind, entry=data))
    _save_state(conn, log, first)
    return entry.seq


def size(conn: Connection) -> int:
    return _state(conn).size


def last_checkpoint_size(conn: Connection) -> int:
    return int(conn.execute(select(func.coalesce(func.max(CHECKPOINTS.c.size), 0))).scalar_one())


def checkpoint(
    conn: Connection, sign: CheckpointSigner, at: datetime, since: int | None = None
) -> str | None:
    """Sign and store a checkpoint of the log as it stands, saying it was signed ``at`` (whole
    seconds; ``sign`` uses a key version valid then); ``None`` when nothing is new.

    ``since`` is the log's size before this transaction appended its own entries (``None``:
    it appended none). Once a checkpoint exists, the entries before ``since`` that none signs
    yet (the unsigned tail ``audit verify`` judges) must all be of
    :data:`~engine.audit.TAIL_KINDS`: any other kind is signed where it is written, so one
    waiting there was written by someone without the key, and signing it would make a forgery
    (a hold released, a receipt) look like the signer's own. Raises CheckpointRefused naming
    it. The caller appends the note to the witness file once this transaction has
    committed (:func:`witness_append`), never before.
    """
    log = _state(conn)
    made = origin(conn)
    if made is None:
        raise StoreError("the store's audit log has no origin: prepare the store first")
    newest = conn.execute(
        select(CHECKPOINTS.c.size, CHECKPOINTS.c.note).order_by(CHECKPOINTS.c.size.desc()).limit(1)
    ).first()
    signed = 0 if newest is None else int(newest.size)
    if log.size in (0, signed):
        return None
    end = log.size if since is None else since
    if signed and signed < end:  # before the first checkpoint nothing is signed: no tail
        _refuse_forged(conn, signed, end)
    last = None if newest is None else _signed_at(str(newest.note))
    at = max(at, last or at)
    note = sign(Checkpoint(made, log.size, log.root(), (time_line(at),)))
    conn.execute(insert(CHECKPOINTS).values(size=log.size, note=note, created_at=now_instant()))
    return note


def _refuse_forged(conn: Connection, first: int, end: int) -> None:
    """Raise CheckpointRefused unless entries ``first``..``end - 1`` are all stored, parse,
    and are of a kind that may wait for a checkpoint (see :func:`checkpoint`)."""
    query = select(AUDIT.c.entry).where(AUDIT.c.seq >= first, AUDIT.c.seq < end)
    seen = first
    for (data,) in conn.execute(query.order_by(AUDIT.c.seq)):
        try:
            entry = AuditEntry.parse(bytes(data))
        except ValueError as exc:
            raise CheckpointRefused(f"audit entry {seen} does not parse ({exc})") from exc
        if entry.seq != seen:
            raise CheckpointRefused(f"audit entry {seen} is missing from the log's tail")
        if not isinstance(entry.kind, str) or entry.kind not in TAIL_KINDS:
            raise CheckpointRefused(
                f"audit entry {entry.seq} ({entry.kind}) waits unsigned after the last"
                f" checkpoint, but a {entry.kind} entry is signed in the transaction that writes"
                " it: no checkpoint signs it (written without the audit key? converge audit"
                " verify names it)"
            )
        seen += 1
    if seen < end:
        raise CheckpointRefused(f"audit entry {seen} is missing from the log's tail")


def _signed_at(newest: str) -> datetime | None:
    """When the newest checkpoint (its note) says it was signed.

    Two writers (a collector and a retention run, say) each choose their checkpoint's time
    before they wait for the write lock; the one that waited must not state a time before the
    checkpoint signed meanwhile, or the log would look back-dated (docs/audit.md), so its time
    is raised to that one's, never more than the second the time is rounded up by.
    """
    try:
        return signed_time(Checkpoint.from_text(split_note(newest)[0]))
    except VerificationError:
        return None


def entries(
    conn: Connection, kinds: list[str] | None = None, first: int = 0
) -> Iterator[AuditEntry]:
    """Every entry in sequence order (from entry ``first``), of ``kinds`` when given; a
    StoreError names the first that does not parse (``converge audit verify`` names them all)."""
    query = select(AUDIT.c.seq, AUDIT.c.entry).where(AUDIT.c.seq >= first).order_by(AUDIT.c.seq)
    if kinds:
        query = query.where(AUDIT.c.kind.in_(kinds))
    for seq, data in conn.execute(query):
        try:
            yield AuditEntry.parse(bytes(data))
        except ValueError as exc:
            raise StoreError(
                f"audit entry {seq} does not parse ({exc}): converge audit verify names it"
            ) from None
