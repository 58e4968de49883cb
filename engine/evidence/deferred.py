"""Audit entries a run keeps in its spool until the store takes them: its start and its stop."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from engine.audit import RUN_MARKS, Seal
from engine.canonical import canonical_json
from engine.errors import CheckpointRefused
from engine.keys import KeyVersion
from engine.plans.format import read_plan
from engine.store.store import Recorded, Store


@dataclass(frozen=True)
class Deferred:
    """Audit entries the store must get before any batch: a run's start or its stop.

    A start is the run's plans (their bytes and signed notes), its signing key
    versions and a ``collector.started`` entry. Each is kept in the spool until
    the store has recorded it, so a collector can start (and stop) while the
    store is away; plans and key versions the store has already are skipped.
    """

    at: str
    """When it happened (an instant): the entries are dated so, however late they are logged."""
    plans: tuple[tuple[bytes, str | None], ...] = ()
    keys: tuple[KeyVersion, ...] = ()
    entries: tuple[tuple[str, dict[str, Any]], ...] = ()
    """(kind, payload) of each entry to log after the plans and keys."""

    def record(self, store: Store, seal: Seal) -> None:
        """Record every entry and a checkpoint after them in one transaction: a run's start
        and stop are never an unsigned tail of the log (docs/audit.md). Any other kind was not
        written by a run (the spool is a file on the collector's host): CheckpointRefused, and
        nothing is recorded."""
        odd = next((kind for kind, _ in self.entries if kind not in RUN_MARKS), None)
        if odd is not None:
            raise CheckpointRefused(
                f"the spool holds a {odd!r} entry to record, but a run keeps only its start and"
                " stop there: the spool file was changed, and nothing of it is signed"
            )
        plans = [(read_plan(data), note) for data, note in self.plans]
        store.record(Recorded(self.at, plans, self.keys, self.entries), seal)

    def to_bytes(self) -> bytes:
        return canonical_json(
            {
                "at": self.at,
                "plans": [[data.decode(), note] for data, note in self.plans],
                "keys": [version.as_dict() for version in self.keys],
                "entries": [list(entry) for entry in self.entries],
            }
        )

    @classmethod
    def from_bytes(cls, data: bytes) -> Deferred:
        obj = json.loads(data)
        return cls(
            obj["at"],
            tuple((text.encode(), note) for text, note in obj["plans"]),
            tuple(map(KeyVersion.from_dict, obj["keys"])),
            tuple((kind, payload) for kind, payload in obj["entries"]),
        )
