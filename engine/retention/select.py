"""Which records of one batch go now: expired by their plan, and covered by no hold in force.

Pure: given a batch (its signed window and plan), the holds in force, the
records it still holds and the clock, :func:`select` says which records go,
grouped by the expiry calculation that expired them (engine/plans/expiry.py),
and which expired records holds keep. Records are told apart by their point,
read from the leaf bytes without parsing them (one scan of all of a batch's
leaves, :func:`engine.sign.leaf.points_of`).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import NamedTuple

from engine.canonical import canonical_json
from engine.plans.body import PlanBody, PlanPoint
from engine.plans.expiry import Expiry, expiry
from engine.sign.leaf import points_of
from engine.store.retention import BatchRef, Hold


@dataclass
class Group:
    """The records of a batch that one expiry calculation expired: their positions, and the
    point of each."""

    expiry: Expiry
    positions: list[int] = field(default_factory=list)
    names: list[str] = field(default_factory=list)

    @property
    def points(self) -> Counter[str]:
        return Counter(self.names)

    def only(self, kept: frozenset[int]) -> Group:
        """The group's records at positions in ``kept``."""
        pairs = [(p, n) for p, n in zip(self.positions, self.names, strict=True) if p in kept]
        return Group(self.expiry, [p for p, _ in pairs], [n for _, n in pairs])


@dataclass
class Selection:
    """What a retention run does with one batch's remaining records."""

    batch: BatchRef
    groups: list[Group] = field(default_factory=list)
    kept: Counter[int] = field(default_factory=Counter)
    """Expired records each hold keeps, by hold id."""
    held_past: Counter[str] = field(default_factory=Counter)
    """Records kept by a hold past every record's ``keep_at_most``, by point."""
    remaining: int = 0
    """Records the batch still holds after the run."""

    @property
    def count(self) -> int:
        return sum(len(g.positions) for g in self.groups)

    @property
    def archive(self) -> bool:
        """Whether any record that goes must be archived first."""
        return any(g.expiry.on_expiry == "archive" for g in self.groups)

    def archived_only(self, kept: frozenset[int]) -> None:
        """Keep (not delete) the records to be archived that are not at positions ``kept``
        (they expired since their run wrote its archive: the next run archives them)."""
        groups = [g.only(kept) if g.expiry.on_expiry == "archive" else g for g in self.groups]
        self.remaining += self.count - sum(len(g.positions) for g in groups)
        self.groups = [g for g in groups if g.positions]


class _Verdict(NamedTuple):
    """What happens to a point's records in this batch, and the group they go in (a tuple:
    one is made per point of every batch a run deletes from)."""

    point: str
    expiry: Expiry | None
    holds: tuple[int, ...]
    group: bytes = b""
    """The canonical JSON of the expiry calculation: records of one calculation are one group."""


def select(
    batch: BatchRef,
    plan: PlanBody | None,
    holds: Sequence[Hold],
    records: tuple[Sequence[int], Sequence[bytes]],
    at: datetime,
) -> Selection:
    """The records (positions, leaves) that go at ``at``, grouped by expiry; records of a point
    its plan does not name (or of a batch whose plan is not stored) are kept."""
    out = Selection(batch)
    verdicts: dict[bytes, _Verdict] = {}
    groups: dict[bytes, Group] = {}
    positions, leaves = records
    names = points_of(leaves)
    calculations: dict[int, tuple[Expiry | None, bytes]] = {}
    window = batch.device, batch.window_start, batch.window_end
    touching = [h for h in holds if h.scope.touches(*window)]
    for name in set(names):
        verdicts[name] = _verdict(batch, plan, touching, name.decode(), calculations)
    if _all_go(list(verdicts.values()), at):
        (verdict,) = {v.group: v for v in verdicts.values()}.values()
        decoded = {name: v.point for name, v in verdicts.items()}
        assert verdict.expiry is not None
        out.groups = [Group(verdict.expiry, list(positions), [decoded[n] for n in names])]
        return out
    for position, name in zip(positions, names, strict=True):
        verdict = verdicts[name]
        found = verdict.expiry
        if found is None or not found.due(at):
            out.remaining += 1
        elif verdict.holds:
            out.remaining += 1
            out.kept.update(verdict.holds)
            if found.gone_by is not None and at >= found.gone_by:
                out.held_past[verdict.point] += 1
        else:
            group = groups.get(verdict.group) or groups.setdefault(verdict.group, Group(found))
            group.positions.append(position)
            group.names.append(verdict.point)
    out.groups = list(groups.values())
    return out


def _all_go(verdicts: list[_Verdict], at: datetime) -> bool:
    """Whether every record goes, by one expiry calculation (the usual batch of a device whose
    points share their retention, no hold on them): then no record is looked at one by one."""
    return (
        bool(verdicts)
        and all(v.expiry is not None and v.expiry.due(at) and not v.holds for v in verdicts)
        and len({v.group for v in verdicts}) == 1
    )


def _verdict(
    batch: BatchRef,
    plan: PlanBody | None,
    holds: Sequence[Hold],
    point: str,
    calculations: dict[int, tuple[Expiry | None, bytes]],
) -> _Verdict:
    """What happens to ``point``'s records; ``calculations`` holds the batch's expiry
    calculations by retention class (:attr:`PlanBody.retention_classes`), so that points
    retained alike (usually all of a device's) share one. ``holds``: those that touch the
    batch."""
    planned = plan.point.get(point) if plan is not None else None
    if planned is None:
        return _Verdict(point, None, ())
    assert plan is not None
    covering = tuple(
        h.id
        for h in holds
        if h.scope.covers(batch.device, point, batch.window_start, batch.window_end)
    )
    key = plan.retention_classes[point]
    found = calculations.get(key)
    if found is None:
        found = calculations[key] = _calculation(batch, planned)
    return _Verdict(point, found[0], covering, found[1])


def _calculation(batch: BatchRef, planned: PlanPoint) -> tuple[Expiry | None, bytes]:
    """The expiry of a point's records of the batch, and its canonical JSON (b"": never)."""
    found = expiry(planned, _moment(batch.window_start), _moment(batch.window_end))
    return found, canonical_json(found.as_json()) if found else b""


def _moment(text: str) -> datetime:
    return datetime.fromisoformat(text)


__all__ = ["Group", "Selection", "select"]
