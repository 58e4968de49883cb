"""RFC 8785 (JCS) canonical JSON, fast.

The ``rfc8785`` package is the reference implementation we rely on; it is
pure Python and serialises a 100,000-point plan set in tens of seconds. For
the values plans are made of, CPython's C JSON encoder with sorted keys,
compact separators and ``ensure_ascii=False`` writes the very same bytes:
string escaping is identical (RFC 8785 3.2.2.2 and ``json`` both escape
only ``"``, ``\\`` and U+0000-U+001F, with the same short forms and
lower-case ``\\u00xx``). The encodings differ only for

- floats, where ES6 number formatting differs from ``repr`` (``20.0`` is
  ``20`` in JCS, ``1e-07`` is ``1e-7``, ``1e16`` is written out in full);
- integers beyond 2**53 - 1, which JCS cannot represent exactly;
- keys with characters beyond U+FFFF (JCS sorts by UTF-16 code units);
- lone surrogates.

So the fast path writes with ``json``, then re-reads its own output with
the C scanner, checking each number token against ``rfc8785``'s own
formatting; on any doubt it hands the value to ``rfc8785``. A property test
compares both on generated values.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from functools import lru_cache
from typing import Any

import rfc8785

from engine.errors import InputError

MAX_SAFE_INTEGER = 2**53 - 1
_ASTRAL = re.compile("[\U00010000-\U0010ffff]")


class CanonicalError(InputError):
    """A value that has no canonical JSON form (NaN, infinity, an unsafe integer, ...)."""


class _Differs(Exception):
    pass


def read_json(data: str | bytes) -> Any:
    """``data`` decoded as JSON, where ``data`` is stored or received (a column, an entry, a
    message): a ValueError for anything Python cannot read as JSON, JSON nested deeper than
    its parser goes included (``json.loads`` raises RecursionError for it). Whoever can write
    the database can write that, and it must be named, never a traceback."""
    try:
        return json.loads(data)
    except RecursionError:
        raise ValueError("JSON nested too deep to read") from None


def plainly_canonical(data: bytes) -> Any:
    """The value of ``data`` when it plainly is its own canonical JSON, read by one decoding
    and one encoding; else ``None`` (it may still be: :func:`canonical_json` of the value
    decoded the long way says). Plainly: UTF-8 text holding no number with a fraction or
    exponent, no integer beyond 2**53 - 1 and no character beyond U+FFFF, written back the
    same by the C encoder (for such a value :func:`canonical_json` writes those very bytes)."""
    try:
        text = data.decode("utf-8")
        value = _PLAIN.decode(text)
        if (text.isascii() or not _ASTRAL.search(text)) and _ENCODER.encode(value) == text:
            return value
    except (_Differs, ValueError, RecursionError):
        pass
    return None


def canonical_json(value: Any) -> bytes:
    """The RFC 8785 bytes of ``value``."""
    try:
        text = _ENCODER.encode(value)
        if not _ASTRAL.search(text):
            _CHECKER.decode(text)
            return text.encode("utf-8")
    except (_Differs, UnicodeEncodeError):
        pass
    except (TypeError, ValueError) as exc:
        raise CanonicalError(f"value has no canonical JSON form: {exc}") from exc
    return _reference(value)


def canonical_object(members: Mapping[str, bytes]) -> bytes:
    """The canonical form of an object whose members are already canonical bytes.

    Lets a caller canonicalise the large members once and then add or drop a
    small one (such as a digest) without serialising everything again.
    Keys must be ASCII, where UTF-16 and code point order agree.
    """
    parts = [_key(key) + members[key] for key in sorted(members)]
    return b"{" + b",".join(parts) + b"}"


@lru_cache(maxsize=1024)
def _key(name: str) -> bytes:
    return json.dumps(name).encode() + b":"


def _reference(value: Any) -> bytes:
    try:
        return rfc8785.dumps(value)
    except (rfc8785.CanonicalizationError, ValueError, TypeError) as exc:
        raise CanonicalError(f"value has no canonical JSON form: {exc}") from exc


def _check_float(token: str) -> float:
    number = float(token)
    if rfc8785.dumps(number).decode() != token:
        raise _Differs
    return number


def _check_int(token: str) -> int:
    number = int(token)
    if abs(number) > MAX_SAFE_INTEGER:
        raise _Differs
    return number


_ENCODER = json.JSONEncoder(
    sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
)
_CHECKER = json.JSONDecoder(parse_float=_check_float, parse_int=_check_int)


def _no_float(token: str) -> float:
    raise _Differs  # a fraction or exponent: canonical_json's own check decides


_PLAIN = json.JSONDecoder(parse_float=_no_float, parse_int=_check_int)
