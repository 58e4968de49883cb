"""The audit log: every stored entry, in sequence without a hole, and the state saved after it."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass

from sqlalchemy import Connection

from engine import audit
from engine.canonical import MAX_SAFE_INTEGER, read_json
from engine.sign.merkle import MerkleLog, leaf_hash
from engine.store import reads
from engine.verify.report import Report


@dataclass
class Log:
    """The audit log as stored: the entries that parse, by seq, and every entry's leaf hash."""

    entries: dict[int, audit.AuditEntry]
    hashes: list[bytes]

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
    _check_state(conn, log, report)
    return log


def _entry(seq: int, time: str, kind: str, data: bytes, report: Report) -> audit.AuditEntry | None:
    """Entry ``seq`` parsed from its stored bytes; None if they are not a canonical entry."""
    try:
        entry = _parse(data)
    except (ValueError, TypeError) as exc:
        report.add(f"audit entry {seq}", f"not a canonical entry ({exc})")
        return None
    if (entry.seq, entry.time, entry.kind) != (seq, time, kind):
        report.add(f"audit entry {seq}", "its seq, time or kind column disagrees with it")
    return entry


_MEMBERS = {"seq", "time", "kind", "actor", "payload"}
_ENCODER = json.JSONEncoder(
    sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
)
_ASTRAL = re.compile("[\U00010000-\U0010ffff]")
"""Characters beyond U+FFFF: JCS sorts keys by their UTF-16 code units, ``json`` by code
point."""


def _no_float(token: str) -> float:
    raise ValueError(f"{token} is a number with a fraction or exponent")


def _safe_int(token: str) -> int:
    number = int(token)
    if abs(number) > MAX_SAFE_INTEGER:
        raise ValueError(f"{token} is beyond the integers JCS holds")
    return number


_DECODER = json.JSONDecoder(parse_float=_no_float, parse_int=_safe_int)


def _parse(data: bytes) -> audit.AuditEntry:
    """:meth:`AuditEntry.parse <engine.audit.AuditEntry.parse>`, by one decoding and one
    encoding of an entry that plainly is canonical; any other is left to it, which decodes
    it twice (once to check its numbers) and names what is wrong.

    Plainly canonical: UTF-8 text of an object of the entry's members, holding no
    float, no integer beyond 2**53 - 1 and no character beyond U+FFFF, and written
    back the same by the C encoder with sorted keys and compact separators. For such
    a value :func:`~engine.canonical.canonical_json` writes those very bytes (its
    numbers check passes on them), so ``parse`` would accept it as this entry.
    """
    try:
        text = data.decode("utf-8")
        obj = _DECODER.decode(text)
        plain = (
            isinstance(obj, dict)
            and obj.keys() == _MEMBERS
            and (text.isascii() or not _ASTRAL.search(text))
            and _ENCODER.encode(obj) == text
        )
    except (ValueError, RecursionError):  # AuditEntry.parse names it
        plain = False
    if not plain:
        return audit.AuditEntry.parse(data)
    return audit.AuditEntry.of(obj)


def _check_state(conn: Connection, log: Log, report: Report) -> None:
    """The compact state the next append starts from must be that of the stored entries."""
    saved = reads.meta(conn, audit.STATE_KEY)
    if saved is None and not log.hashes:
        return
    recomputed = MerkleLog()
    for leaf in log.hashes:
        recomputed.append_hash(leaf)
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
