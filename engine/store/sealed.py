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
from functools import cached_property
from typing import Any, Literal

from engine.canonical import canonical_json
from engine.records import Gap
from engine.sign.batch import Batch, Signature, Statement
from engine.sign.leaf import point_map_of

Kind = Literal["reading", "gap"]


@dataclass(frozen=True)
class SealedBatch:
    """One batch, sealed: what each key signed and the leaves, in batch order."""

    statement: bytes
    keys: tuple[str, ...]
    waiver: bytes
    """Canonical JSON list of the waivers that allow the batch to be unsigned."""
    signatures: tuple[Signature, ...]
    leaves: tuple[bytes, ...]
    """Every record's leaf bytes, in the batch's sorted order."""
    gaps: frozenset[int]
    """The positions in :attr:`leaves` that are gap records; the others are readings."""

    @classmethod
    def of(cls, batch: Batch, signatures: Sequence[Signature]) -> SealedBatch:
        entries = batch.entries
        leaves = tuple([e.leaf for e in entries])
        gaps = frozenset([i for i, e in enumerate(entries) if type(e.record) is Gap])
        return cls(
            Statement.of(batch).to_bytes(),
            batch.keys,
            canonical_json(list(batch.waiver)),
            tuple(signatures),
            leaves,
            gaps,
        )

    def kind(self, position: int) -> Kind:
        return "gap" if position in self.gaps else "reading"

    @property
    def head(self) -> Statement:
        """The parsed statement: device, window, count, root, plan digest, previous root."""
        return Statement.parse(self.statement)

    @cached_property
    def point_map(self) -> bytes:
        """The batch's point map (docs/records.md), read from its leaves: what the store keeps
        beside the statement that signs its SHA-256. Raises ValueError for a leaf that names
        no point."""
        return point_map_of(self.leaves)

    def audit_payload(self) -> dict[str, Any]:
        """What the ``batch.stored`` audit entry says of the batch (docs/audit.md)."""
        return {**self.head.members(), "keys": list(self.keys), "waiver": json.loads(self.waiver)}

    def to_bytes(self) -> bytes:
        """A self-contained JSON form for the spool (leaves are UTF-8 JSON text already)."""
        return canonical_json(
            {
                "statement": self.statement.decode(),
                "keys": list(self.keys),
                "waiver": self.waiver.decode(),
                "signatures": [[s.key, s.signature.hex()] for s in self.signatures],
                "records": [[self.kind(i), leaf.decode()] for i, leaf in enumerate(self.leaves)],
            }
        )

    @classmethod
    def from_bytes(cls, data: bytes) -> SealedBatch:
        obj: Mapping[str, Any] = json.loads(data)
        records = obj["records"]
        return cls(
            obj["statement"].encode(),
            tuple(obj["keys"]),
            obj["waiver"].encode(),
            tuple(Signature(k, bytes.fromhex(s)) for k, s in obj["signatures"]),
            tuple(leaf.encode() for _, leaf in records),
            frozenset(i for i, (kind, _) in enumerate(records) if kind == "gap"),
        )
