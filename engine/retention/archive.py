"""Archives: what ``on_expiry: archive`` expires is written to an audit bundle before it goes.

Before a run deletes anything, it looks at what it will delete whose plan says
``archive``, records that as a ``retention.archived`` entry (the archive's id,
its file name, the batches and positions it holds) with a checkpoint in the same
transaction, and writes the bundle (:func:`engine.export.archive`: docs/bundle.md,
the entry standing as its decision). Once the file exists, a
``retention.archive.written`` entry names the ``retention.archived`` entry, the
file and its SHA-256, again with a checkpoint in its transaction. Each receipt
that deletes archived records then names the file, its SHA-256 and both
entries, in the transaction that deletes them: no archived record is deleted
before its archive is written and its digest signed. A run killed between them
leaves an archive no receipt names (the next run writes another); never a
deletion without its archive.
"""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Any

from engine.access.data import Range
from engine.audit import Actor, seal_with
from engine.export import Archive, Target, archive
from engine.keys import KeyStore
from engine.plans.body import PlanBody
from engine.report import render
from engine.retention.select import Selection
from engine.sign.leaf import instant
from engine.store import auditlog
from engine.store.retention import runs
from engine.store.store import Store


@dataclass(frozen=True)
class Archived:
    """An archive written: its entry, file and digest, and the positions it holds by batch."""

    entry: int
    file: str
    sha256: str
    positions: dict[int, frozenset[int]]
    written: int
    """The ``retention.archive.written`` entry that signed the file's digest."""

    def as_json(self) -> dict[str, Any]:
        """What a receipt says of it."""
        return {
            "file": self.file,
            "sha256": self.sha256,
            "entry": self.entry,
            "written": self.written,
        }


def archives(plan: PlanBody) -> bool:
    """Whether any point of the plan is archived when it expires."""
    return any(p.retention.on_expiry == "archive" for p in plan.points)


def write(
    store: Store, keys: KeyStore, actor: Actor, folder: Path, chosen: Sequence[Selection]
) -> Archived | None:
    """Archive the records ``chosen`` selections delete under ``archive`` (None: there are
    none), as the module says; the caller holds the retention lock."""
    positions: dict[int, frozenset[int]] = {}
    points: set[tuple[str, str]] = set()
    for selection in chosen:
        groups = [g for g in selection.groups if g.expiry.on_expiry == "archive"]
        if groups:
            positions[selection.batch.id] = frozenset(p for g in groups for p in g.positions)
            points.update((selection.batch.device, p) for g in groups for p in g.points)
    if not positions:
        return None
    batches = [s.batch for s in chosen if s.batch.id in positions]
    span = Range(min(b.window_start for b in batches), max(b.window_end for b in batches))
    asked = Archive(str(uuid.uuid4()), actor.id, tuple(sorted(points)), span, positions)
    now = datetime.now(UTC)
    name = f"converge-archive-{now.strftime('%Y%m%dT%H%M%SZ')}-{asked.id[:8]}.zip"
    said = {
        "decision": asked.id,
        "file": name,
        "from": span.start,
        "to": span.end,
        "points": [{"device": d, "point": p} for d, p in asked.points],
        "batches": [
            {"batch": b.id, "device": b.device, "positions": runs(positions[b.id])} for b in batches
        ],
    }
    sealer = partial(seal_with, keys, store.audit_key)
    with store.signed(sealer) as conn:
        seq = auditlog.append(conn, "retention.archived", actor, said, instant(now))
    folder.mkdir(parents=True, exist_ok=True)
    out = folder / name
    archive(store, keys, asked, Target(out, render))
    digest = "sha256:" + hashlib.sha256(out.read_bytes()).hexdigest()
    written = {"archived": seq, "file": name, "sha256": digest}
    with store.signed(sealer) as conn:
        at = instant(datetime.now(UTC))
        done = auditlog.append(conn, "retention.archive.written", actor, written, at)
    return Archived(seq, name, digest, positions, done)


__all__ = ["Archived", "archives", "write"]
