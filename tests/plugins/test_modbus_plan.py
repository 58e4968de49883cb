"""Modbus read groups and plan problems, as a user reads them in the plan."""

from __future__ import annotations

from typing import Any

import pytest
from plugin_builders import device, planned, planned_from_sample, readme_json_blocks, readme_sample

from engine.model import PlannedPoint, ReadGroupPlan
from plugins.modbus.plan import plan_read_groups


def plan(
    points: list[PlannedPoint], endpoint: dict[str, Any] | None = None, **limits: Any
) -> ReadGroupPlan:
    return plan_read_groups(device("modbus", points, endpoint or {"host": "plc"}, **limits), points)


def u16(name: str, register: int, **extra: Any) -> PlannedPoint:
    return planned(name, {"table": "holding", "register": register, "type": "uint16", **extra})


def spans(result: ReadGroupPlan) -> list[tuple[str, int, int]]:
    return [(g["table"], g["start"], g["count"]) for g in result.groups]


def codes(result: ReadGroupPlan) -> list[tuple[str | None, str]]:
    return [(p.point, p.code) for p in result.problems]


def test_readme_sample_gives_the_documented_groups():
    sample = readme_sample("modbus")[0]
    points = planned_from_sample(sample)
    result = plan(points, sample["endpoint"], max_gap=2)
    assert result.groups == readme_json_blocks("modbus")[0]
    assert result.problems == []


def test_readme_sample_without_max_gap_splits_at_the_hole():
    sample = readme_sample("modbus")[0]
    result = plan(planned_from_sample(sample), sample["endpoint"])
    holding = [(g["start"], g["count"]) for g in result.groups if g["table"] == "holding"]
    assert holding[:2] == [(100, 4), (106, 5)]


def test_sparse_map_reads_each_island_by_default():
    points = [u16("a", 0), u16("b", 10), u16("c", 20)]
    result = plan(points)
    assert spans(result) == [("holding", 0, 1), ("holding", 10, 1), ("holding", 20, 1)]
    assert all(g["unused"] == [] for g in result.groups)


def test_max_gap_bridges_holes_up_to_its_size():
    points = [u16("a", 0), u16("b", 10), u16("c", 20), u16("d", 31)]
    result = plan(points, max_gap=9)
    assert spans(result) == [("holding", 0, 21), ("holding", 31, 1)]
    assert result.groups[0]["unused"] == [*range(1, 10), *range(11, 20)]
    assert result.groups[0]["points"] == ["a", "b", "c"]


def test_float_straddling_the_125_register_boundary_starts_a_new_group():
    points = [u16(f"r{i}", i) for i in range(124)]
    points.append(planned("flow", {"table": "holding", "register": 124, "type": "float32"}))
    result = plan(points)
    assert spans(result) == [("holding", 0, 124), ("holding", 124, 2)]
    assert result.groups[1]["points"] == ["flow"]


def test_device_limit_caps_requests_and_protocol_maximum_caps_the_limit():
    points = [u16(f"r{i}", i) for i in range(300)]
    assert [g["count"] for g in plan(points, max_registers_per_read=100).groups] == [100] * 3
    assert [g["count"] for g in plan(points, max_registers_per_read=500).groups] == [125, 125, 50]


def test_coils_are_grouped_by_max_bits_per_read():
    points = [planned(f"c{i}", {"table": "coil", "register": i}) for i in range(15)]
    result = plan(points, max_bits_per_read=10)
    assert [(g["start"], g["count"], g["function"]) for g in result.groups] == [
        (0, 10, 1),
        (10, 5, 1),
    ]
    assert len(plan(points).groups) == 1


def test_bits_of_one_register_share_it():
    points = [
        planned("run", {"table": "holding", "register": 7, "type": "bool", "bit": 0}),
        planned("fault", {"table": "holding", "register": 7, "type": "bool", "bit": 3}),
        u16("speed", 8),
    ]
    result = plan(points)
    assert result.problems == []
    assert spans(result) == [("holding", 7, 2)]
    assert result.groups[0]["points"] == ["run", "fault", "speed"]


def test_groups_split_by_unit_table_and_schedule_in_a_fixed_order():
    points = [
        u16("slow", 1, unit=1),
        planned("fast", {"table": "holding", "register": 0, "type": "uint16"}, every_ms=1000),
        planned(
            "hourly",
            {"table": "holding", "register": 2, "type": "uint16"},
            every_ms=None,
            cron=("0 * * * *", "0 * * * *"),
        ),
        planned("level", {"table": "input", "register": 0, "type": "int16"}),
        u16("gateway", 0, unit=7),
    ]
    result = plan(points, {"host": "gw", "unit": 3})
    summary = [
        (g["unit"], g["table"], g.get("every_ms"), g.get("cron"), g["points"])
        for g in result.groups
    ]
    assert summary == [
        (1, "holding", 5000, None, ["slow"]),
        (3, "holding", 1000, None, ["fast"]),
        (3, "holding", None, ["0 * * * *"], ["hourly"]),
        (3, "input", 5000, None, ["level"]),
        (7, "holding", 5000, None, ["gateway"]),
    ]
    assert "cron" not in result.groups[0]
    assert "every_ms" not in result.groups[2]


def test_points_are_listed_in_address_order_whatever_the_inventory_order():
    points = [u16("c", 2), u16("a", 0), u16("b", 1)]
    assert plan(points).groups[0]["points"] == ["a", "b", "c"]


def test_string_spans_its_length():
    points = [
        planned("batch", {"table": "holding", "register": 10, "type": "string", "length": 8}),
        u16("next", 18),
    ]
    assert spans(plan(points)) == [("holding", 10, 9)]


def test_overlapping_points_are_both_named():
    points = [
        planned("TT101_PV", {"table": "holding", "register": 100, "type": "float32"}),
        u16("TT101_ALARM", 101),
    ]
    result = plan(points)
    assert codes(result) == [("TT101_ALARM", "modbus-overlap")]
    message = result.problems[0].message
    assert "'TT101_ALARM' (holding register 101 as uint16 on unit 1)" in message
    assert "'TT101_PV' (holding registers 100-101 as float32 on unit 1)" in message


def test_overlap_is_reported_on_the_later_point_of_the_inventory():
    points = [
        u16("later_in_map", 5),
        planned("wide", {"table": "holding", "register": 4, "type": "int32"}),
    ]
    assert codes(plan(points)) == [("wide", "modbus-overlap")]


def test_same_bit_twice_overlaps():
    points = [
        planned("a", {"table": "input", "register": 3, "type": "bool", "bit": 2}),
        planned("b", {"table": "input", "register": 3, "type": "bool", "bit": 2}),
    ]
    assert codes(plan(points)) == [("b", "modbus-overlap")]


def test_same_register_on_different_units_or_tables_does_not_overlap():
    points = [
        u16("a", 0),
        u16("b", 0, unit=2),
        planned("c", {"table": "input", "register": 0, "type": "uint16"}),
    ]
    assert plan(points).problems == []


def test_same_address_as_two_types_is_a_type_conflict():
    points = [
        planned("as_float", {"table": "holding", "register": 40, "type": "float32"}),
        planned("as_int", {"table": "holding", "register": 40, "type": "int32"}),
    ]
    result = plan(points)
    assert codes(result) == [("as_int", "modbus-type-conflict")]
    assert result.problems[0].message == (
        "point 'as_int' reads holding register 40 on unit 1 as int32,"
        " but point 'as_float' reads it as float32"
    )


def test_value_wider_than_a_request_is_reported_and_left_out():
    points = [
        planned("label", {"table": "holding", "register": 0, "type": "string", "length": 60}),
        u16("ok", 100),
    ]
    result = plan(points, max_registers_per_read=50)
    assert codes(result) == [("label", "modbus-value-too-long")]
    assert "limits.max_registers_per_read 50" in result.problems[0].message
    assert [g["points"] for g in result.groups] == [["ok"]]


def test_value_past_register_65535_is_reported_and_left_out():
    points = [
        planned("tail", {"table": "holding", "register": 65534, "type": "float64"}),
        u16("last", 65533),
    ]
    result = plan(points)
    assert codes(result) == [("tail", "modbus-address-range")]
    assert [g["points"] for g in result.groups] == [["last"]]


@pytest.mark.parametrize("table", ["holding", "input", "coil", "discrete"])
def test_function_code_follows_the_table(table: str):
    address: dict[str, Any] = {"table": table, "register": 0}
    if table in ("holding", "input"):
        address["type"] = "uint16"
    function = plan([planned("p", address)]).groups[0]["function"]
    assert function == {"coil": 1, "discrete": 2, "holding": 3, "input": 4}[table]
