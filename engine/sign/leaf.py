"""The leaf of a record: its canonical bytes, salted, as docs/records.md specifies.

A leaf is the RFC 8785 (JCS) canonical JSON of one fixed object per record,
UTF-8, no trailing newline. Every leaf holds a fresh 16-byte random salt, kept
with the record and deleted with it: a leaf hash kept after the record was
lawfully deleted cannot be brute-forced back to a low-entropy value such as a
temperature. The Merkle leaf hash is ``SHA-256(0x00 || leaf bytes)``
(:func:`engine.sign.merkle.leaf_hash`).

Members, by record type (``?`` = present only when set)::

    reading: v, type, device, point, collected_at, value, quality, salt,
             scheduled_at?, source_at?, server_at?, raw_code?, coalesced? (> 0)
    gap:     v, type, device, point, scheduled_at, reason, salt,
             detail? (non-empty), raw_code?
"""

from __future__ import annotations

import math
import os
from datetime import UTC, datetime
from typing import Any

from engine.canonical import canonical_json
from engine.errors import ConvergeError
from engine.records import Gap, Reading, Record
from engine.sign.merkle import leaf_hash

LEAF_VERSION = 1
SALT_SIZE = 16


class LeafError(ConvergeError):
    """A record or salt that has no leaf: a naive time, a bad salt, a non-finite value."""


def new_salt() -> bytes:
    """16 bytes from the operating system's CSPRNG, one per record."""
    return os.urandom(SALT_SIZE)


def instant(moment: datetime) -> str:
    """RFC 3339 UTC with exactly six fraction digits and ``Z``: ``2026-06-01T12:00:00.250000Z``.

    Requires a timezone-aware datetime (any offset; it is converted to UTC).
    """
    if moment.tzinfo is None or moment.utcoffset() is None:
        raise LeafError(f"time {moment.isoformat()} has no time zone; records hold UTC times")
    return moment.astimezone(UTC).replace(tzinfo=None).isoformat(timespec="microseconds") + "Z"


def leaf_object(record: Record, salt: bytes) -> dict[str, Any]:
    """The object whose canonical JSON is the leaf (see the module docstring for its members)."""
    if len(salt) != SALT_SIZE:
        raise LeafError(f"salt: got {len(salt)} bytes, want {SALT_SIZE}")
    body = _reading(record) if isinstance(record, Reading) else _gap(record)
    body.update(v=LEAF_VERSION, device=record.device, point=record.point, salt=salt.hex())
    return body


def _reading(r: Reading) -> dict[str, Any]:
    if isinstance(r.value, float) and not math.isfinite(r.value):
        raise LeafError(f"{r.device}/{r.point}: value {r.value} is not finite")
    body: dict[str, Any] = {"type": "reading", "collected_at": instant(r.collected_at),
                            "value": r.value, "quality": r.quality.value}  # fmt: skip
    optional: dict[str, Any] = {
        "scheduled_at": r.scheduled_at and instant(r.scheduled_at),
        "source_at": r.source_at and instant(r.source_at),
        "server_at": r.server_at and instant(r.server_at),
        "raw_code": r.raw_code,
        "coalesced": r.coalesced if r.coalesced > 0 else None,
    }
    return body | {k: v for k, v in optional.items() if v is not None}


def _gap(g: Gap) -> dict[str, Any]:
    body: dict[str, Any] = {"type": "gap", "scheduled_at": instant(g.scheduled_at),
                            "reason": g.reason.value}  # fmt: skip
    if g.detail:
        body["detail"] = g.detail
    if g.raw_code is not None:
        body["raw_code"] = g.raw_code
    return body


def leaf_bytes(record: Record, salt: bytes) -> bytes:
    """The canonical leaf bytes of ``record`` with ``salt``.

    Requires a 16-byte salt, timezone-aware times, a finite value and integers
    within ±(2**53 - 1) (JCS numbers); raises :class:`LeafError` or
    :class:`engine.canonical.CanonicalError` otherwise.
    """
    return canonical_json(leaf_object(record, salt))


def record_leaf_hash(record: Record, salt: bytes) -> bytes:
    """``SHA-256(0x00 || leaf_bytes(record, salt))``."""
    return leaf_hash(leaf_bytes(record, salt))
