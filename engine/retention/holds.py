"""Legal holds: placed and released by a principal the guard allows (``access.hold``).

A hold covers devices (all, when none is named), point-name globs (all, when
none) and a time range, as the guard decided them when it was placed: exactly
the (device, point) pairs its decision allowed (``held`` in its ``hold.placed``
entry), never a device or point deployed later. It suspends the deletion of
what it covers, whatever the policies say, until it is released; it also
covers data of those pairs stored after it was placed. Placing and releasing
are decided by the guard on every point the hold covers, under the plans in
force for its range (deny overrides, default deny: a principal needs an
``access.hold`` grant on all of them); a release on the pairs of the hold's
``hold.placed`` entry, not its writable row. The
decision (``access.decision``), the entry (``hold.placed``, ``hold.released``)
and the hold's row are written in one transaction with a checkpoint signed by
the log's key (:meth:`Store.signed <engine.store.store.Store.signed>`): a hold
entry never waits in the unsigned tail, where anyone who can write the
database could have put it. A refusal is recorded alone. A hold is never
deleted.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from fnmatch import fnmatchcase
from functools import partial

from sqlalchemy import Connection

from engine.access import actor_of, record
from engine.access.acting import Refusal, act_as
from engine.access.data import Range, plans_in_force
from engine.access.guard import Decision, Request, Target, decide
from engine.audit import Actor, os_user, seal_with
from engine.errors import AccessDenied, RetentionError
from engine.keys import KeyStore
from engine.principals import PrincipalResolver
from engine.sign.leaf import instant, point_of
from engine.store import auditlog, data
from engine.store import retention as stored
from engine.store.retention import Hold, Scope
from engine.store.store import Store
from engine.verify.retention import HOLD_KINDS, HoldBook


class HoldRefused(RetentionError):
    """A hold that cannot be placed or released as asked: nothing was changed."""


@dataclass(frozen=True)
class Placed:
    """A hold placed: its id, the decision that allowed it, and the receipts of data in its
    scope that was deleted before it (a hold cannot bring them back)."""

    id: int
    decision: Decision
    deleted_before: tuple[int, ...]


def place(
    store: Store,
    resolver: PrincipalResolver,
    principal: str,
    scope: Scope,
    reason: str,
    *,
    keys: KeyStore,
) -> Placed:
    """Place a hold on ``scope`` for ``principal``, signed with the log's key in ``keys`` (see
    the module)."""
    actor = _acting(store, resolver, principal, "hold")
    seal_with(keys, store.audit_key, datetime.now(UTC))  # the key can sign: asked first
    decision = _decide(store, resolver, principal, scope)
    now = datetime.now(UTC)
    with store.reading() as conn:
        deleted = _receipts(conn, scope)
        gone = deleted and not _open_ended(scope, now) and not _anything_left(conn, scope)
    if gone:
        record(store, decision)
        raise HoldRefused(
            f"nothing left to hold: what the hold would cover was deleted already, by the "
            f"deletion receipt{'s' if len(deleted) > 1 else ''} (audit entr"
            f"{'ies' if len(deleted) > 1 else 'y'} {_seqs(deleted)}); a hold cannot bring "
            "deleted records back"
        )
    held = replace(scope, held=frozenset((p.device, p.point) for p in decision.allowed))
    with store.signed(partial(seal_with, keys, store.audit_key)) as conn:
        _record(conn, decision)
        at = instant(datetime.now(UTC))
        seq = auditlog.size(conn)
        hold_id = stored.add_hold(conn, scope, reason=reason, placed_by=principal, at=at, seq=seq)
        said = {"hold": hold_id, **scope.as_json(), "held": held.held_json(), "reason": reason,
                "decision": decision.id}  # fmt: skip
        auditlog.append(conn, "hold.placed", actor, said, at)
    return Placed(hold_id, decision, tuple(deleted))


def release(
    store: Store,
    resolver: PrincipalResolver,
    principal: str,
    hold_id: int,
    reason: str,
    *,
    keys: KeyStore,
) -> Hold:
    """Release hold ``hold_id`` for ``principal``, signed with the log's key in ``keys``; the
    hold as its entries state it."""
    actor = _acting(store, resolver, principal, "release")
    seal_with(keys, store.audit_key, datetime.now(UTC))  # the key can sign: asked first
    with store.reading() as conn:
        found = _releasable(conn, hold_id)
    decision = _decide(store, resolver, principal, found.scope)
    with store.signed(partial(seal_with, keys, store.audit_key)) as conn:
        _releasable(conn, hold_id)  # released meanwhile?
        _record(conn, decision)
        at = instant(datetime.now(UTC))
        seq = auditlog.size(conn)
        stored.release(conn, hold_id, reason=reason, by=principal, at=at, seq=seq)
        said = {"hold": hold_id, "reason": reason, "decision": decision.id}
        auditlog.append(conn, "hold.released", actor, said, at)
    return found


def _record(conn: Connection, decision: Decision) -> None:
    """The allowing decision's ``access.decision`` entry, in the hold's own transaction."""
    auditlog.append(
        conn, "access.decision", actor_of(decision), decision.payload(), instant(decision.at)
    )


def _acting(store: Store, resolver: PrincipalResolver, principal: str, what: str) -> Actor:
    """The principal's actor, or (recorded first) its refusal."""
    acting = act_as(resolver, principal, what)
    if isinstance(acting, Refusal):
        store.log("access.decision", acting.payload, actor=acting.actor)
        raise AccessDenied(acting.reason)
    return acting


def _releasable(conn: Connection, hold_id: int) -> Hold:
    """The hold as its entries state it (its scope as placed), if it is in force."""
    book = HoldBook()
    book.read(auditlog.entries(conn, sorted(HOLD_KINDS)))
    found = book.holds.get(hold_id)
    if found is None:
        raise HoldRefused(f"there is no hold {hold_id} in this store (converge hold list)")
    if not found.in_force:
        raise HoldRefused(
            f"hold {hold_id} was released already, by {found.released_by} at "
            f"{found.released_at} (audit entry {found.released_seq})"
        )
    return found


def _decide(store: Store, resolver: PrincipalResolver, principal: str, scope: Scope) -> Decision:
    """The guard's ``hold`` decision on every point ``scope`` covers, recorded; refused unless
    it allows them all."""
    with store.reading() as conn:
        targets = hold_targets(conn, scope)
    request = Request(
        principal,
        resolver.resolve(principal),
        os_user(),
        "hold",
        targets,
        _moment(scope.start),
        _moment(scope.end),
        resolver.digest,
    )
    decision = decide(request)
    if decision.denied:
        record(store, decision)
        said = "; ".join(f"{p.device}/{p.point}: {p.reason}" for p in decision.denied[:5])
        more = f" and {len(decision.denied) - 5} more" if len(decision.denied) > 5 else ""
        raise AccessDenied(
            f"{principal} may not hold what the hold covers ({said}{more}; decision {decision.id})"
        )
    return decision


def hold_targets(conn: Connection, scope: Scope) -> list[Target]:
    """Every point ``scope`` covers, with the plans in force for its range: of a hold placed,
    the pairs its decision allowed (``held``), whatever was deployed since; raises
    HoldRefused for a device with no stored plan, or a glob that matches no point."""
    span = Range(scope.start, scope.end)
    if scope.held is not None:
        devices = sorted({device for device, _ in scope.held})
        in_force = {device: plans_in_force(conn, device, span) for device in devices}
        return [Target(d, p, in_force[d]) for d, p in sorted(scope.held)]
    found: list[Target] = []
    for device in scope.devices or data.devices(conn):
        plans = plans_in_force(conn, device, span)
        if not plans:
            raise HoldRefused(f"device {device} has no plan in this store: nothing to hold")
        names = sorted({p.name for plan in plans for p in plan.points})
        for glob in scope.points:
            if not any(fnmatchcase(name, glob) for name in names):
                raise HoldRefused(f"--point {glob} matches no point of device {device}")
        picked = [
            n for n in names if not scope.points or any(fnmatchcase(n, g) for g in scope.points)
        ]
        found.extend(Target(device, name, plans) for name in picked)
    return found


def _receipts(conn: Connection, scope: Scope) -> list[int]:
    """The deletion receipts that removed records of points ``scope`` covers."""
    return [
        entry.seq
        for entry in auditlog.entries(conn, ["retention.deleted"])
        if any(
            scope.covers(
                str(p.get("device")),
                str(p.get("point")),
                str(entry.payload.get("window_start")),
                str(entry.payload.get("window_end")),
            )
            for p in entry.payload.get("points", ())
        )
    ]


def _open_ended(scope: Scope, now: datetime) -> bool:
    """Whether records stored from now on can fall in the scope's range."""
    return scope.end is None or scope.end > instant(now)


def _anything_left(conn: Connection, scope: Scope) -> bool:
    """Whether the store still holds a record the scope covers."""
    for device in scope.devices or data.devices(conn):
        for batch in data.batches(conn, device, scope.start, scope.end):
            for _, leaf in data.leaves(conn, batch.id):
                if scope.covers(device, point_of(leaf), batch.window_start, batch.window_end):
                    return True
    return False


def _seqs(seqs: Sequence[int]) -> str:
    shown = ", ".join(str(s) for s in seqs[:10])
    return shown + (f" and {len(seqs) - 10} more" if len(seqs) > 10 else "")


def _moment(text: str | None) -> datetime | None:
    return None if text is None else datetime.fromisoformat(text)


__all__ = ["HoldRefused", "Placed", "hold_targets", "place", "release"]
