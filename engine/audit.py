"""The audit log's format: entries, their kinds, the saved state, checkpoints and the witness.

Each entry is the RFC 8785 canonical JSON of ``{"seq", "time", "kind",
"actor", "payload"}``; entry ``seq`` is leaf ``seq`` of an RFC 9162 tree (the
hashing of docs/evidence.md). The store keeps the log
(:mod:`engine.store.auditlog`): an entry is appended inside the transaction
that stores what it records, so a batch and its entry commit together or not
at all.

A checkpoint is a C2SP ``tlog-checkpoint`` signed as a C2SP ``signed-note`` by
the audit key, under the log's origin as key name, as the spec recommends.
Each one is also appended to a *witness* file outside the database (JSON
Lines), so that ``converge audit verify --witness`` notices a database
restored from an older copy. See docs/audit.md.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from engine.canonical import canonical_json
from engine.sign.leaf import instant
from engine.sign.merkle import MerkleLog
from engine.sign.note import Checkpoint

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
        return canonical_json(
            {
                "seq": self.seq,
                "time": self.time,
                "kind": self.kind,
                "actor": self.actor,
                "payload": self.payload,
            }
        )

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


def saved_state(log: MerkleLog) -> dict[str, Any]:
    """The compact state of ``log`` as the store keeps it (under :data:`STATE_KEY`, as JSON)."""
    return {"size": log.size, "hashes": [h.hex() for h in log.hashes]}


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
