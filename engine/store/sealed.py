"""A signed batch as the store keeps it: statement, signatures and leaf bytes, nothing else.

:class:`SealedBatch` is what travels from signing to the database, and what
the spool holds while the database is away. It carries no Python records, only
bytes that were hashed and signed, so whatever path it takes it is stored
exactly as it was sealed.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from engine.canonical import canonical_json
from engine.records import Reading, Record
from engine.sign.batch import Batch, Signature, Statement

Kind = Literal["reading", "gap"]


@dataclass(frozen=True)
class SealedBatch:
    """One batch, sealed: what each key signed and the leaves, in batch order."""

    statement: bytes
    keys: tuple[str, ...]
    waiver: bytes
    """Canonical JSON list of the waivers that allow the batch to be unsigned."""
    signatures: tuple[Signature, ...]
    records: tuple[tuple[Kind, bytes], ...]
    """(kind, leaf bytes) per record, in the batch's sorted order."""

    @classmethod
    def of(cls, batch: Batch, signatures: Sequence[Signature]) -> SealedBatch:
        records = tuple((_kind(e.record), e.leaf) for e in batch.entries)
        return cls(Statement.of(batch).to_bytes(), batch.keys,
                   canonical_json(list(batch.waiver)), tuple(signatures), records)  # fmt: skip

    @property
    def head(self) -> Statement:
        """The parsed statement: device, window, count, root, plan digest, previous root."""
        return Statement.parse(self.statement)

    def audit_payload(self) -> dict[str, Any]:
        """What the ``batch.stored`` audit entry says of the batch (docs/audit.md)."""
        head = self.head
        return {
            "device": head.device, "window_start": head.window_start,
            "window_end": head.window_end, "count": head.count, "root": head.root.hex(),
            "previous_root": head.previous_root.hex(), "plan_digest": head.plan_digest,
            "keys": list(self.keys), "waiver": json.loads(self.waiver),
        }  # fmt: skip

    def to_bytes(self) -> bytes:
        """A self-contained JSON form for the spool (leaves are UTF-8 JSON text already)."""
        return canonical_json({
            "statement": self.statement.decode(), "keys": list(self.keys),
            "waiver": self.waiver.decode(),
            "signatures": [[s.key, s.signature.hex()] for s in self.signatures],
            "records": [[kind, leaf.decode()] for kind, leaf in self.records],
        })  # fmt: skip

    @classmethod
    def from_bytes(cls, data: bytes) -> SealedBatch:
        obj: Mapping[str, Any] = json.loads(data)
        return cls(
            obj["statement"].encode(), tuple(obj["keys"]), obj["waiver"].encode(),
            tuple(Signature(k, bytes.fromhex(s)) for k, s in obj["signatures"]),
            tuple((kind, leaf.encode()) for kind, leaf in obj["records"]),
        )  # fmt: skip


def _kind(record: Record) -> Kind:
    return "reading" if isinstance(record, Reading) else "gap"
