"""NodeIds in the OPC UA text form (OPC 10000-6, 5.3.1.10).

``ns=<namespace>;<type>=<identifier>``, where ``ns=0;`` may be left out and
the type is ``i`` (numeric), ``s`` (string), ``g`` (GUID) or ``b`` (opaque,
base64). Expanded NodeIds (``nsu=<uri>;...``) are not accepted: a plan must
not depend on the server's namespace table being read first.
"""

from __future__ import annotations

import binascii
import re
from base64 import b64decode
from collections.abc import Callable
from dataclasses import dataclass

MAX_NAMESPACE = 65535
MAX_NUMERIC = 2**32 - 1

_TEXT_FORM = re.compile(r"(?:ns=(?P<ns>\d+);)?(?P<kind>[isgb])=(?P<identifier>.*)", re.DOTALL)
_GUID = re.compile(r"[0-9a-fA-F]{8}(?:-[0-9a-fA-F]{4}){3}-[0-9a-fA-F]{12}")


@dataclass(frozen=True)
class NodeId:
    namespace: int
    kind: str
    identifier: str

    def __str__(self) -> str:
        """The canonical spelling: namespace always written, GUIDs in lower case."""
        return f"ns={self.namespace};{self.kind}={self.identifier}"


class NodeIdError(ValueError):
    """Text that is not a NodeId; the message says why, in plain words."""


def parse_node_id(text: str) -> NodeId:
    """The NodeId ``text`` spells; :class:`NodeIdError` when it spells none."""
    match = _TEXT_FORM.fullmatch(text)
    if match is None:
        raise NodeIdError(
            f"node '{text}' is not a NodeId in OPC UA text form,"
            " such as 'ns=2;s=Line1.TT101' or 'i=2258'"
        )
    namespace, kind, identifier = int(match["ns"] or 0), match["kind"], match["identifier"]
    if namespace > MAX_NAMESPACE:
        raise NodeIdError(f"node '{text}': namespace {namespace} is above {MAX_NAMESPACE}")
    reason = _IDENTIFIER_CHECKS[kind](identifier)
    if reason is not None:
        raise NodeIdError(f"node '{text}': {reason}")
    return NodeId(namespace, kind, identifier.lower() if kind == "g" else identifier)


def _numeric(identifier: str) -> str | None:
    if not identifier.isascii() or not identifier.isdigit():
        return f"numeric identifier '{identifier}' is not a whole number"
    if int(identifier) > MAX_NUMERIC:
        return f"numeric identifier {identifier} is above {MAX_NUMERIC}"
    return None


def _string(identifier: str) -> str | None:
    return "the string identifier is empty" if not identifier else None


def _guid(identifier: str) -> str | None:
    if _GUID.fullmatch(identifier) is None:
        return f"'{identifier}' is not a GUID such as 72962b91-fa75-4ae6-8d28-b404dc7daf63"
    return None


def _opaque(identifier: str) -> str | None:
    try:
        if b64decode(identifier, validate=True):
            return None
    except binascii.Error:
        pass
    return f"opaque identifier '{identifier}' is not non-empty base64"


_IDENTIFIER_CHECKS: dict[str, Callable[[str], str | None]] = {
    "i": _numeric,
    "s": _string,
    "g": _guid,
    "b": _opaque,
}
