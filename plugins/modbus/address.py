"""What a Modbus address occupies, and the rules its schema cannot express.

:func:`address_problems` is what ``converge_check_address`` returns. The
other functions are total on any schema-valid address, so that planning never
fails on one that skipped the checks: a value without a type counts as one
register, a string without a length as one register.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from plugins.modbus.schema import BIT_TABLES, LAST_REGISTER, REGISTER_TABLES, TYPE_WIDTHS, TYPES

NOUNS = {
    "holding": "holding register",
    "input": "input register",
    "coil": "coil",
    "discrete": "discrete input",
}
"""How a manual names one address of each table."""


@dataclass(frozen=True)
class Slot:
    """The addresses one point reads: ``start..end`` of ``table`` on ``unit``.

    ``order`` is the point's position in the inventory; it breaks ties so
    that plans and messages do not depend on anything but the input.
    """

    point: str
    order: int
    unit: int
    table: str
    start: int
    width: int
    type: str
    bit: int | None

    @property
    def end(self) -> int:
        return self.start + self.width - 1

    @property
    def address_key(self) -> tuple[int, int, int, int]:
        """Address order: by first address, then width, then bit, then inventory."""
        return (self.start, self.width, -1 if self.bit is None else self.bit, self.order)

    def describe(self) -> str:
        """For messages, e.g. ``holding registers 100-101 as float32 on unit 1``."""
        noun = NOUNS[self.table]
        where = f"{noun} {self.start}" if self.width == 1 else f"{noun}s {self.start}-{self.end}"
        if self.bit is not None:
            where += f" bit {self.bit}"
        return f"{where} as {self.type} on unit {self.unit}"


def value_type(address: Mapping[str, Any]) -> str:
    """The declared type; ``bool`` when none is declared (the default of coils)."""
    return str(address.get("type", "bool"))


def width(address: Mapping[str, Any]) -> int:
    """How many registers (or bits, in a bit table) the value spans."""
    kind = value_type(address)
    if address["table"] in BIT_TABLES:
        return 1
    if kind == "string":
        return int(address.get("length", 1))
    return TYPE_WIDTHS[kind]


def slot(name: str, order: int, address: Mapping[str, Any], endpoint_unit: int) -> Slot:
    """The slot of a point; the address's ``unit`` overrides the endpoint's."""
    return Slot(
        point=name,
        order=order,
        unit=int(address.get("unit", endpoint_unit)),
        table=str(address["table"]),
        start=int(address["register"]),
        width=width(address),
        type=value_type(address),
        bit=address.get("bit"),
    )


def address_problems(address: Mapping[str, Any]) -> list[str]:
    """Every cross-field problem of a schema-valid address, in plain words."""
    found = (check(address) for check in _CHECKS)
    return [problem for problem in found if problem is not None]


def _type_needed(address: Mapping[str, Any]) -> str | None:
    table = address["table"]
    if table in REGISTER_TABLES and "type" not in address:
        return f"{_a(NOUNS[table])} needs a type, one of {', '.join(TYPES)}"
    return None


def _bit_table_is_bool(address: Mapping[str, Any]) -> str | None:
    table, kind = address["table"], value_type(address)
    if table in BIT_TABLES and kind != "bool":
        return f"{_a(NOUNS[table])} holds a single bit: its type is bool, not {kind}"
    return None


def _string_needs_length(address: Mapping[str, Any]) -> str | None:
    if value_type(address) == "string" and "length" not in address:
        return "a string needs length: the number of registers it spans (two characters each)"
    return None


def _length_only_for_strings(address: Mapping[str, Any]) -> str | None:
    kind = value_type(address)
    if "length" in address and kind != "string":
        return f"length applies only to type string, not to {kind}"
    return None


def _bit_placement(address: Mapping[str, Any]) -> str | None:
    table, kind = address["table"], value_type(address)
    if "bit" not in address:
        return None
    if table in BIT_TABLES:
        return f"bit picks one bit of a holding or input register; {_a(NOUNS[table])} is one bit"
    if kind != "bool":
        return f"bit reads one bit of the register as a bool: its type is bool, not {kind}"
    return None


def _fits_table(address: Mapping[str, Any]) -> str | None:
    start, count = address["register"], width(address)
    if start + count - 1 > LAST_REGISTER:
        return (
            f"{value_type(address)} at {NOUNS[address['table']]} {start} spans {count} registers"
            f" and runs past the last register, {LAST_REGISTER}"
        )
    return None


def _a(noun: str) -> str:
    return f"an {noun}" if noun[0] in "aeiou" else f"a {noun}"


_CHECKS: tuple[Callable[[Mapping[str, Any]], str | None], ...] = (
    _type_needed,
    _bit_table_is_bool,
    _string_needs_length,
    _length_only_for_strings,
    _bit_placement,
    _fits_table,
)
