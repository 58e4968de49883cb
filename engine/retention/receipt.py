"""The deletion receipt: the ``retention.deleted`` audit entry a run writes for each batch.

Written in the transaction that deletes the records it names, so that no
record is ever deleted without one. docs/retention.md describes every member;
``converge audit verify`` checks each against the batch's signed statement,
its plan, the holds in force and the records the batch still holds.
"""

from __future__ import annotations

import base64
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from engine.retention.select import Selection
from engine.store.retention import Hold, runs


@dataclass(frozen=True)
class Run:
    """One retention run: its id and when it began (every receipt of it names both)."""

    id: str
    started: str


def payload(
    selection: Selection,
    removed: tuple[Sequence[int], bytes],
    run: Run,
    holds: Sequence[Hold],
    archive: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The receipt of ``selection``'s records, ``removed`` being their positions, ascending,
    and their leaf hashes concatenated in that order (none when they are the batch's last
    records: nothing is left whose inclusion they would prove); ``holds`` the holds in force
    when it was decided."""
    positions, hashes = removed
    batch = selection.batch
    points: Counter[str] = Counter()
    for group in selection.groups:
        points.update(group.points)
    return {
        "batch": batch.id,
        "device": batch.device,
        "root": batch.root.hex(),
        "plan": batch.plan_digest,
        "window_start": batch.window_start,
        "window_end": batch.window_end,
        "count": len(positions),
        "remaining": selection.remaining,
        "positions": runs(positions),
        "leaf_hashes": base64.b64encode(hashes).decode(),
        "points": [
            {"device": batch.device, "point": name, "count": n}
            for name, n in sorted(points.items())
        ],
        "expiries": [
            {**g.expiry.as_json(), "points": sorted(g.points), "positions": runs(g.positions)}
            for g in selection.groups
        ],
        "holds": {
            "in_force": [h.id for h in holds],
            "kept": {str(hold): n for hold, n in sorted(selection.kept.items())},
        },
        "run": {"id": run.id, "started": run.started},
        "archive": archive,
    }


__all__ = ["Run", "payload"]
