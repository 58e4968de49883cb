"""The Modbus address check: what cerberus cannot say, in plain words."""

from __future__ import annotations

from typing import Any

import pytest

from plugins.modbus.address import address_problems


@pytest.mark.parametrize(
    "address",
    [
        {"table": "holding", "register": 0, "type": "float32"},
        {"table": "input", "register": 65535, "type": "uint16"},
        {"table": "holding", "register": 65532, "type": "float64"},
        {"table": "holding", "register": 7, "type": "bool", "bit": 15},
        {"table": "holding", "register": 200, "type": "string", "length": 8},
        {"table": "coil", "register": 65535},
        {"table": "discrete", "register": 3, "type": "bool"},
    ],
)
def test_valid_addresses_have_no_problems(address: dict[str, Any]):
    assert address_problems(address) == []


@pytest.mark.parametrize(
    ("address", "problem"),
    [
        (
            {"table": "holding", "register": 0},
            "a holding register needs a type, one of int16, uint16,",
        ),
        (
            {"table": "input", "register": 0},
            "an input register needs a type",
        ),
        (
            {"table": "holding", "register": 0, "type": "string"},
            "a string needs length: the number of registers it spans (two characters each)",
        ),
        (
            {"table": "holding", "register": 0, "type": "float32", "length": 2},
            "length applies only to type string, not to float32",
        ),
        (
            {"table": "coil", "register": 0, "bit": 1},
            "bit picks one bit of a holding or input register; a coil is one bit",
        ),
        (
            {"table": "holding", "register": 0, "type": "int16", "bit": 1},
            "bit reads one bit of the register as a bool: its type is bool, not int16",
        ),
        (
            {"table": "discrete", "register": 0, "type": "uint16"},
            "a discrete input holds a single bit: its type is bool, not uint16",
        ),
        (
            {"table": "holding", "register": 65535, "type": "float32", "word_order": "little"},
            "float32 at holding register 65535 spans 2 registers and runs past the last register,"
            " 65535",
        ),
        (
            {"table": "input", "register": 65530, "type": "string", "length": 8},
            "string at input register 65530 spans 8 registers and runs past",
        ),
    ],
)
def test_each_problem_is_said_in_plain_words(address: dict[str, Any], problem: str):
    problems = address_problems(address)
    assert len(problems) == 1
    assert problems[0].startswith(problem)


def test_all_problems_are_reported_together():
    address = {"table": "coil", "register": 0, "type": "string", "bit": 2}
    assert len(address_problems(address)) == 3
