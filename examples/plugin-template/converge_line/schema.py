"""Cerberus schemas of a ``line`` device's ``endpoint`` and a point's ``address``.

Keep schemas plain data (no callables) so that ``converge schema`` can export
them as JSON Schema for editors; give every field a ``meta.description``.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

DEFAULT_PORT = 7070
LAST_REGISTER = 65535


def _field(description: str, **rules: Any) -> dict[str, Any]:
    return {**rules, "meta": {"description": description}}


_ENDPOINT: dict[str, Any] = {
    "host": _field(
        "host name or IP address of the device", type="string", required=True, empty=False
    ),
    "port": _field(
        f"TCP port (default {DEFAULT_PORT})", type="integer", min=1, max=65535, default=DEFAULT_PORT
    ),
}

_ADDRESS: dict[str, Any] = {
    "register": _field(
        "register number, 0..65535", type="integer", required=True, min=0, max=LAST_REGISTER
    ),
}


def endpoint_schema() -> dict[str, Any]:
    """A fresh copy: cerberus may expand a schema it is given in place."""
    return copy.deepcopy(_ENDPOINT)


def address_schema() -> dict[str, Any]:
    return copy.deepcopy(_ADDRESS)


def address_problems(address: Mapping[str, Any]) -> list[str]:
    """Rules a schema cannot express; ``line`` has none (return plain-words problems here)."""
    return []
