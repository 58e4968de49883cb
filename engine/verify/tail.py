"""The unsigned tail: the entries after the last checkpoint, and what they may be.

A run's start and its stop are recorded together with a checkpoint, in one
transaction, and a running collector signs a checkpoint every ``checkpoint_s``
seconds or ``checkpoint_entries`` entries (its signed start says which). So
the only entries a legitimate store holds after its last checkpoint are those
of a run still going, or killed, since that checkpoint: batches stored or
dropped, a full spool, key versions logged (docs/audit.md, "The unsigned
tail"). Anything else after the last checkpoint, a tail longer than one
checkpoint interval holds, or batches with no signed run start before them (or
after that run's signed stop), is a failure; a tail that fits is a note.
Deleting the newest checkpoint of a stopped run leaves its stop in the tail,
and of a running one a tail longer than an interval: loud, as deleting every
checkpoint is.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from engine import audit
from engine.verify.checkpoints import Signed
from engine.verify.log import Log
from engine.verify.report import Report
from engine.verify.trust import BadTime, instant

TAIL_KINDS = audit.TAIL_KINDS
"""What may wait for a checkpoint (:data:`engine.audit.TAIL_KINDS`); anything else is signed
in the transaction that appends it."""
RUN_KINDS = frozenset(
    {"batch.stored", "batch.sealed", "batch.dropped", "spool.full", "message.quarantined",
     "checkpoint.cosigned"}
)  # fmt: skip
COLLECTOR_STARTS = frozenset({"collector.started"})
COLLECTOR_STOPS = frozenset({"collector.stopped"})
STARTS = frozenset({"collector.started", "ingest.started"})
"""A run's signed start, saying its checkpoint cadence: a collector's, or an ingester's."""
BATCHES = frozenset({"batch.stored", "batch.sealed"})
SLACK_ENTRIES = 64
"""Entries one delivery may add after a checkpoint fell due: a batch, replayed ones, drops."""
SLACK = timedelta(seconds=30)
"""Time a loaded machine may take between a window closing and its batch being written."""
WINDOW = ("window_start", "window_end")
DEFAULT_CADENCE = (60.0, 1000)
"""Checkpoint seconds and entries of runs whose start did not say (before logs recorded it)."""


@dataclass(frozen=True)
class Cadence:
    """How often the run the tail belongs to signs checkpoints, from its signed start."""

    seconds: float
    entries: int


def check_tail(log: Log, good: Sequence[Signed], report: Report) -> None:
    """The entries after the last good checkpoint must be a running (or killed) run's."""
    signed = good[-1].checkpoint.size if good else 0
    size = len(log.hashes)
    if not good or signed >= size:
        return  # no checkpoint at all is reported by the checkpoint check
    tail = [log.entries.get(seq) for seq in range(signed, size)]
    problems = _wrong_kinds(signed, tail, report)
    start = _last(log, STARTS, signed)
    if any(e is not None and e.kind in RUN_KINDS for e in tail):
        problems |= _no_run(f"audit entries {signed}..{size - 1}", log, signed, report)
    if start is not None:
        problems |= _too_long(signed, tail, _cadence(start), good[-1].at, report)
    if not problems:
        report.notes.append(
            f"audit entries {signed}..{size - 1} ({size - signed}) are not signed yet: the tail"
            " of a collector still running, or killed before its next checkpoint (the next run"
            " signs them)"
        )


def _wrong_kinds(first: int, tail: list[audit.AuditEntry | None], report: Report) -> bool:
    wrong = False
    for seq, entry in enumerate(tail, first):
        if entry is not None and entry.kind not in TAIL_KINDS:
            report.add(
                f"audit entry {seq}",
                f"a {entry.kind} entry after the last checkpoint:"
                " it is always signed in the transaction that records it",
            )
            wrong = True
    return wrong


def _last(log: Log, kinds: frozenset[str], before: int) -> audit.AuditEntry | None:
    """The last entry of ``kinds`` in the signed part of the log (before entry ``before``)."""
    found = [e for e in log.entries.values() if e.kind in kinds and e.seq < before]
    return max(found, key=lambda e: e.seq, default=None)


def _no_run(label: str, log: Log, before: int, report: Report) -> bool:
    """Whether the tail's batches lack a run to have written them: a collector's signed start
    that no signed stop follows, or an ingester's that its own signed stop does not follow."""
    start = _last(log, COLLECTOR_STARTS, before)
    stop = _last(log, COLLECTOR_STOPS, before)
    if start is not None and (stop is None or stop.seq < start.seq):
        return False
    if _ingesting(log, before):
        return False
    if start is None or stop is None:
        why = "with no signed run start before them"
    else:
        why = f"after the run started at audit entry {start.seq} stopped (audit entry {stop.seq})"
    report.add(label, f"after the last checkpoint, {why}: no collector could have written them")
    return True


def _ingesting(log: Log, before: int) -> bool:
    """Whether an ingester of a central store had started, and not stopped, by entry ``before``
    (several take turns writing one log: each names itself in its start and its stop)."""
    running: set[object] = set()
    for entry in sorted(log.entries.values(), key=lambda e: e.seq):
        if entry.seq >= before:
            break
        if entry.kind == "ingest.started":
            running.add(str(entry.payload.get("ingester")))
        elif entry.kind == "ingest.stopped":
            running.discard(str(entry.payload.get("ingester")))
    return bool(running)


def _cadence(start: audit.AuditEntry) -> Cadence:
    """The checkpoint cadence of the run a ``collector.started`` (or ``ingest.started``) entry
    started."""
    seconds, entries = DEFAULT_CADENCE
    said = start.payload
    every, count = said.get("checkpoint_s", seconds), said.get("checkpoint_entries", entries)
    return Cadence(
        float(every) if _number(every) else seconds, int(count) if _number(count) else entries
    )


def _number(said: object) -> bool:
    """Whether a payload's member is a number (a hostile entry may hold any JSON value)."""
    return isinstance(said, int | float) and not isinstance(said, bool)


def _too_long(
    first: int,
    tail: list[audit.AuditEntry | None],
    cadence: Cadence,
    last: datetime,
    report: Report,
) -> bool:
    """A tail of more of the run's own entries (:data:`RUN_KINDS`), or reaching later windows,
    than one checkpoint interval holds. Entries of other kinds (the decisions of a read API
    anyone can reach, reviews, key versions) are not the run's to sign on its cadence: counted,
    a flood of refused requests would pass for a deleted checkpoint."""
    label = f"audit entries {first}..{first + len(tail) - 1}"
    written = sum(1 for entry in tail if entry is not None and entry.kind in RUN_KINDS)
    if written > cadence.entries + SLACK_ENTRIES:
        report.add(
            label,
            f"{written} entries a run writes after the last checkpoint, more than the"
            f" {cadence.entries} it writes between two (a checkpoint was deleted?)",
        )
        return True
    for entry in tail:
        if entry is None or entry.kind not in BATCHES:
            continue
        try:
            start, end = (
                instant(str(entry.payload.get(k))) for k in ("window_start", "window_end")
            )
        except BadTime:
            continue  # the batch check names an entry that is not its batch's
        due = last + timedelta(seconds=cadence.seconds) + (end - start) + SLACK
        if start > due:
            report.add(
                f"audit entry {entry.seq}",
                f"stores a batch of {start.isoformat()}, after"
                f" the next checkpoint was due ({due.isoformat()} at the latest): the"
                " checkpoint that signed it was deleted",
            )
            return True
    return False
