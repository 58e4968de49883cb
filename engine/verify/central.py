"""A central store's own records of the sites: what it quarantined, which site logs it witnessed.

Quarantined messages are refused input, not tampering: each one is a note in
the report (grouped by site, kind and reason) for the people who run the
sites, and ``audit verify`` passes. What must hold is that each quarantine row
is what its ``message.quarantined`` entry records (so a refusal can be
neither deleted nor rewritten unseen), and that the newest checkpoint the
centre cosigned of each site log is the one its latest
``checkpoint.cosigned`` entry records.
"""

from __future__ import annotations

import hashlib
from collections import Counter

from sqlalchemy import Connection

from engine.store import reads
from engine.verify.log import Log
from engine.verify.report import Report

_NOTED = 20
"""Groups of quarantined messages named one by one; the rest are counted."""


def check_quarantine(conn: Connection, log: Log, report: Report) -> None:
    """Every quarantine row agrees with its entry, every entry has its row; notes say what was
    refused."""
    rows = reads.quarantine(conn)
    recorded = {e.seq: e for e in log.of_kind("message.quarantined")}
    groups: Counter[tuple[str, str, str]] = Counter()
    for row in rows:
        label = f"quarantined message {row.id} ({row.site} {row.kind})"
        entry = recorded.pop(row.audit_seq, None)
        said = entry.payload if entry is not None else {}
        if (said.get("quarantine"), said.get("sha256"), said.get("reason")) != (
            row.id,
            row.sha256,
            row.reason,
        ):
            report.add(label, f"audit entry {row.audit_seq} does not record it")
        if row.message is not None and hashlib.sha256(bytes(row.message)).hexdigest() != row.sha256:
            report.add(label, "its kept message is not the one refused (changed)")
        groups[row.site, row.kind, row.reason] += 1
    for entry in recorded.values():
        report.add(
            f"quarantined message {entry.payload.get('quarantine')}",
            f"deleted: audit entry {entry.seq} records it, the store has no such row",
        )
    if rows:
        report.counts["quarantined messages"] = len(rows)
    for (site, kind, reason), count in sorted(groups.items())[:_NOTED]:
        report.notes.append(f"quarantined: site {site or '?'}, {count} {kind} message(s): {reason}")
    if len(groups) > _NOTED:
        report.notes.append(f"quarantined: {len(groups) - _NOTED} more kinds of refusal")


def check_witnessed(conn: Connection, log: Log, report: Report) -> None:
    """Each site log's newest cosigned checkpoint is what its latest entry records."""
    latest = {}
    for entry in log.of_kind("checkpoint.cosigned"):
        latest[str(entry.payload.get("origin"))] = entry.payload
    rows = reads.witnessed(conn)
    for row in rows:
        said = latest.pop(row.origin, None)
        got = (row.site, int(row.size), bytes(row.root).hex())
        if said is None or (said.get("site"), said.get("size"), said.get("root")) != got:
            report.add(f"witnessed log {row.origin}", "not what its cosigning entry records")
    for origin in latest:
        report.add(f"witnessed log {origin}", "cosigned (audit log), but the store has no row")
    if rows:
        report.counts["site logs witnessed"] = len(rows)
