"""Writing an audit bundle: the records an export decision allows, and everything that proves them.

The layout and every byte format are docs/bundle.md's; :mod:`engine.export.verifier`
(shipped in the bundle as ``verify.py``) is the check. This module gathers from
the store, under one read transaction after the export's decision and its
checkpoint have been written: the records, their batches (whole, or each
record's inclusion proof), the plans in force, the audit entries of those
batches, plans and the export itself (each with a C2SP tlog-proof under the
latest checkpoint), the checkpoints of the range with a consistency proof each
to the latest, the public keys, and the deletion receipts and holds of the
range (reserved until retention lands). Members are written sorted, with
fixed zip times, so the zip's structure does not depend on when it is made.
"""

from __future__ import annotations

import base64
import hashlib
import json
import zipfile
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, select

from engine import audit
from engine.access.data import Range
from engine.access.guard import Decision
from engine.canonical import canonical_json
from engine.export import verifier
from engine.keys import KeyVersion
from engine.sign.leaf import instant
from engine.sign.merkle import MerkleTree
from engine.sign.note import Checkpoint, split_note
from engine.store import data, reads
from engine.store.data import StoredBatch
from engine.store.tables import PLANS

ZIP_TIME = (1980, 1, 1, 0, 0, 0)
"""Every member's zip time: a bundle's bytes do not depend on when it was written."""
TLOG_PROOF = "c2sp.org/tlog-proof@v1"


@dataclass
class Gathered:
    """What a bundle holds, as member names and bytes, plus what the manifest names."""

    members: dict[str, bytes] = field(default_factory=dict)
    batches: list[int] = field(default_factory=list)
    plans: list[str] = field(default_factory=list)
    records: int = 0


@dataclass(frozen=True)
class Request:
    """What to export: the decision (its allowed points), the range, the signed log state."""

    decision: Decision
    span: Range
    origin: str
    audit_key: str
    keys: Sequence[KeyVersion]


def gather(conn: Connection, request: Request, checkpoint_size: int) -> Gathered:
    """Every member but the manifest, its signature, the report and ``verify.py``."""
    out = Gathered()
    entries = [(seq, raw) for seq, _, _, raw in reads.audit_entries(conn)][:checkpoint_size]
    tree = MerkleTree(verifier.leaf_hash(raw) for _, raw in entries)
    wanted: set[int] = {_decision_seq(entries, request.decision.id)}
    _records(conn, request, out, wanted)
    _plans(conn, out, entries, wanted)
    out.members[verifier.ENTRIES] = _entries(entries, wanted, tree)
    out.members[verifier.CHECKPOINTS], out.members[verifier.CONSISTENCY] = _checkpoints(
        conn, request, tree
    )
    out.members[verifier.KEYS] = json.dumps([k.as_dict() for k in request.keys], indent=1).encode()
    out.members[verifier.RETENTION] = canonical_json({"receipts": [], "holds": []})
    return out


def _decision_seq(entries: Sequence[tuple[int, bytes]], decision: str) -> int:
    needle = f'"decision":"{decision}"'.encode()
    return next(seq for seq, raw in reversed(entries) if needle in raw)


def _records(conn: Connection, request: Request, out: Gathered, wanted: set[int]) -> None:
    """records.jsonl, records.csv and a member per batch that holds an exported record."""
    lines, rows = [], [",".join(verifier.CSV_COLUMNS).encode() + b"\n"]
    for batch, picked in _picked(conn, request):
        out.batches.append(batch.id)
        wanted.add(batch.entry_seq)
        for position, leaf in picked:
            lines.append(b'{"batch":%d,"position":%d,"leaf":%s}\n' % (batch.id, position, leaf))
            rows.append(verifier.csv_text(verifier.csv_row(json.loads(leaf), batch.id, position)))
        out.members[f"batches/{batch.id}.json"] = _batch_member(conn, batch, picked)
        if batch.plan_digest not in out.plans:
            out.plans.append(batch.plan_digest)
    out.records = len(lines)
    out.members[verifier.RECORDS] = b"".join(lines)
    out.members[verifier.RECORDS_CSV] = b"".join(rows)


def _picked(
    conn: Connection, request: Request
) -> Iterator[tuple[StoredBatch, list[tuple[int, bytes]]]]:
    """Each batch of an allowed device in the range with the (position, leaf) it exports."""
    allowed: dict[str, set[bytes]] = {}
    for point in request.decision.allowed:
        needle = b'"point":' + canonical_json(point.point) + b","
        allowed.setdefault(point.device, set()).add(needle)
    span = request.span
    for device, needles in sorted(allowed.items()):
        for batch in data.batches(conn, device, span.start, span.end):
            picked = [
                (p, leaf)
                for p, leaf in data.leaves(conn, batch.id)
                if _exported(leaf, needles, span)
            ]
            if picked:
                yield batch, picked


def _exported(leaf: bytes, needles: set[bytes], span: Range) -> bool:
    if not any(needle in leaf for needle in needles):
        return False
    record = json.loads(leaf)
    return span.holds(record.get("scheduled_at") or record["collected_at"])


def _batch_member(conn: Connection, batch: StoredBatch, picked: list[tuple[int, bytes]]) -> bytes:
    """The batch: statement, signatures, its entry's seq, and (when not every record of it is
    exported) each exported record's inclusion proof under its root."""
    said: dict[str, Any] = {
        "id": batch.id,
        "statement": batch.statement.decode(),
        "signatures": {key: sig.hex() for key, sig in sorted(batch.signatures.items())},
        "entry": batch.entry_seq,
    }
    if len(picked) != batch.count:
        tree = MerkleTree(verifier.leaf_hash(leaf) for _, leaf in data.leaves(conn, batch.id))
        said["proofs"] = {str(p): _b64(tree.inclusion_proof(p)) for p, _ in picked}
    return canonical_json(said)


def _plans(
    conn: Connection, out: Gathered, entries: Sequence[tuple[int, bytes]], wanted: set[int]
) -> None:
    """Each plan in force (its bytes, its signature) and its ``plan.deployed`` entry."""
    for digest in out.plans:
        row = conn.execute(select(PLANS).where(PLANS.c.digest == digest)).one()
        name = f"plans/{digest.removeprefix('sha256:')}"
        out.members[f"{name}.json"] = reads.as_bytes(row.body)
        if row.signature is not None:
            out.members[f"{name}.sig"] = row.signature.encode()
        needle = f'"digest":"{digest}"'.encode()
        wanted.update(seq for seq, raw in entries if b'"plan.deployed"' in raw and needle in raw)


def _entries(entries: Sequence[tuple[int, bytes]], wanted: set[int], tree: MerkleTree) -> bytes:
    """log/entries.jsonl: each wanted entry with its tlog-proof under the latest checkpoint."""
    lines = []
    for seq in sorted(wanted):
        raw = entries[seq][1]
        proof = "\n".join([TLOG_PROOF, f"index {seq}", *_b64(tree.inclusion_proof(seq))])
        lines.append(b'{"seq":%d,"proof":%s,"entry":%s}\n' % (seq, json.dumps(proof).encode(), raw))
    return b"".join(lines)


def _checkpoints(conn: Connection, request: Request, tree: MerkleTree) -> tuple[bytes, bytes]:
    """The checkpoints signed in the range and the latest; a consistency proof from each."""
    kept: list[tuple[int, str]] = []
    for row in reads.checkpoints(conn):
        if row.size > tree.size:
            continue
        at = audit.signed_time(Checkpoint.from_text(split_note(row.note)[0]))
        moment = None if at is None else instant(at)
        if row.size == tree.size or (moment is not None and request.span.holds(moment)):
            kept.append((row.size, row.note))
    proofs = [
        {"size": size, "proof": _b64(tree.consistency_proof(size))}
        for size, _ in kept
        if size < tree.size
    ]
    return json.dumps([note for _, note in kept], indent=1).encode(), json.dumps(proofs).encode()


def _b64(hashes: Iterable[bytes]) -> list[str]:
    return [base64.b64encode(h).decode() for h in hashes]


# --- the zip ------------------------------------------------------------------------------


def manifest(gathered: Gathered, said: dict[str, Any]) -> bytes:
    """The manifest (RFC 8785): what was asked and by whom, and every member's SHA-256."""
    files = {
        name: "sha256:" + hashlib.sha256(body).hexdigest()
        for name, body in sorted(gathered.members.items())
    }
    return canonical_json(
        {
            **said,
            "format": verifier.FORMAT,
            "files": files,
            "batches": gathered.batches,
            "plans": gathered.plans,
            "records": gathered.records,
        }
    )


def write_zip(path: Path, members: dict[str, bytes]) -> None:
    """The members, sorted, with fixed times and modes, deflated; written to ``path``
    atomically (a temporary file beside it, renamed)."""
    partial = path.with_name(f".{path.name}.partial")
    with zipfile.ZipFile(partial, "w", zipfile.ZIP_DEFLATED, compresslevel=1) as out:
        for name in sorted(members):
            info = zipfile.ZipInfo(name, ZIP_TIME)
            info.compress_type = zipfile.ZIP_DEFLATED
            info.external_attr = 0o644 << 16
            out.writestr(info, members[name])
    partial.replace(path)


__all__ = ["Gathered", "Request", "gather", "manifest", "write_zip"]
