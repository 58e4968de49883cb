"""The guard: the one function that decides every read, export and hold.

Default deny. A principal may act on a point when one of its roles is granted
the action by the point's plan (``access.read``, ``access.export``,
``access.hold``: the union of every governing policy's grants, merged into
the plan) and none of its roles is in the plan's ``access.deny``: deny
overrides any grant. The plan is the one in force when the data was stored
(each batch names its plan's digest), so a later policy change does not
rewrite who could see old data; data stored under several plans must be
allowed by each. A principal the resolver does not know, or one acted as from
an operating-system account it does not list, is denied everything; so is a request
refused before any grant is consulted (:attr:`Request.refusal`: a caller the read API
could not authenticate, a request it cannot answer as asked).

The decision names what decided it: the grant or deny, the plan, and the
policies that wrote it (``policy @ path:line:col``). Deciding reads no data
and costs microseconds; recording it is the caller's (every decision on data
is an audit entry, docs/access.md).
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

from engine.access.acting import refusal_of
from engine.plans.body import PlanBody
from engine.principals import Identity
from engine.sign.leaf import instant

Action = Literal["read", "export", "hold"]
ACTIONS: tuple[Action, ...] = ("read", "export", "hold")


@dataclass(frozen=True)
class Rule:
    """What decided one point: a grant, a deny, or the default (nothing granted)."""

    effect: Literal["allow", "deny"]
    why: str
    """In words: ``access.read grants qa``, ``access.deny denies contractor``, ..."""
    plan: str | None = None
    sources: tuple[str, ...] = ()
    """``policy @ path:line:col`` of each policy that wrote the deciding grant or deny."""

    def as_json(self) -> dict[str, Any]:
        return {
            "effect": self.effect,
            "why": self.why,
            "plan": self.plan,
            "sources": list(self.sources),
        }

    def __str__(self) -> str:
        if not self.plan:
            return self.why
        places = "".join(f"; {source}" for source in self.sources)
        return f"{self.why} (plan {self.plan[:19]}…{places})"


@dataclass(frozen=True)
class Target:
    """One point to decide on, with every plan its data was (or would be) stored under."""

    device: str
    point: str
    plans: Sequence[PlanBody]


@dataclass(frozen=True)
class PointDecision:
    device: str
    point: str
    allowed: bool
    rules: tuple[Rule, ...]
    """One per plan in force (the denying one first when denied)."""

    @property
    def reason(self) -> str:
        return str(self.rules[0]) if self.rules else "no plan names the point"


@dataclass(frozen=True)
class Request:
    """Who asks to do what, on which points, over which time range."""

    principal: str
    identity: Identity | None
    os_user: str
    action: Action
    targets: Sequence[Target]
    start: datetime | None = None
    end: datetime | None = None
    principals: str = ""
    """The digest of the principals the identity was resolved from."""
    refusal: str | None = None
    """Why the request is refused before any grant is consulted: a caller the read API could
    not authenticate, a request it cannot answer as asked (docs/access.md)."""


@dataclass(frozen=True)
class Decision:
    """The guard's answer to a request, with an id and everything its audit entry says."""

    request: Request
    points: tuple[PointDecision, ...]
    refusal: str | None = None
    """Why the principal itself is refused (unknown, wrong account), if it is."""
    id: str = field(default_factory=lambda: str(uuid.uuid4()))
    at: datetime = field(default_factory=lambda: datetime.now(UTC))

    @property
    def allowed(self) -> tuple[PointDecision, ...]:
        return tuple(p for p in self.points if p.allowed)

    @property
    def denied(self) -> tuple[PointDecision, ...]:
        return tuple(p for p in self.points if not p.allowed)

    def refusals(self, shown: int = 5) -> str:
        """The refused points with their reasons, for a refusal's message: the first
        ``shown`` named, the rest counted ("" when none was refused)."""
        denied = self.denied
        said = "; ".join(f"{p.device}/{p.point}: {p.reason}" for p in denied[:shown])
        return said + (f"; and {len(denied) - shown} more" if len(denied) > shown else "")

    @property
    def outcome(self) -> Literal["allow", "partial", "deny"]:
        if not self.denied and self.points:
            return "allow"
        return "partial" if self.allowed else "deny"

    def payload(self) -> dict[str, Any]:
        """The ``access.decision`` audit entry's payload (docs/access.md)."""
        r = self.request
        return {
            "decision": self.id,
            "action": r.action,
            "principal": r.principal,
            "roles": sorted(r.identity.roles) if r.identity else [],
            "principals": r.principals,
            "from": instant(r.start) if r.start else None,
            "to": instant(r.end) if r.end else None,
            "outcome": self.outcome,
            "refusal": self.refusal,
            "points": [
                {
                    "device": p.device,
                    "point": p.point,
                    "allowed": p.allowed,
                    "rules": [rule.as_json() for rule in p.rules],
                }
                for p in self.points
            ],
        }


def decide(request: Request) -> Decision:
    """Decide ``request``: default deny, deny overrides, every plan in force must allow."""
    refusal = request.refusal or _refusal(request)
    if refusal is not None:
        denied = Rule("deny", refusal)
        points = tuple(PointDecision(t.device, t.point, False, (denied,)) for t in request.targets)
        return Decision(request, points, refusal)
    assert request.identity is not None
    roles = request.identity.roles
    return Decision(request, tuple(_point(t, roles, request.action) for t in request.targets))


def _refusal(request: Request) -> str | None:
    return refusal_of(request.principal, request.identity, request.os_user)


def _point(target: Target, roles: frozenset[str], action: Action) -> PointDecision:
    rules = [_rule(plan, target.point, roles, action) for plan in target.plans]
    rules.sort(key=lambda rule: rule.effect != "deny")
    allowed = bool(rules) and all(rule.effect == "allow" for rule in rules)
    return PointDecision(target.device, target.point, allowed, tuple(rules))


def _rule(plan: PlanBody, name: str, roles: frozenset[str], action: Action) -> Rule:
    point = plan.point.get(name)
    if point is None:
        return Rule("deny", f"plan of {plan.device.id} does not name point {name}", plan.digest)
    access = point.access
    denied = roles.intersection(access.deny)
    if denied:
        return Rule(
            "deny",
            f"access.deny denies {', '.join(sorted(denied))}",
            plan.digest,
            _sources(point.provenance, "access.deny"),
        )
    granted = roles.intersection(getattr(access, action))
    if granted:
        return Rule(
            "allow",
            f"access.{action} grants {', '.join(sorted(granted))}",
            plan.digest,
            _sources(point.provenance, f"access.{action}"),
        )
    held = ", ".join(sorted(roles)) or "no role"
    return Rule("deny", f"no access.{action} grant to {held} (default deny)", plan.digest)


def _sources(provenance: Any, facet: str) -> tuple[str, ...]:
    return tuple(f"{s.policy} @ {s.at}" for s in provenance.get(facet, ()))
