"""Cerberus schemas of an MQTT device's ``endpoint`` and a point's ``address``.

The topic-filter rules and the fields that need a JSON payload are checked
by :func:`address_problems`.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator, Mapping
from typing import Any

_HOST = r"(?:[A-Za-z0-9._-]+|\[[0-9A-Fa-f:.]+\])"
_PORT = r"(?:6553[0-5]|655[0-2]\d|65[0-4]\d\d|6[0-4]\d{3}|[1-5]\d{4}|[1-9]\d{0,3})"
BROKER = rf"mqtts?://{_HOST}(?::{_PORT})?/?"
"""``mqtt://host[:port]`` or ``mqtts://host[:port]``; a port from 1 to 65535."""

DOTTED_PATH = r"[^.\s]+(?:\.[^.\s]+)*"
"""A path into a JSON payload: keys separated by dots, such as ``data.temp``."""

MAX_TOPIC_BYTES = 65535


def _field(description: str, **rules: Any) -> dict[str, Any]:
    """Cerberus rules with the description that the JSON Schema export shows editors."""
    return {**rules, "meta": {"description": description}}


def _path(description: str, **rules: Any) -> dict[str, Any]:
    return _field(description, type="string", empty=False, **rules)


_TLS: dict[str, Any] = {
    "ca": _path("CA bundle that signs the broker's certificate"),
    "cert": _path("client certificate", dependencies=["key"]),
    "key": _path("private key of the client certificate", dependencies=["cert"]),
}

_ENDPOINT: dict[str, Any] = {
    "broker": _field(
        "mqtt://host[:port] or mqtts://host[:port]", type="string", required=True, regex=BROKER
    ),
    "client_id": _field("MQTT client identifier", type="string", empty=False),
    "username": _field("user name (default: anonymous)", type="string", empty=False),
    "password_env": _field(
        "environment variable holding the password; never an inline password",
        type="string",
        regex=r"[A-Za-z_][A-Za-z0-9_]*",
        dependencies=["username"],
    ),
    "qos": _field(
        "quality of service, 0, 1 or 2 (default 1)", type="integer", allowed=[0, 1, 2], default=1
    ),
    "tls": _field("TLS files: ca, cert, key", type="dict", schema=_TLS),
    "keepalive": _field(
        "seconds between keep-alive pings, 0 for none (default 60)",
        type="integer",
        min=0,
        max=65535,
        default=60,
    ),
}

_ADDRESS: dict[str, Any] = {
    "topic": _field(
        "topic filter; + matches one level, # all below", type="string", required=True, empty=False
    ),
    "field": _field(
        "dotted path to the value in a JSON payload, e.g. data.temp",
        type="string",
        regex=DOTTED_PATH,
    ),
    "payload": _field(
        "json or raw (default json when field is given)", type="string", allowed=["json", "raw"]
    ),
    "timestamp_field": _field(
        "dotted path to the source timestamp in a JSON payload", type="string", regex=DOTTED_PATH
    ),
}


def endpoint_schema() -> dict[str, Any]:
    """A fresh copy: cerberus may expand a schema it is given in place."""
    return copy.deepcopy(_ENDPOINT)


def address_schema() -> dict[str, Any]:
    return copy.deepcopy(_ADDRESS)


def payload(address: Mapping[str, Any]) -> str:
    """``json`` or ``raw``: as written, else ``json`` exactly when a ``field`` is given."""
    return str(address.get("payload", "json" if "field" in address else "raw"))


def address_problems(address: Mapping[str, Any]) -> list[str]:
    """Topic-filter problems, then fields that a raw payload cannot have."""
    problems = list(topic_problems(address["topic"]))
    if payload(address) == "raw":
        problems += [
            f"{key} reads a JSON payload, but payload is raw"
            for key in ("field", "timestamp_field")
            if key in address
        ]
    return problems


def topic_problems(topic: str) -> Iterator[str]:
    """Where ``topic`` breaks the MQTT topic-filter rules (MQTT 5.0, 4.7.1)."""
    if "\0" in topic:
        yield f"topic {topic!r} contains the NUL character"
    if len(topic.encode()) > MAX_TOPIC_BYTES:
        yield f"topic is longer than {MAX_TOPIC_BYTES} bytes"
    levels = topic.split("/")
    for index, level in enumerate(levels):
        if "+" in level and level != "+":
            yield f"topic '{topic}': '+' must be a whole level, as in 'plant/+/temp', not '{level}'"
        if "#" in level and level != "#":
            yield f"topic '{topic}': '#' must be a whole level, as in 'plant/#', not '{level}'"
        if level == "#" and index < len(levels) - 1:
            yield f"topic '{topic}': '#' matches everything below it, so it must be the last level"
