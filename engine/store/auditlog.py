"""The audit log in the store: entries appended in the writer's transaction, checkpoints signed.

The log's compact state (size and the roots of its perfect subtrees) is read
and written in the transaction that appends, never kept in memory, so an
entry and what it records commit together or not at all. The format of what
is stored is :mod:`engine.audit`'s.
"""

from __future__ import annotations

import json
from collections.abc import Collection, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Connection, func, insert, select, update

from engine.audit import (
    FUTURE_SLACK,
    ORIGIN_KEY,
    SIGNED_KINDS,
    SIGNED_STATE_KEY,
    STATE_KEY,
    TAIL_KINDS,
    Actor,
    AuditEntry,
    Seal,
    new_origin,
    now_instant,
    origin_key,
    saved_state,
    signed_time,
    time_line,
)
from engine.canonical import canonical_json
from engine.errors import CheckpointRefused, StoreError, VerificationError
from engine.sign.merkle import MerkleLog
from engine.sign.note import Checkpoint, open_checkpoint, verifier_key
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
    """The log's saved state (:data:`~engine.audit.STATE_KEY`), empty before its first entry:
    as this transaction last saved it, if it appended (:func:`append`), else as read."""
    kept = conn.info.get(_STATE)
    if kept is not None and kept[0] is conn.get_transaction():
        return MerkleLog.from_state(kept[1].size, kept[1].hashes)
    saved = _saved(conn, STATE_KEY)
    return MerkleLog() if saved is None else saved


def _saved(conn: Connection, key: str) -> MerkleLog | None:
    """The compact state kept in ``meta`` under ``key`` (as :func:`saved_state` writes it)."""
    text = conn.execute(select(META.c.value).where(META.c.key == key)).scalar()
    if text is None:
        return None
    saved = json.loads(text)
    return MerkleLog.from_state(saved["size"], [bytes.fromhex(h) for h in saved["hashes"]])


def _keep(conn: Connection, key: str, log: MerkleLog) -> None:
    """Keep ``log``'s compact state in ``meta`` under ``key``."""
    text = json.dumps(saved_state(log))
    if conn.execute(update(META).where(META.c.key == key).values(value=text)).rowcount == 0:
        conn.execute(insert(META).values(key=key, value=text))


def append(
    conn: Connection, kind: str, actor: Actor, payload: dict[str, Any], at: str | None = None
) -> int:
    """Append one entry in ``conn``'s transaction; returns its sequence number.

    The caller holds the store's write lock (every write transaction does).
    """
    log = _state(conn)
    entry = AuditEntry(log.size, at or now_instant(), kind, actor.as_json(), payload)
    data = entry.to_bytes()
    log.append(data)
    conn.execute(insert(AUDIT).values(seq=entry.seq, time=entry.time, kind=kind, entry=data))
    _keep(conn, STATE_KEY, log)
    _appended(conn).add(entry.seq)
    conn.info[_STATE] = (conn.get_transaction(), log)
    return entry.seq


_STATE = "converge.audit.state"
"""Where a connection keeps the log's state as its transaction last saved it, so that a
transaction appending many entries (a retention run's receipts) reads it from ``meta`` once.
Only a writer keeps it, and a writer holds the store's write lock (on PostgreSQL also the
state's row, :data:`~engine.store.store.STATE_LOCK`): no one else's write to it can commit
before the transaction ends. A new transaction never takes it: it is kept with the one that
saved it."""

_APPENDED = "converge.audit.appended"
"""Where a connection keeps the entries its transaction appended (:func:`_appended`)."""


def _appended(conn: Connection) -> set[int]:
    """The seqs ``conn``'s transaction appended itself: all a checkpoint may sign unjudged.

    Counted as they are appended, never from the log's size: on PostgreSQL each statement sees
    what others committed before it, so entries a database writer commits while this
    transaction runs may be numbered among its own."""
    transaction = conn.get_transaction()
    kept = conn.info.get(_APPENDED)
    if kept is None or kept[0] is not transaction:
        kept = (transaction, set())
        conn.info[_APPENDED] = kept
    mine: set[int] = kept[1]
    return mine


def size(conn: Connection) -> int:
    return _state(conn).size


def last_checkpoint_size(conn: Connection) -> int:
    return int(conn.execute(select(func.coalesce(func.max(CHECKPOINTS.c.size), 0))).scalar_one())


def checkpoint(conn: Connection, seal: Seal) -> str | None:
    """Sign and store a checkpoint of the log as it stands, saying it was signed ``seal.at``
    (whole seconds; its key version is valid then); ``None`` when nothing is new.

    The signer trusts nothing the database says of what is signed already. The newest stored
    checkpoint must be signed by a version of the log's key (``seal.keys``) valid at the time
    it states, a time not ahead of this signer's clock; the saved state of the log it signed
    must fold to its root (else the state is rebuilt from its entries, which must); the
    entries after it are read and hashed onto that state, and it is their root that is
    signed, which must also be the root of the log's saved state. So a checkpoint row, a saved
    state or an entry changed by a database writer is refused, never signed over.

    The entries after the newest checkpoint that this transaction did not append itself (the
    unsigned tail ``audit verify`` judges) must all parse and be of
    :data:`~engine.audit.TAIL_KINDS`: any other kind is signed where it is written, so one
    waiting there was written by someone without the key, and signing it would make a forgery
    (a hold released, a receipt) look like the signer's own. With no checkpoint at all, none
    of them may be of :data:`~engine.audit.SIGNED_KINDS` (the log's checkpoints were deleted:
    what a log rewritten whole since shows only against the witness file). Raises
    CheckpointRefused naming what. The caller appends the note to the witness file once this
    transaction has committed (:func:`witness_append`), never before.
    """
    made = origin(conn)
    if made is None:
        raise StoreError("the store's audit log has no origin: prepare the store first")
    newest = conn.execute(
        select(CHECKPOINTS.c.size, CHECKPOINTS.c.note).order_by(CHECKPOINTS.c.size.desc()).limit(1)
    ).first()
    signed = None if newest is None else _verified(newest.size, str(newest.note), made, seal)
    base = MerkleLog() if signed is None else _signed_state(conn, signed.checkpoint)
    log = _extended(conn, base, _appended(conn), anchored=signed is not None)
    saved = _state(conn)
    if (saved.size, saved.root()) != (log.size, log.root()):
        raise CheckpointRefused(
            f"the log's saved state (size {saved.size}) is not that of its {log.size} entries:"
            " the store was changed outside Converge (converge audit verify names it)"
        )
    if log.size == base.size:
        return None
    at = seal.at if signed is None else max(seal.at, signed.at)
    if not seal.version.valid_in_second(at):
        raise CheckpointRefused(
            f"the newest checkpoint states {at.isoformat()}, later than this signer's time, at"
            f" which the version it signs with ({seal.version.name} v{seal.version.version}) is"
            " no longer valid (the key was rotated meanwhile): sign again with a fresh seal"
        )
    note = seal.sign(Checkpoint(made, log.size, log.root(), (time_line(at),)))
    conn.execute(insert(CHECKPOINTS).values(size=log.size, note=note, created_at=now_instant()))
    _keep(conn, SIGNED_STATE_KEY, log)
    return note


@dataclass(frozen=True)
class _Signed:
    checkpoint: Checkpoint
    at: datetime


def _verified(size: int, note: str, made: str, seal: Seal) -> _Signed:
    """The newest checkpoint and its time, once its note verifies under a version of the
    log's key valid within the second that time ends, the time is not ahead of the signer's,
    and it signs the size its row says; else CheckpointRefused."""
    for version in seal.keys:
        try:
            signed = open_checkpoint(note, [verifier_key(made, version.key)], made)
        except VerificationError:
            continue
        at = signed_time(signed)
        if at is not None and version.valid_in_second(at):
            break
    else:
        raise CheckpointRefused(
            f"the newest checkpoint (size {size}) is not signed by a version of the log's key"
            " valid at the time it states: the store's checkpoints were changed outside"
            " Converge (converge audit verify names it), or this signer's key folder lacks"
            " the version that signed it"
        )
    if at > datetime.now(UTC) + FUTURE_SLACK:
        raise CheckpointRefused(
            f"the newest checkpoint (size {size}) says it was signed at {at.isoformat()}, ahead"
            " of this signer's clock: one of the two clocks is wrong (the signers' hosts must"
            " agree within 5 minutes), or the checkpoint was written outside Converge"
        )
    if signed.size != size:
        raise CheckpointRefused(
            f"the newest checkpoint's row says size {size}, its note signs {signed.size}: the"
            " store's checkpoints were changed outside Converge"
        )
    return _Signed(signed, at)


def _signed_state(conn: Connection, signed: Checkpoint) -> MerkleLog:
    """The compact state of the log ``signed`` signs: the one saved at that checkpoint when it
    folds to its root, else rebuilt from the entries (a store from before it was saved)."""
    try:
        saved = _saved(conn, SIGNED_STATE_KEY)
    except (ValueError, TypeError, KeyError, VerificationError):
        saved = None  # changed by a database writer: rebuilt below
    if saved is not None and (saved.size, saved.root()) == (signed.size, signed.root_hash):
        return saved
    log = MerkleLog()
    query = select(AUDIT.c.entry).where(AUDIT.c.seq < signed.size).order_by(AUDIT.c.seq)
    for (data,) in conn.execute(query):
        log.append(bytes(data))
    if (log.size, log.root()) != (signed.size, signed.root_hash):
        raise CheckpointRefused(
            f"the log's first {signed.size} entries are not those its newest checkpoint signed:"
            " the store was changed outside Converge (converge audit verify names what)"
        )
    return log


def _extended(conn: Connection, base: MerkleLog, mine: set[int], *, anchored: bool) -> MerkleLog:
    """``base`` with every entry after it appended, as stored; those not in ``mine`` checked
    as :func:`checkpoint` says (``anchored``: after a verified checkpoint; else before any)."""
    query = select(AUDIT.c.seq, AUDIT.c.entry).where(AUDIT.c.seq >= base.size)
    log = MerkleLog.from_state(base.size, base.hashes)
    for seq, data in conn.execute(query.order_by(AUDIT.c.seq)):
        if seq != log.size:
            raise CheckpointRefused(f"audit entry {log.size} is missing from the log's tail")
        if seq not in mine:
            _check_waiting(seq, bytes(data), anchored)
        log.append(bytes(data))
    return log


def _check_waiting(seq: int, data: bytes, anchored: bool) -> None:
    """Raise CheckpointRefused unless entry ``seq`` parses and may wait for a checkpoint."""
    try:
        entry = AuditEntry.parse(data)
    except ValueError as exc:
        raise CheckpointRefused(f"audit entry {seq} does not parse ({exc})") from exc
    if entry.seq != seq:
        raise CheckpointRefused(f"audit entry {seq} says it is entry {entry.seq}")
    kind = entry.kind
    if anchored and kind not in TAIL_KINDS:
        raise CheckpointRefused(
            f"audit entry {seq} ({kind}) waits unsigned after the last checkpoint, but a {kind}"
            " entry is signed in the transaction that writes it: no checkpoint signs it"
            " (written without the audit key? converge audit verify names it)"
        )
    if not anchored and kind in SIGNED_KINDS:
        raise CheckpointRefused(
            f"audit entry {seq} ({kind}) is in a log with no checkpoint, but a {kind} entry is"
            " written with one: the log's checkpoints were deleted"
            " (restore the store from a copy; the witness file says which checkpoints to expect)"
        )


def entries(
    conn: Connection, kinds: list[str] | None = None, first: int = 0
) -> Iterator[AuditEntry]:
    """Every entry in sequence order (from entry ``first``), of ``kinds`` when given; a
    StoreError names the first that does not parse (``converge audit verify`` names them all)."""
    query = select(AUDIT.c.seq, AUDIT.c.entry).where(AUDIT.c.seq >= first).order_by(AUDIT.c.seq)
    if kinds:
        query = query.where(AUDIT.c.kind.in_(kinds))
    for seq, data in conn.execute(query):
        yield _parsed(seq, bytes(data))


def signed_since(conn: Connection, log: MerkleLog, kinds: Collection[str]) -> list[AuditEntry]:
    """The entries after those ``log`` holds (the compact state of the log as a verification
    found it), hashed onto it, and of them those of ``kinds``, parsed; ``log`` then holds them
    all. Hashed, every entry since must make ``log`` the log's saved state, which a write
    transaction's checkpoint binds to the newest signed checkpoint and the entries after it
    (:func:`checkpoint`): an entry changed since it was verified or signed (a hold rewritten so
    as not to read as one, a receipt overwritten with a release) is a StoreError, never passed
    over or believed. An entry is of a kind by its bytes, never by its ``kind`` column: its
    canonical bytes read ``"kind":"K"``, and one without those is hashed, not parsed."""
    marks = [b'"kind":' + canonical_json(kind) for kind in kinds]
    found = []
    query = select(AUDIT.c.seq, AUDIT.c.entry).where(AUDIT.c.seq >= log.size).order_by(AUDIT.c.seq)
    for seq, stored in conn.execute(query):
        data = bytes(stored)
        if seq != log.size:
            raise _changed()
        log.append(data)
        if any(mark in data for mark in marks) and (entry := _parsed(seq, data)).kind in kinds:
            found.append(entry)
    saved = _state(conn)
    if (saved.size, saved.root()) != (log.size, log.root()):
        raise _changed()
    return found


def _changed() -> StoreError:
    return StoreError(
        "the audit log's entries are not those its saved state and checkpoints sign: the"
        " store was changed outside Converge (converge audit verify names what)"
    )


def _parsed(seq: int, data: bytes) -> AuditEntry:
    """Entry ``seq``'s bytes, parsed; a StoreError names it when they do not parse."""
    try:
        return AuditEntry.parse(data)
    except ValueError as exc:
        raise StoreError(
            f"audit entry {seq} does not parse ({exc}): converge audit verify names it"
        ) from None
