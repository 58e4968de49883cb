"""One record with everything a consumer needs to check it without trusting the server.

The record's leaf bytes; its RFC 9162 inclusion proof under its batch's root; the signed
batch statement (which holds the root) and its Ed25519 signatures; the batch's
``batch.stored`` audit entry and, when the latest signed checkpoint covers it, its
inclusion proof under that checkpoint's root, with the checkpoint itself. A consumer who
holds the signing keys' public keys and the audit key's checks each step
(docs/access.md shows how); the server's word is needed for none of them.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Connection

from engine.plans.body import PlanBody
from engine.sign.merkle import MerkleLog, MerkleTree, leaf_hash
from engine.sign.proof import inclusion_ranges
from engine.store import data
from engine.store.data import StoredBatch
from engine.verify.trust import BadTime, instant


@dataclass(frozen=True)
class Located:
    """A stored record, and what the guard decides on: its device, point, time and plan."""

    batch: StoredBatch
    position: int
    leaf: bytes
    device: str
    point: str
    at: datetime
    plan: PlanBody | None
    """The plan the batch was stored under (``None`` when it is not stored)."""


def locate(conn: Connection, batch_id: int, position: int) -> Located | None:
    """The record at ``position`` of batch ``batch_id``; ``None`` when there is none, or its
    leaf is not a record (nothing to decide on)."""
    batch = data.batch(conn, batch_id)
    if batch is None:
        return None
    leaf = dict(data.leaves(conn, batch_id)).get(position)
    if leaf is None:
        return None
    try:
        record = json.loads(leaf)
        at = instant(record.get("scheduled_at") or record["collected_at"])
        device, point = str(record["device"]), str(record["point"])
    except (ValueError, KeyError, TypeError, AttributeError, BadTime):
        return None
    return Located(batch, position, leaf, device, point, at, data.plan(conn, batch.plan_digest))


def proof(conn: Connection, found: Located) -> dict[str, Any]:
    """The record and its proofs, as the proof endpoint answers (docs/access.md)."""
    leaves = data.leaves(conn, found.batch.id)
    tree = MerkleTree(leaf_hash(leaf) for _, leaf in leaves)
    index = [position for position, _ in leaves].index(found.position)
    return {
        "record": {
            "batch": found.batch.id,
            "position": found.position,
            "leaf": found.leaf.decode(),
            "leaf_hash": leaf_hash(found.leaf).hex(),
        },
        "inclusion": {
            "leaf_index": index,
            "tree_size": tree.size,
            "hashes": [h.hex() for h in tree.inclusion_proof(index)],
        },
        "batch": {
            "statement": found.batch.statement.decode(),
            "signatures": [
                {"key": key, "signature": signature.hex()}
                for key, signature in sorted(found.batch.signatures.items())
            ],
            "required_keys": sorted(found.plan.required_keys) if found.plan else None,
        },
        "log": _log(conn, found.batch.entry_seq),
    }


def _log(conn: Connection, seq: int) -> dict[str, Any]:
    """The batch's audit entry, and its inclusion under the latest checkpoint if that covers
    it (``null`` proof: the entry is in the log's unsigned tail)."""
    entry = data.audit_entry(conn, seq)
    size, note = data.latest_checkpoint(conn) or (None, None)
    hashes = _audit_proof(conn, seq, size) if size is not None and seq < size else None
    return {
        "entry": entry.decode() if entry is not None else None,
        "seq": seq,
        "checkpoint": note,
        "tree_size": size,
        "hashes": None if hashes is None else [h.hex() for h in hashes],
    }


def _audit_proof(conn: Connection, seq: int, size: int) -> list[bytes]:
    """The inclusion proof of entry ``seq`` in the log of ``size`` entries, each subtree
    hashed as its entries stream by (memory O(log size), time O(size))."""
    hashes = []
    for part in inclusion_ranges(seq, size):
        log = MerkleLog()
        for entry in data.audit_entries(conn, part.start, part.end):
            log.append(entry)
        hashes.append(log.root())
    return hashes
