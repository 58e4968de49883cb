"""MQTT subscriptions, plan problems and the topic-filter check."""

from __future__ import annotations

from typing import Any

import pytest
from plugin_builders import device, planned, planned_from_sample, readme_json_blocks, readme_sample

from engine.model import PlannedPoint, ReadGroupPlan
from plugins.mqtt.plan import plan_read_groups
from plugins.mqtt.schema import address_problems

BROKER = {"broker": "mqtt://broker:1883"}


def plan(points: list[PlannedPoint], endpoint: dict[str, Any] | None = None) -> ReadGroupPlan:
    return plan_read_groups(device("mqtt", points, endpoint or BROKER), points)


def test_readme_sample_gives_the_documented_subscription():
    sample = readme_sample("mqtt")[0]
    result = plan(planned_from_sample(sample), sample["endpoint"])
    assert readme_json_blocks("mqtt")[0] in result.groups
    assert [g["topic"] for g in result.groups] == [
        "plant/boiler/burner/state",
        "plant/boiler/steam_flow",
        "plant/boiler/telemetry",
    ]
    assert result.problems == []


def test_one_subscription_per_topic_with_the_shortest_interval():
    points = [
        planned("temp", {"topic": "b/telemetry", "field": "temp"}, every_ms=10_000),
        planned("state", {"topic": "a/+/state"}, every_ms=None, cron=("0 * * * *",)),
        planned("pressure", {"topic": "b/telemetry", "field": "pressure"}, every_ms=2_000),
    ]
    assert plan(points, {**BROKER, "qos": 2}).groups == [
        {"kind": "subscribe", "topic": "a/+/state", "qos": 2, "points": ["state"]},
        {
            "kind": "subscribe",
            "topic": "b/telemetry",
            "qos": 2,
            "points": ["temp", "pressure"],
            "expect_every_ms": 2_000,
        },
    ]


def test_qos_defaults_to_1():
    assert plan([planned("p", {"topic": "t"})]).groups[0]["qos"] == 1


def test_same_field_of_the_same_topic_twice_is_a_duplicate_source():
    points = [
        planned("flow", {"topic": "boiler/steam", "field": "value"}),
        planned("flow_again", {"topic": "boiler/steam", "field": "value"}),
        planned("raw", {"topic": "boiler/steam"}),
        planned("raw_again", {"topic": "boiler/steam", "payload": "raw"}),
    ]
    result = plan(points)
    assert [(p.point, p.code) for p in result.problems] == [
        ("flow_again", "mqtt-duplicate-source"),
        ("raw_again", "mqtt-duplicate-source"),
    ]
    assert [p.message for p in result.problems] == [
        "point 'flow_again' reads field 'value' of topic 'boiler/steam',"
        " which point 'flow' already reads",
        "point 'raw_again' reads the raw payload of topic 'boiler/steam',"
        " which point 'raw' already reads",
    ]


@pytest.mark.parametrize(
    "address",
    [
        {"topic": "plant/boiler/steam_flow", "field": "value"},
        {"topic": "plant/+/temp", "field": "data.temp", "timestamp_field": "ts"},
        {"topic": "plant/#"},
        {"topic": "#"},
        {"topic": "+"},
        {"topic": "$SYS/broker/uptime", "payload": "raw"},
        {"topic": "a//b"},
    ],
)
def test_valid_addresses(address: dict[str, Any]):
    assert address_problems(address) == []


@pytest.mark.parametrize(
    ("address", "problem"),
    [
        (
            {"topic": "plant/temp+"},
            "topic 'plant/temp+': '+' must be a whole level, as in 'plant/+/temp', not 'temp+'",
        ),
        (
            {"topic": "plant/#/temp"},
            "topic 'plant/#/temp': '#' matches everything below it, so it must be the last level",
        ),
        ({"topic": "plant/boiler#"}, "'#' must be a whole level, as in 'plant/#', not 'boiler#'"),
        ({"topic": "a\0b"}, "contains the NUL character"),
        ({"topic": "x" * 65536}, "topic is longer than 65535 bytes"),
        (
            {"topic": "t", "field": "value", "payload": "raw"},
            "field reads a JSON payload, but payload is raw",
        ),
        (
            {"topic": "t", "timestamp_field": "ts"},
            "timestamp_field reads a JSON payload, but payload is raw",
        ),
    ],
)
def test_invalid_addresses_say_why(address: dict[str, Any], problem: str):
    problems = address_problems(address)
    assert len(problems) == 1
    assert problem in problems[0]
