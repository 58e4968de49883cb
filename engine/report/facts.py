"""What the report says, gathered from the store: the scope a decision allows, the plans in force
and what they demand, audit entries by kind, checkpoints, and the store's verification.

Everything here is data; :mod:`engine.report.page` turns it into HTML. docs/report.md says
where each number comes from.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, select

from engine.access.data import Range, plans_in_force
from engine.access.guard import Decision
from engine.audit import (
    DEFAULT_AUDIT_KEY,
    KINDS,
    ORIGIN_KEY,
    RUN_MARKS,
    AuditEntry,
    EntryFilter,
    signed_time,
)
from engine.errors import VerificationError
from engine.keys import KeyVersion
from engine.plans.body import PlanBody, PlanPoint, Waiver
from engine.report import stored
from engine.report.chart import period_for
from engine.report.health import DAY_MS, Health, Readings, health, to_ms
from engine.sign import note
from engine.sign.leaf import instant
from engine.store import reads
from engine.store.store import Store
from engine.store.tables import AUDIT
from engine.verify.report import Report
from engine.verify.trust import Trust
from engine.verify.whole import verify_store

EXPIRING_WITHIN = timedelta(days=30)
"""An exception that ends within this is ``expiring`` (as ``converge coverage`` says)."""
RETENTION_KINDS = tuple(k for k in KINDS if k.startswith(("retention.", "hold.")))
"""The entry kinds of retention runs and legal holds (deletion receipts, archives, holds placed
and released): any such kind the log learns shows in the report."""


@dataclass(frozen=True)
class Scope:
    """What a report covers: each device's points the decision allows, over its range."""

    points: Mapping[str, tuple[str, ...]]
    span: Range

    @classmethod
    def of(cls, decision: Decision) -> Scope:
        r = decision.request
        points: dict[str, list[str]] = {}
        for p in decision.allowed:
            points.setdefault(p.device, []).append(p.point)
        return cls(
            {d: tuple(names) for d, names in sorted(points.items())},
            Range(instant(r.start) if r.start else None, instant(r.end) if r.end else None),
        )

    def covers(self, entry: AuditEntry) -> bool:
        """Whether ``entry`` is about one of the scope's devices."""
        return any(EntryFilter(device=d).matches(entry) for d in self.points)


# --- plans, policies, exceptions ---------------------------------------------------------


@dataclass(frozen=True)
class ScopedPoint:
    device: str
    point: PlanPoint
    plan: PlanBody


def plans_of(conn: Connection, scope: Scope) -> dict[str, list[PlanBody]]:
    """Each device's plans in force for its data in the range (docs/access.md)."""
    return {device: plans_in_force(conn, device, scope.span) for device in scope.points}


def scoped_points(scope: Scope, plans: Mapping[str, Sequence[PlanBody]]) -> Iterator[ScopedPoint]:
    """Each allowed point as each plan in force writes it."""
    for device, names in scope.points.items():
        for plan in plans.get(device, ()):
            for name in names:
                if name in plan.point:
                    yield ScopedPoint(device, plan.point[name], plan)


@dataclass
class PolicyUse:
    """A policy as the plans in force show it: the points it governs, where it is written."""

    id: str
    controls: tuple[str, ...] | None
    """As its policy file says (``None``: the report was not given its policy file, or the
    bundle does not carry it)."""
    points: set[str] = field(default_factory=set)
    files: set[str] = field(default_factory=set)


def policies(
    points: Iterable[ScopedPoint], controls: Mapping[str, Sequence[str]] | None
) -> list[PolicyUse]:
    """Every policy governing a point in scope, with its controls when known."""
    found: dict[str, PolicyUse] = {}
    for sp in points:
        for policy in sp.point.policies:
            said = None if controls is None else controls.get(policy)
            cited = None if said is None else tuple(said)  # its file not read: not "none"
            use = found.setdefault(policy, PolicyUse(policy, cited))
            use.points.add(f"{sp.device}/{sp.point.name}")
        for sources in sp.point.provenance.values():
            for source in sources:
                if source.policy in found:
                    found[source.policy].files.add(source.at.rsplit(":", 2)[0])
    return [found[k] for k in sorted(found)]


@dataclass(frozen=True)
class WaiverUse:
    """An exception (waiver) in force for points in scope, and those points."""

    waiver: Waiver
    points: set[str] = field(default_factory=set)

    def status(self, today: date) -> str:
        """``in force``, ``expiring`` (within 30 days) or ``expired``, on ``today``."""
        ends = date.fromisoformat(self.waiver.expires)
        if ends < today:
            return "expired"
        return "expiring" if ends - today <= EXPIRING_WITHIN else "in force"


def exceptions(points: Iterable[ScopedPoint]) -> list[WaiverUse]:
    """Every waiver the plans in force carry for points in scope, once, with its points."""
    found: dict[tuple[str, ...], WaiverUse] = {}
    for sp in points:
        for w in sp.point.waived:
            key = (w.policy, w.at, w.reason, w.expires, *w.facets)
            found.setdefault(key, WaiverUse(w)).points.add(f"{sp.device}/{sp.point.name}")
    return sorted(found.values(), key=lambda e: (e.waiver.expires, e.waiver.policy, e.waiver.at))


# --- audit entries -----------------------------------------------------------------------


def entries(conn: Connection, kinds: Sequence[str]) -> list[AuditEntry]:
    """The entries of ``kinds`` in sequence order; one that does not parse is left out
    (verification names it)."""
    if not kinds:
        return []
    query = select(AUDIT.c.entry).where(AUDIT.c.kind.in_(kinds)).order_by(AUDIT.c.seq)
    found = []
    for (raw,) in conn.execute(query):
        try:
            found.append(AuditEntry.parse(reads.as_bytes(raw)))
        except (ValueError, TypeError):
            continue
    return found


@dataclass(frozen=True)
class Run:
    """A collector run that collected a device in scope: its start, its clean stop if any."""

    started: AuditEntry
    stopped: AuditEntry | None
    devices: tuple[str, ...]


def runs(conn: Connection, scope: Scope) -> list[Run]:
    """The runs whose plans name a device in scope, each with the stop that ended it (the next
    ``collector.stopped`` before another start; none: killed, or still running)."""
    device_of = {str(row.digest): str(row.device) for row in reads.plans(conn)}
    found: list[Run] = []
    pending: tuple[AuditEntry, tuple[str, ...]] | None = None
    for entry in entries(conn, RUN_MARKS):
        if entry.kind == "collector.started":
            if pending is not None:
                found.append(Run(pending[0], None, pending[1]))
            digests = entry.payload.get("plans") or []
            named = {device_of.get(str(d), "") for d in digests}
            pending = entry, tuple(sorted(named.intersection(scope.points)))
        elif pending is not None:
            found.append(Run(pending[0], entry, pending[1]))
            pending = None
    if pending is not None:
        found.append(Run(pending[0], None, pending[1]))
    return [run for run in found if run.devices]


def about_scope(conn: Connection, scope: Scope, kinds: Sequence[str]) -> list[AuditEntry]:
    """Entries of ``kinds`` about a device in scope, or about no device at all (store-wide)."""
    return [e for e in entries(conn, kinds) if scope.covers(e) or not _names_a_device(e)]


def decisions(conn: Connection, scope: Scope) -> list[AuditEntry]:
    """``access.decision`` entries about a device in scope."""
    return [e for e in entries(conn, ["access.decision"]) if scope.covers(e)]


def _names_a_device(entry: AuditEntry) -> bool:
    payload = entry.payload
    listed = [p for p in payload.get("points", ()) if isinstance(p, dict)]
    return "device" in payload or any("device" in p for p in listed)


# --- checkpoints ---------------------------------------------------------------------------


@dataclass(frozen=True)
class SignedCheckpoint:
    """A stored checkpoint as a person reads it."""

    id: int
    size: int
    signed_at: str | None
    root: str
    key_ids: tuple[str, ...]


def checkpoints(conn: Connection) -> list[SignedCheckpoint]:
    """Every stored checkpoint, oldest first; one that does not parse says so in its root."""
    found = []
    for row in reads.checkpoints(conn):
        try:
            text, signatures = note.split_note(row.note)
            checkpoint = note.Checkpoint.from_text(text)
        except VerificationError as exc:
            found.append(SignedCheckpoint(row.id, row.size, None, f"not a checkpoint: {exc}", ()))
            continue
        at = signed_time(checkpoint)
        found.append(
            SignedCheckpoint(
                row.id,
                checkpoint.size,
                None if at is None else instant(at),
                checkpoint.root_hash.hex(),
                tuple(s.key_id.hex() for s in signatures),
            )
        )
    return found


# --- verification --------------------------------------------------------------------------


@dataclass(frozen=True)
class Checking:
    """How the report verifies the store: the keys it trusts, and where they came from."""

    trust: Trust
    source: str
    """In words: ``the key folder keys``, ``the public keys a.json, b.json``."""
    audit_key: str = DEFAULT_AUDIT_KEY
    witness: Path | None = None


@dataclass(frozen=True)
class Verdict:
    """What ``converge audit verify`` found when the report was made, and with which keys."""

    report: Report
    at: datetime
    seconds: float
    checking: Checking

    @property
    def keys(self) -> list[KeyVersion]:
        return sorted(self.checking.trust.versions(), key=lambda v: (v.name, v.version))


def verdict(store: Store, checking: Checking) -> Verdict:
    """Verify the whole store now, as ``converge audit verify`` does."""
    started = time.perf_counter()
    report = verify_store(
        store, checking.trust, witness=checking.witness, audit_key=checking.audit_key
    )
    return Verdict(report, datetime.now(UTC), time.perf_counter() - started, checking)


def summary(payload: Mapping[str, Any]) -> str:
    """An entry's payload in one line for people: ``key=value`` pairs, lists by their length."""
    parts = []
    for key, value in sorted(payload.items()):
        shown = f"{len(value)} items" if isinstance(value, list) else value
        if isinstance(shown, dict):
            shown = json.dumps(shown, sort_keys=True, ensure_ascii=False)
        parts.append(f"{key}={shown}")
    return " ".join(parts)


def signers(origin: str | None, versions: Iterable[KeyVersion]) -> dict[str, str]:
    """Checkpoint signature key IDs (hex) of trusted key versions, as ``name vN``: a checkpoint
    is signed under the log's origin as key name (docs/audit.md)."""
    if origin is None:
        return {}
    return {note.key_id(origin, v.key).hex(): f"{v.name} v{v.version}" for v in versions}


# --- all of it -------------------------------------------------------------------------------

SHOWN_DECISIONS = 200
SHOWN_CHECKPOINTS = 100


@dataclass(frozen=True)
class Facts:
    """Everything the page shows."""

    decision: Decision
    scope: Scope
    made_at: datetime
    where: str
    origin: str | None
    plans: dict[str, list[PlanBody]]
    points: list[ScopedPoint]
    policies: list[PolicyUse]
    exceptions: list[WaiverUse]
    health: Health
    period_ms: int
    """The chart's period: the health's, or a whole number of its days."""
    runs: list[Run]
    dropped: list[AuditEntry]
    retention: list[AuditEntry]
    decisions: list[AuditEntry]
    checkpoints: list[SignedCheckpoint]
    verdict: Verdict | None


def gather(
    store: Store,
    decision: Decision,
    checking: Checking | None,
    controls: Mapping[str, Sequence[str]] | None,
    counted: Mapping[int, Readings] | None = None,
) -> Facts:
    """The facts of the report on ``decision``'s scope, read in one transaction (the batches in
    ``counted`` by their readings there), then the store's verification (when ``checking``
    says with which keys)."""
    scope = Scope.of(decision)
    with store.reading() as conn:
        plans = plans_of(conn, scope)
        points = list(scoped_points(scope, plans))
        period = _period(conn, scope)
        found = Facts(
            decision=decision,
            scope=scope,
            made_at=datetime.now(UTC),
            where=store.where,
            origin=reads.meta(conn, ORIGIN_KEY),
            plans=plans,
            points=points,
            policies=policies(points, controls),
            exceptions=exceptions(points),
            health=health(conn, scope.points, scope.span, min(period, DAY_MS), counted),
            period_ms=period,
            runs=runs(conn, scope),
            dropped=about_scope(conn, scope, ["batch.dropped"]),
            retention=about_scope(conn, scope, RETENTION_KINDS),
            decisions=decisions(conn, scope)[-SHOWN_DECISIONS:],
            checkpoints=checkpoints(conn),
            verdict=None,
        )
    return found if checking is None else replace(found, verdict=verdict(store, checking))


def _period(conn: Connection, scope: Scope) -> int:
    """The chart's period for the span the scope's batches cover within the range."""
    first, last = stored.extent(conn, list(scope.points))
    lo = max(filter(None, (first, scope.span.start)), default=None)
    hi = min(filter(None, (last, scope.span.end)), default=None)
    if lo is None or hi is None or hi <= lo:
        return DAY_MS
    return period_for(to_ms(hi) - to_ms(lo))
