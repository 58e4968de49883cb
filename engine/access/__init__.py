"""Stage access: who may read, export and hold what, decided by one guard, every decision logged.

- :mod:`~engine.access.guard`: the one function that decides (default deny,
  deny overrides any grant, the plan in force when the data was stored);
- :mod:`~engine.access.data`: the plans a request is decided on, and the
  records an allowed request reads, each with its batch and whether that
  batch verifies.

:func:`ask` turns who asks for what into a decision; :func:`record` makes it
an ``access.decision`` audit entry (every decision on data is one, allowed or
denied: this cannot be switched off). Principals come from a
:class:`~engine.principals.PrincipalResolver`. See docs/access.md.
"""

from __future__ import annotations

import socket
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import Connection

from engine.access.data import Range, targets
from engine.access.guard import Action, Decision, Request, decide
from engine.audit import Actor, os_user
from engine.principals import PrincipalResolver
from engine.sign.leaf import instant
from engine.store.store import Store


@dataclass(frozen=True)
class Question:
    """Who asks to do what, on which points (all of them: ``None``) of which devices, when."""

    principal: str
    action: Action
    devices: Sequence[str]
    points: Sequence[str] | None = None
    start: datetime | None = None
    end: datetime | None = None


def ask(conn: Connection, resolver: PrincipalResolver, question: Question) -> Decision:
    """The guard's decision on ``question``, asked by this process's operating-system account."""
    q = question
    span = Range(instant(q.start) if q.start else None, instant(q.end) if q.end else None)
    request = Request(
        principal=q.principal,
        identity=resolver.resolve(q.principal),
        os_user=os_user(),
        action=q.action,
        targets=[t for device in q.devices for t in targets(conn, device, q.points, span)],
        start=q.start,
        end=q.end,
        principals=resolver.digest,
    )
    return decide(request)


def actor_of(decision: Decision) -> Actor:
    """Who the decision's audit entry is by: the principal as it asked (its roles, if known)."""
    r = decision.request
    roles = tuple(sorted(r.identity.roles)) if r.identity else ()
    return Actor("principal", r.principal, r.os_user, socket.gethostname(), roles, r.principals)


def record(store: Store, decision: Decision, via: Mapping[str, str] | None = None) -> None:
    """Make ``decision`` an ``access.decision`` audit entry, dated when it was made; ``via``
    says how a request through the read API came (its endpoint, client and credential)."""
    payload = decision.payload() | ({"via": dict(via)} if via else {})
    store.log("access.decision", payload, instant(decision.at), actor_of(decision))


__all__ = ["Question", "Range", "actor_of", "ask", "record"]
