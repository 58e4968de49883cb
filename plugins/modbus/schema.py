"""Cerberus schemas of a Modbus device's ``endpoint`` and a point's ``address``.

The schemas are plain data (no callables), so that the validate stage can
also export them as JSON Schema for editors. Rules that depend on two fields
at once (a string needs a ``length``, a coil is always ``bool``, ...) are in
:mod:`plugins.modbus.address`.
"""

from __future__ import annotations

import copy
from typing import Any

REGISTER_TABLES = ("holding", "input")
BIT_TABLES = ("coil", "discrete")
TABLES = REGISTER_TABLES + BIT_TABLES

FUNCTION_CODES = {"coil": 1, "discrete": 2, "holding": 3, "input": 4}
"""The Modbus read function of each table."""

TYPE_WIDTHS = {
    "int16": 1,
    "uint16": 1,
    "bool": 1,
    "int32": 2,
    "uint32": 2,
    "float32": 2,
    "int64": 4,
    "uint64": 4,
    "float64": 4,
}
"""Registers a value of each fixed-width type spans; a string spans its ``length``."""

TYPES = (*TYPE_WIDTHS, "string")

LAST_REGISTER = 65535
MAX_REGISTERS_PER_READ = 125
"""Protocol maximum of function codes 3 and 4 (Modbus Application Protocol v1.1b3, 6.3)."""

MAX_BITS_PER_READ = 2000
"""Protocol maximum of function codes 1 and 2."""


def _field(description: str, **rules: Any) -> dict[str, Any]:
    """Cerberus rules with the description that the JSON Schema export shows editors."""
    return {**rules, "meta": {"description": description}}


_UNIT = {"type": "integer", "min": 0, "max": 247}
_ORDER = {"type": "string", "allowed": ["big", "little"], "default": "big"}

_ENDPOINT: dict[str, Any] = {
    "host": _field(
        "host name or IP address of the device or gateway",
        type="string",
        required=True,
        empty=False,
    ),
    "port": _field("TCP port (default 502)", type="integer", min=1, max=65535, default=502),
    "unit": _field("unit identifier, also called slave id (default 1)", **_UNIT, default=1),
    "framer": _field(
        "socket for Modbus TCP, rtu for RTU frames over TCP (default socket)",
        type="string",
        allowed=["socket", "rtu"],
        default="socket",
    ),
}

_ADDRESS: dict[str, Any] = {
    "table": _field(
        "holding, input, coil or discrete", type="string", required=True, allowed=list(TABLES)
    ),
    "register": _field(
        "0-based protocol address: manual 40001 is holding register 0",
        type="integer",
        required=True,
        min=0,
        max=LAST_REGISTER,
    ),
    "type": _field(
        "value type (default bool in coil and discrete tables)", type="string", allowed=list(TYPES)
    ),
    "length": _field(
        "registers a string spans (two characters each)",
        type="integer",
        min=1,
        max=MAX_REGISTERS_PER_READ,
    ),
    "bit": _field(
        "bit of a holding or input register read as a bool (0 = least significant)",
        type="integer",
        min=0,
        max=15,
    ),
    "byte_order": _field("order of the two bytes in each register (default big)", **_ORDER),
    "word_order": _field(
        "big when the first register holds the most significant word (default big)", **_ORDER
    ),
    "scale": _field("the value is raw * scale + offset (default 1)", type="number", default=1),
    "offset": _field("the value is raw * scale + offset (default 0)", type="number", default=0),
    "unit": _field("unit identifier of this point, overriding the endpoint's", **_UNIT),
}


def endpoint_schema() -> dict[str, Any]:
    """A fresh copy: cerberus may expand a schema it is given in place."""
    return copy.deepcopy(_ENDPOINT)


def address_schema() -> dict[str, Any]:
    return copy.deepcopy(_ADDRESS)
