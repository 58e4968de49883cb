"""Built-in modbus protocol plugin."""

from __future__ import annotations

from engine.hookspecs import hookimpl

PROTOCOL = "modbus"


@hookimpl
def converge_protocol_names() -> list[str]:
    return [PROTOCOL]
