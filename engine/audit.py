"""Stage audit: the append-only Merkle log of every event, and its signed checkpoints.

Each entry is the RFC 8785 canonical JSON of ``{"seq", "time", "kind",
"actor", "payload"}``; entry ``seq`` is leaf ``seq`` of an RFC 9162 tree (the
hashing of docs/evidence.md). An entry is appended inside the transaction
that stores what it records (a batch and its entry commit together or not at
all), so the log's compact state (size and the roots of its perfect subtrees)
is read and written in that same transaction, never kept in memory.

A checkpoint is a C2SP ``tlog-checkpoint`` signed as a C2SP ``signed-note`` by
the audit key, under the log's origin as key name, as the spec recommends.
Each one is also appended to a *witness* file outside the database (JSON
Lines), so that ``converge audit verify --witness`` notices a database
restored from an older copy. See docs/audit.md.
"""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, func, insert, select, update

from engine.canonical import canonical_json
from engine.sign.leaf import instant
from engine.sign.merkle import MerkleLog
from engine.sign.note import Checkpoint
from engine.store.tables import AUDIT, CHECKPOINTS, META

ORIGIN_KEY = "audit.origin"
STATE_KEY = "audit.state"
KINDS = {
    "plan.deployed": "a plan was loaded by a collector for the first time",
    "batch.stored": "a batch, its signatures and records were stored",
    "batch.dropped": "a batch was lost because the spool was full (its statement is kept)",
    "spool.full": "the spool reached its bound; newer batches are dropped until it drains",
    "key.generated": "a signing key's first version was made",
    "key.rotated": "a signing key's new version replaced the previous one",
    "collector.started": "a collector started writing to this store",
    "collector.stopped": "a collector stopped cleanly",
}
"""Every entry kind and what it records (docs/audit.md)."""


CheckpointSigner = Callable[[Checkpoint], str]
"""Signs a checkpoint, returning the signed note text."""


@dataclass(frozen=True)
class AuditEntry:
    """One entry of the log, parsed."""

    seq: int
    time: str
    kind: str
    actor: str
    payload: dict[str, Any]

    def to_bytes(self) -> bytes:
        return canonical_json({"seq": self.seq, "time": self.time, "kind": self.kind,
                               "actor": self.actor, "payload": self.payload})  # fmt: skip

    @classmethod
    def parse(cls, data: bytes) -> AuditEntry:
        """Raises ValueError unless ``data`` is exactly the canonical bytes of an entry."""
        obj = json.loads(data)
        if not isinstance(obj, dict) or set(obj) != {"seq", "time", "kind", "actor", "payload"}:
            raise ValueError("not an audit entry object")
        entry = cls(obj["seq"], obj["time"], obj["kind"], obj["actor"], obj["payload"])
        if entry.to_bytes() != data:
            raise ValueError("not the canonical bytes of the entry")
        return entry


def now_instant() -> str:
    return instant(datetime.now(UTC))


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


def saved_state(log: MerkleLog) -> dict[str, Any]:
    """The compact state of ``log`` as the store keeps it (under :data:`STATE_KEY`, as JSON)."""
    return {"size": log.size, "hashes": [h.hex() for h in log.hashes]}


def _save_state(conn: Connection, log: MerkleLog, first: bool) -> None:
    text = json.dumps(saved_state(log))
    if first:
        conn.execute(insert(META).values(key=STATE_KEY, value=text))
    else:
        conn.execute(update(META).where(META.c.key == STATE_KEY).values(value=text))


def append(conn: Connection, kind: str, actor: str, payload: dict[str, Any],
           at: str | None = None) -> int:  # fmt: skip
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


def witness_append(witness: Path, note: str) -> None:
    """Append a checkpoint note to the witness file, one JSON line, synced to disk."""
    line = json.dumps({"note": note, "written_at": now_instant()}) + "\n"
    with witness.open("a", encoding="utf-8") as out:
        out.write(line)
        out.flush()
        os.fsync(out.fileno())


def witness_notes(witness: Path) -> Iterator[tuple[int, str]]:
    """(line number, note) of every checkpoint in a witness file."""
    with witness.open(encoding="utf-8") as lines:
        for number, line in enumerate(lines, 1):
            if line.strip():
                yield number, str(json.loads(line)["note"])


def entries(conn: Connection, kinds: list[str] | None = None) -> Iterator[AuditEntry]:
    """Every entry in sequence order, of ``kinds`` when given."""
    query = select(AUDIT.c.entry).order_by(AUDIT.c.seq)
    if kinds:
        query = query.where(AUDIT.c.kind.in_(kinds))
    for (data,) in conn.execute(query):
        yield AuditEntry.parse(bytes(data))
