"""Modbus values to and from registers and bits.

:func:`decode_group` turns the answer to one read group into the value of each
of its points; :func:`encode_registers` and :func:`merge_bit` are the inverse,
which the simulator uses to serve values. Every function takes a point's plan
``address`` (``table``, ``register``, ``type``, ``byte_order``,
``word_order``, ``scale``, ``offset``, ``length``, ``bit``), with the
schema's defaults where a key is missing.

Byte order is the order of the two bytes inside each register; word order is
the order of the registers of a 32- or 64-bit value (``big``: the first
register holds the most significant word). A string is ``length`` registers
of two ASCII characters each, read in register order (word order does not
apply), with NULs and spaces stripped from both ends.

Anything that cannot be decoded raises :class:`ValueError`, which the session
records as a ``malformed`` gap.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Mapping, Sequence
from typing import Any

from engine.records import Value
from plugins.modbus.address import value_type, width
from plugins.modbus.schema import BIT_TABLES

_STRUCT = {
    "int16": "h",
    "uint16": "H",
    "int32": "i",
    "uint32": "I",
    "int64": "q",
    "uint64": "Q",
    "float32": "f",
    "float64": "d",
}
"""The struct format of each numeric type, read big-endian once words and bytes are ordered."""

_INT_TYPES = frozenset(name for name, code in _STRUCT.items() if code not in "fd")


# --- decode ---------------------------------------------------------------------------------


def decode_group(
    group: Mapping[str, Any],
    addresses: Mapping[str, Mapping[str, Any]],
    data: Sequence[int] | Sequence[bool],
) -> list[Value]:
    """The value of each point of ``group``, in its order, from the answer's ``data``.

    ``data`` is the registers of a holding or input group, or the bits of a
    coil or discrete group. Bits may carry the padding of the last byte of the
    answer (a Modbus answer holds whole bytes of bits); any other length than
    the group's ``count`` is malformed.
    """
    start, count = int(group["start"]), int(group["count"])
    if group["table"] in BIT_TABLES:
        bits = _checked_bits(data, count)
        return [bits[int(addresses[name]["register"]) - start] for name in group["points"]]
    if len(data) != count:
        raise ValueError(f"expected {count} registers, got {len(data)}")
    values: list[Value] = []
    for name in group["points"]:
        address = addresses[name]
        offset = int(address["register"]) - start
        values.append(decode_registers(address, data[offset : offset + width(address)]))
    return values


def _checked_bits(data: Sequence[int] | Sequence[bool], count: int) -> list[bool]:
    padded = (count + 7) // 8 * 8
    if not count <= len(data) <= padded:
        raise ValueError(f"expected {count} bits, got {len(data)}")
    return [bool(bit) for bit in data[:count]]


def decode_registers(address: Mapping[str, Any], registers: Sequence[int]) -> Value:
    """The value of one point from the registers it spans (exactly ``width(address)``)."""
    expected = width(address)
    if len(registers) != expected:
        raise ValueError(f"expected {expected} registers, got {len(registers)}")
    if any(not 0 <= r <= 0xFFFF for r in registers):
        raise ValueError(f"not 16-bit registers: {list(registers)}")
    kind = value_type(address)
    words = [_byte_ordered(r, address) for r in registers]
    if kind == "bool":
        bit = address.get("bit")
        return words[0] != 0 if bit is None else bool(words[0] >> int(bit) & 1)
    if kind == "string":
        raw = b"".join(w.to_bytes(2, "big") for w in words)
        return raw.decode("ascii").strip("\x00 ")  # UnicodeDecodeError is a ValueError
    if _order(address, "word_order") == "little":
        words.reverse()
    (raw,) = struct.unpack(">" + _STRUCT[kind], b"".join(w.to_bytes(2, "big") for w in words))
    return _scaled(raw, address)


def _scaled(raw: int | float, address: Mapping[str, Any]) -> int | float:
    """``raw * scale + offset``; an integer stays an integer when there is nothing to scale."""
    scale, offset = address.get("scale", 1), address.get("offset", 0)
    if scale == 1 and offset == 0:
        return raw
    scaled: int | float = raw * scale + offset
    return scaled


# --- encode ---------------------------------------------------------------------------------


def encode_registers(address: Mapping[str, Any], value: Value) -> list[int]:
    """The registers that decode to ``value``: the inverse of :func:`decode_registers`.

    A ``bool`` with a ``bit`` gives a register with only that bit set or
    clear; use :func:`merge_bit` to share a register between bits. Raises
    :class:`ValueError` when the value does not fit the type.
    """
    kind = value_type(address)
    if kind == "bool":
        bit = address.get("bit")
        word = (1 << int(bit) if bit is not None else 1) if value else 0
        return [_byte_ordered(word, address)]
    if kind == "string":
        return _encode_string(address, value)
    raw = _unscaled(kind, value, address)
    try:
        packed = struct.pack(">" + _STRUCT[kind], raw)
    except (struct.error, OverflowError) as error:
        raise ValueError(f"{value!r} does not fit {kind}: {error}") from error
    words = [int.from_bytes(packed[i : i + 2], "big") for i in range(0, len(packed), 2)]
    if _order(address, "word_order") == "little":
        words.reverse()
    return [_byte_ordered(w, address) for w in words]


def merge_bit(register: int, address: Mapping[str, Any], value: bool) -> int:
    """``register`` with the point's ``bit`` set to ``value`` (other bits kept)."""
    word = _byte_ordered(register, address)
    mask = 1 << int(address.get("bit", 0))
    word = word | mask if value else word & ~mask
    return _byte_ordered(word, address)


def _encode_string(address: Mapping[str, Any], value: Value) -> list[int]:
    size = 2 * width(address)
    raw = str(value).encode("ascii")  # UnicodeEncodeError is a ValueError
    if len(raw) > size:
        raise ValueError(f"{value!r} is longer than {size} characters")
    raw = raw.ljust(size, b"\x00")
    words = [int.from_bytes(raw[i : i + 2], "big") for i in range(0, size, 2)]
    return [_byte_ordered(w, address) for w in words]


def _unscaled(kind: str, value: Value, address: Mapping[str, Any]) -> int | float:
    """The raw number that :func:`_scaled` maps to ``value``."""
    if value is None or isinstance(value, str):
        raise ValueError(f"{value!r} is not a number for {kind}")
    scale, offset = address.get("scale", 1), address.get("offset", 0)
    raw: int | float = value if scale == 1 and offset == 0 else (value - offset) / scale
    if kind in _INT_TYPES:
        if isinstance(raw, float) and not math.isfinite(raw):
            raise ValueError(f"{value!r} is not a number for {kind}")
        return round(raw)
    return float(raw)


# --- byte and word order --------------------------------------------------------------------


def _byte_ordered(register: int, address: Mapping[str, Any]) -> int:
    """A register as the device sends it and as we read it: byte order is its own inverse."""
    if _order(address, "byte_order") == "little":
        return (register & 0xFF) << 8 | register >> 8
    return register


def _order(address: Mapping[str, Any], key: str) -> str:
    order = str(address.get(key, "big"))
    if order not in ("big", "little"):
        raise ValueError(f"{key} must be big or little, not {order!r}")
    return order


__all__ = ["decode_group", "decode_registers", "encode_registers", "merge_bit"]
