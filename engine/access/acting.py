"""Acting as a principal: who a command runs for, checked before it acts.

``--as PRINCIPAL`` names the principal; the principal must be known to the
principals, and when its entry lists ``os_users`` the operating-system
account running the command must be one of them. The result is the
:class:`~engine.audit.Actor` the command's audit entries name, or a
:class:`Refusal` the command records (as an ``access.decision`` entry) before
it refuses, so that an attempt is evidence too.
"""

from __future__ import annotations

import socket
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from engine.audit import Actor, os_user
from engine.principals import Identity, PrincipalResolver
from engine.sign.leaf import instant


@dataclass(frozen=True)
class Refusal:
    """Why a principal may not act, with what its audit entry records."""

    actor: Actor
    reason: str
    payload: dict[str, Any]


def act_as(resolver: PrincipalResolver, principal: str, what: str) -> Actor | Refusal:
    """The actor ``principal`` acts as for ``what`` (a command's action), or why it may not."""
    identity = resolver.resolve(principal)
    account, host = os_user(), socket.gethostname()
    roles = tuple(sorted(identity.roles)) if identity else ()
    actor = Actor("principal", principal, account, host, roles, resolver.digest)
    reason = refusal_of(principal, identity, account)
    if reason is None:
        return actor
    payload = {
        "decision": str(uuid.uuid4()),
        "action": what,
        "principal": principal,
        "roles": list(roles),
        "principals": resolver.digest,
        "outcome": "deny",
        "refusal": reason,
        "at": instant(datetime.now(UTC)),
        "points": [],
    }
    return Refusal(actor, reason, payload)


def refusal_of(principal: str, identity: Identity | None, account: str) -> str | None:
    """Why ``principal`` may not act from ``account``: unknown, or the account not listed."""
    if identity is None:
        return f"principal {principal} is unknown to the principals"
    if identity.os_users and account not in identity.os_users:
        return (
            f"the operating-system account {account} may not act as {principal} (it lists"
            f" {', '.join(identity.os_users)})"
        )
    return None
