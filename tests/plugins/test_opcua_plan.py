"""OPC UA read groups, plan problems and the NodeId check."""

from __future__ import annotations

from typing import Any

import pytest
from plugin_builders import device, planned, planned_from_sample, readme_json_blocks, readme_sample

from engine.model import PlannedPoint, ReadGroupPlan
from plugins.opcua.plan import plan_read_groups
from plugins.opcua.schema import address_problems

URL = {"url": "opc.tcp://filler:4840/"}


def plan(
    points: list[PlannedPoint], endpoint: dict[str, Any] | None = None, **limits: Any
) -> ReadGroupPlan:
    return plan_read_groups(device("opcua", points, endpoint or URL, **limits), points)


def node(name: str, node_id: str, **schedule: Any) -> PlannedPoint:
    return planned(name, {"node": node_id}, **schedule)


def test_readme_sample_gives_the_documented_groups():
    sample = readme_sample("opcua")[0]
    points = [
        planned(p.point.name, p.point.address, every_ms=None, deadband=0.2)
        if p.point.name == "DOOR_STATE"
        else p
        for p in planned_from_sample(sample)
    ]
    result = plan(points, sample["endpoint"], **sample["limits"])
    assert result.groups == readme_json_blocks("opcua")
    assert result.problems == []


def test_mode_defaults_to_subscribe_exactly_when_a_deadband_is_set():
    points = [
        node("polled", "ns=2;i=1"),
        node("on_change", "ns=2;i=2", deadband=0.5),
        planned("forced_read", {"node": "ns=2;i=3", "mode": "read"}, deadband=0.5),
        planned("forced_subscribe", {"node": "ns=2;i=4", "mode": "subscribe"}),
    ]
    kinds = {name: g["kind"] for g in plan(points).groups for name in g["points"]}
    assert kinds == {
        "polled": "read",
        "on_change": "subscribe",
        "forced_read": "read",
        "forced_subscribe": "subscribe",
    }


def test_reads_are_grouped_by_schedule_and_cut_at_max_nodes_per_read():
    points = [node(f"p{i}", f"ns=2;i={i}") for i in range(250)]
    points.append(node("hourly", "ns=2;s=Counter", every_ms=None, cron=("0 * * * *",)))
    groups = plan(points).groups
    assert [len(g["nodes"]) for g in groups] == [100, 100, 50, 1]
    assert groups[0]["nodes"][:2] == ["ns=2;i=0", "ns=2;i=1"]
    assert groups[3] == {
        "kind": "read",
        "cron": ["0 * * * *"],
        "nodes": ["ns=2;s=Counter"],
        "points": ["hourly"],
    }
    assert [len(g["nodes"]) for g in plan(points[:5], max_nodes_per_read=2).groups] == [2, 2, 1]


def test_one_subscription_per_publishing_interval_and_deadband():
    points = [
        node("a", "ns=2;i=1", every_ms=1000, deadband=0.1),
        node("b", "ns=2;i=2", every_ms=None, deadband=0.1),
        node("c", "ns=2;i=3", every_ms=500, deadband=0.1),
        node("d", "ns=2;i=4", every_ms=1000, deadband=2.0),
        planned("e", {"node": "ns=2;i=5", "mode": "subscribe"}, every_ms=1000),
    ]
    summary = [
        (g["publishing_interval_ms"], g.get("deadband"), g["points"]) for g in plan(points).groups
    ]
    assert summary == [
        (500, 0.1, ["c"]),
        (1000, None, ["e"]),
        (1000, 0.1, ["a", "b"]),
        (1000, 2.0, ["d"]),
    ]
    assert "deadband" not in plan(points).groups[1]


def test_duplicate_node_names_both_points_even_in_another_spelling():
    points = [
        node("server_state", "i=2259"),
        node("state_again", "ns=0;i=2259"),
        node("ok", "ns=1;i=2259"),
    ]
    result = plan(points)
    assert [(p.point, p.code) for p in result.problems] == [("state_again", "opcua-duplicate-node")]
    assert result.problems[0].message == (
        "point 'state_again' reads node 'ns=0;i=2259', which point 'server_state' already reads"
    )


@pytest.mark.parametrize(
    ("endpoint", "problem"),
    [
        ({"security_mode": "Sign"}, "security_mode Sign needs a security_policy other than None"),
        (
            {"security_mode": "SignAndEncrypt", "security_policy": "None"},
            "security_mode SignAndEncrypt needs",
        ),
        (
            {"security_policy": "Basic256Sha256"},
            "security_policy Basic256Sha256 has no effect with security_mode None",
        ),
    ],
)
def test_security_mode_and_policy_must_fit_together(endpoint: dict[str, Any], problem: str):
    result = plan([node("p", "i=85")], {**URL, **endpoint})
    assert [(p.point, p.code) for p in result.problems] == [(None, "opcua-security-policy")]
    assert result.problems[0].message.startswith(problem)


def test_signed_and_encrypted_endpoint_is_fine():
    endpoint = {**URL, "security_mode": "SignAndEncrypt", "security_policy": "Aes256_Sha256_RsaPss"}
    assert plan([node("p", "i=85")], endpoint).problems == []


@pytest.mark.parametrize(
    "node_id",
    [
        "ns=2;s=Filler2.PT201.PV",
        "ns=2;s=with spaces; and = signs",
        "ns=65535;i=4294967295",
        "i=2259",
        "s=NoNamespace",
        "ns=3;g=72962B91-FA75-4AE6-8D28-B404DC7DAF63",
        "ns=1;b=TG9ULTQy",
    ],
)
def test_valid_node_ids(node_id: str):
    assert address_problems({"node": node_id}) == []


@pytest.mark.parametrize(
    ("node_id", "problem"),
    [
        (
            "Filler2.PT201.PV",
            "node 'Filler2.PT201.PV' is not a NodeId in OPC UA text form, such as",
        ),
        ("ns=2;x=5", "node 'ns=2;x=5' is not a NodeId in OPC UA text form"),
        ("ns=2,s=A", "is not a NodeId in OPC UA text form"),
        ("nsu=http://example.com/;s=A", "is not a NodeId in OPC UA text form"),
        ("ns=70000;i=1", "node 'ns=70000;i=1': namespace 70000 is above 65535"),
        ("ns=2;i=12a", "node 'ns=2;i=12a': numeric identifier '12a' is not a whole number"),
        ("i=4294967296", "numeric identifier 4294967296 is above 4294967295"),
        ("ns=2;s=", "node 'ns=2;s=': the string identifier is empty"),
        ("ns=2;g=1234", "'1234' is not a GUID such as"),
        ("ns=2;b=not base64!", "opaque identifier 'not base64!' is not non-empty base64"),
        ("ns=2;b=", "is not non-empty base64"),
    ],
)
def test_invalid_node_ids_say_why(node_id: str, problem: str):
    problems = address_problems({"node": node_id})
    assert len(problems) == 1
    assert problem in problems[0]
