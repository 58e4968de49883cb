"""The ``line`` wire format, shared by the session and the simulator."""

from __future__ import annotations

import json
from collections.abc import Sequence

from engine.records import Value

NO_SUCH_REGISTER = 2


def request(registers: Sequence[int]) -> bytes:
    return ("READ " + " ".join(str(r) for r in registers) + "\n").encode("ascii")


def parse_request(line: bytes) -> list[int]:
    """The registers of a ``READ`` line; :class:`ValueError` for anything else."""
    verb, *registers = line.decode("ascii").split()
    if verb != "READ" or not registers:
        raise ValueError(f"not a READ request: {line!r}")
    return [int(r) for r in registers]


def answer(value: Value) -> bytes:
    return (json.dumps(value) + "\n").encode("utf-8")


def error(code: int) -> bytes:
    return f"ERR {code}\n".encode("ascii")


def parse_answer(line: bytes) -> Value | ErrorCode:
    """A value, or the code of an ``ERR`` answer; :class:`ValueError` when neither."""
    text = line.decode("utf-8").strip()
    if text.startswith("ERR "):
        return ErrorCode(int(text[4:]))
    value = json.loads(text)
    if value is not None and not isinstance(value, bool | int | float | str):
        raise ValueError(f"not a scalar: {text}")
    return value


class ErrorCode(int):
    """The code of an ``ERR`` answer (an ``int``, told apart from an integer value)."""
