"""The audit log: every stored entry, in sequence without a hole, and the state saved after it."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

from sqlalchemy import Connection

from engine import audit
from engine.canonical import read_json
from engine.sign.merkle import MerkleLog, leaf_hash
from engine.store import reads
from engine.verify.report import Report


@dataclass
class Log:
    """The audit log as stored: the entries that parse, by seq, and every entry's leaf hash."""

    entries: dict[int, audit.AuditEntry]
    hashes: list[bytes]
    state: MerkleLog = field(default_factory=MerkleLog)
    """The compact state of the stored entries (what the next append starts from)."""

    def of_kind(self, kind: str) -> Iterator[audit.AuditEntry]:
        return (e for e in self.entries.values() if e.kind == kind)


def check_log(conn: Connection, report: Report) -> Log:
    """Every entry: seq follows seq, the bytes are a canonical entry that its columns agree with."""
    log = Log({}, [])
    expected = 0
    for seq, time, kind, data in reads.audit_entries(conn):
        if seq != expected:
            missing = f"{expected}" if seq == expected + 1 else f"{expected}..{seq - 1}"
            report.add(f"audit entry {missing}", "deleted: the log has a hole here")
        expected = seq + 1
        log.hashes.append(leaf_hash(data))
        entry = _entry(seq, time, kind, data, report)
        if entry is not None:
            log.entries[seq] = entry
    report.counts["audit entries"] = len(log.hashes)
    log.state = _check_state(conn, log, report)
    return log


def _entry(seq: int, time: str, kind: str, data: bytes, report: Report) -> audit.AuditEntry | None:
    """Entry ``seq`` parsed from its stored bytes; None if they are not a canonical entry."""
    try:
        entry = audit.AuditEntry.parse(data)
    except (ValueError, TypeError) as exc:
        report.add(f"audit entry {seq}", f"not a canonical entry ({exc})")
        return None
    if (entry.seq, entry.time, entry.kind) != (seq, time, kind):
        report.add(f"audit entry {seq}", "its seq, time or kind column disagrees with it")
    return entry


def _check_state(conn: Connection, log: Log, report: Report) -> MerkleLog:
    """The compact state the next append starts from must be that of the stored entries; that
    state, recomputed."""
    recomputed = MerkleLog()
    for leaf in log.hashes:
        recomputed.append_hash(leaf)
    saved = reads.meta(conn, audit.STATE_KEY)
    if saved is None and not log.hashes:
        return recomputed
    want = audit.saved_state(recomputed)
    try:
        got = read_json(saved) if saved else None
    except ValueError:
        got = None
    if got != want:
        size = got.get("size") if isinstance(got, dict) else None
        report.add(
            "audit log",
            f"its saved state (size {size}) is not that of the {recomputed.size} stored entries",
        )
    return recomputed
