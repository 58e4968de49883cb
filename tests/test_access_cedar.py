"""A differential test of the guard against Cedar, the policy language AWS built for this.

Generated points carry generated grants (``access.read``, ``export``, ``hold``)
and denies; they are translated into Cedar policies (a ``permit`` per granted
role and action, a ``forbid`` per denied role and any action) and generated
principals with generated roles ask for generated actions. Cedar's semantics
are the guard's: default deny, forbid overrides permit. Every decision must
agree. ``cedarpy`` is a test oracle only (the ``dev`` extra).
"""

from __future__ import annotations

import cedarpy
from hypothesis import given, settings
from hypothesis import strategies as st

from engine.access.guard import ACTIONS, Request, Target, decide
from engine.audit import os_user
from engine.principals import Identity
from engine.testkit import plan_of

ROLES = ["qa", "auditor", "process-engineering", "contractor", "hr-analytics", "ot-security"]
roles = st.lists(st.sampled_from(ROLES), unique=True, max_size=4)
grants = st.fixed_dictionaries(
    {
        "read": roles,
        "export": roles,
        "hold": roles,
        "deny": st.lists(st.sampled_from(ROLES), unique=True, max_size=2),
    }
)
points = st.lists(grants, min_size=1, max_size=4)
principals = st.lists(roles, min_size=1, max_size=4)


def cedar_policies(device: str, access: list[dict[str, list[str]]]) -> str:
    lines = []
    for index, point in enumerate(access):
        resource = f'Point::"{device}/p{index}"'
        for action in ACTIONS:
            for role in point[action]:
                lines.append(
                    f'permit(principal in Role::"{role}", action == Action::"{action}",'
                    f" resource == {resource});"
                )
        for role in point["deny"]:
            lines.append(f'forbid(principal in Role::"{role}", action, resource == {resource});')
    return "\n".join(lines)


def cedar_entities(held: list[list[str]]) -> list[dict]:
    def uid(kind: str, name: str) -> dict:
        return {"__entity": {"type": kind, "id": name}}

    people = [
        {"uid": uid("User", f"u{i}"), "attrs": {}, "parents": [uid("Role", r) for r in rs]}
        for i, rs in enumerate(held)
    ]
    return people + [{"uid": uid("Role", r), "attrs": {}, "parents": []} for r in ROLES]


@settings(max_examples=150)
@given(access=points, held=principals)
def test_the_guard_decides_as_cedar_does(access, held):
    plan = plan_of(
        {
            "device": {"id": "d"},
            "points": [{"name": f"p{i}", "address": {}, "access": a} for i, a in enumerate(access)],
        }
    )
    policies, entities = cedar_policies("d", access), cedar_entities(held)
    for who, role_list in enumerate(held):
        identity = Identity(f"u{who}", "person", frozenset(role_list))
        for action in ACTIONS:
            for index in range(len(access)):
                ours = decide(
                    Request(
                        f"u{who}", identity, os_user(), action, [Target("d", f"p{index}", [plan])]
                    )
                )
                theirs = cedarpy.is_authorized(
                    {
                        "principal": f'User::"u{who}"',
                        "action": f'Action::"{action}"',
                        "resource": f'Point::"d/p{index}"',
                        "context": {},
                    },
                    policies,
                    entities,
                )
                assert (ours.outcome == "allow") == theirs.allowed, (
                    f"u{who} {role_list} {action} p{index} {access[index]}: guard "
                    f"{ours.outcome} ({ours.points[0].reason}), cedar {theirs.decision}"
                )
