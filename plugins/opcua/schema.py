"""Cerberus schemas of an OPC UA device's ``endpoint`` and a point's ``address``.

Passwords are never written inline: ``password_env`` names the environment
variable that holds one, and an inline ``password`` key is an unknown key.
The NodeId syntax is checked by :func:`address_problems`.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

from plugins.opcua.nodeid import NodeIdError, parse_node_id

SECURITY_MODES = ("None", "Sign", "SignAndEncrypt")
SECURITY_POLICIES = ("None", "Basic256Sha256", "Aes128_Sha256_RsaOaep", "Aes256_Sha256_RsaPss")
MODES = ("read", "subscribe")

ENV_NAME = r"[A-Za-z_][A-Za-z0-9_]*"


def _field(description: str, **rules: Any) -> dict[str, Any]:
    """Cerberus rules with the description that the JSON Schema export shows editors."""
    return {**rules, "meta": {"description": description}}


_ENDPOINT: dict[str, Any] = {
    "url": _field(
        "server endpoint, opc.tcp://host:port/path",
        type="string",
        required=True,
        regex=r"opc\.tcp://\S+",
    ),
    "security_mode": _field(
        "None, Sign or SignAndEncrypt (default None)",
        type="string",
        allowed=list(SECURITY_MODES),
        default="None",
    ),
    "security_policy": _field(
        "security policy, other than None when signing (default None)",
        type="string",
        allowed=list(SECURITY_POLICIES),
        default="None",
    ),
    "username": _field("user name (default: anonymous)", type="string", empty=False),
    "password_env": _field(
        "environment variable holding the password; never an inline password",
        type="string",
        regex=ENV_NAME,
        dependencies=["username"],
    ),
    "certificate": _field(
        "path of the client certificate", type="string", empty=False, dependencies=["private_key"]
    ),
    "private_key": _field(
        "path of the client certificate's private key",
        type="string",
        empty=False,
        dependencies=["certificate"],
    ),
}

_ADDRESS: dict[str, Any] = {
    "node": _field(
        "NodeId in OPC UA text form, e.g. ns=2;s=Line1.TT101",
        type="string",
        required=True,
        empty=False,
    ),
    "mode": _field(
        "read (poll) or subscribe (default: subscribe when the capture has on_change)",
        type="string",
        allowed=list(MODES),
    ),
}


def endpoint_schema() -> dict[str, Any]:
    """A fresh copy: cerberus may expand a schema it is given in place."""
    return copy.deepcopy(_ENDPOINT)


def address_schema() -> dict[str, Any]:
    return copy.deepcopy(_ADDRESS)


def address_problems(address: Mapping[str, Any]) -> list[str]:
    """The NodeId syntax problem of a schema-valid address, if any."""
    try:
        parse_node_id(address["node"])
    except NodeIdError as exc:
        return [str(exc)]
    return []
