"""Built-in mqtt protocol plugin."""

from __future__ import annotations

from engine.hookspecs import hookimpl

PROTOCOL = "mqtt"


@hookimpl
def converge_protocol_names() -> list[str]:
    return [PROTOCOL]
