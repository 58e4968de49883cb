"""The leaf of a record: its canonical bytes, salted, as docs/records.md specifies.

A leaf is the RFC 8785 (JCS) canonical JSON of one fixed object per record,
UTF-8, no trailing newline. Every leaf holds a fresh 16-byte random salt, kept
with the record and deleted with it: a leaf hash kept after the record was
lawfully deleted cannot be brute-forced back to a low-entropy value such as a
temperature. The Merkle leaf hash is ``SHA-256(0x00 || leaf bytes)``
(:func:`engine.sign.merkle.leaf_hash`).

Members, by record type (``?`` = present only when set)::

    reading: v, type, device, point, collected_at, value, quality, salt,
             scheduled_at?, source_at?, server_at?, raw_code?, coalesced? (> 0),
             held? (true)
    gap:     v, type, device, point, scheduled_at, reason, salt,
             detail? (non-empty), raw_code?, last_scheduled_at? and slots? (> 1, together)
"""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Sequence
from datetime import UTC, datetime
from json.encoder import encode_basestring
from typing import Any

from engine.canonical import MAX_SAFE_INTEGER, canonical_json
from engine.errors import EvidenceError
from engine.records import Gap, GapReason, Quality, Reading, Record
from engine.sign.merkle import leaf_hash

LEAF_VERSION = 1
SALT_SIZE = 16


class LeafError(EvidenceError):
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
    body: dict[str, Any] = {
        "type": "reading",
        "collected_at": instant(r.collected_at),
        "value": r.value,
        "quality": r.quality.value,
    }
    optional: dict[str, Any] = {
        "scheduled_at": r.scheduled_at and instant(r.scheduled_at),
        "source_at": r.source_at and instant(r.source_at),
        "server_at": r.server_at and instant(r.server_at),
        "raw_code": r.raw_code,
        "coalesced": r.coalesced if r.coalesced > 0 else None,
        "held": _held(r),
    }
    return body | {k: v for k, v in optional.items() if v is not None}


def _held(r: Reading) -> bool | None:
    if type(r.held) is not bool:
        raise LeafError(f"{r.device}/{r.point}: held is {r.held!r}, not true or false")
    return True if r.held else None


def _gap(g: Gap) -> dict[str, Any]:
    body: dict[str, Any] = {
        "type": "gap",
        "scheduled_at": instant(g.scheduled_at),
        "reason": g.reason.value,
    }
    if g.detail:
        body["detail"] = g.detail
    if g.raw_code is not None:
        body["raw_code"] = g.raw_code
    if type(g.slots) is not int or g.slots != 1 or g.last_scheduled_at is not None:
        body.update(_run(g))
    return body


def _run(g: Gap) -> dict[str, Any]:
    """The members of a gap record that stands for a run of slots: its last slot and count."""
    last, slots = g.last_scheduled_at, g.slots
    if type(slots) is not int or slots < 2 or not isinstance(last, datetime):
        raise LeafError(
            f"{g.device}/{g.point}: a run of slots needs a count above 1 ({slots!r}) "
            f"and its last slot ({last!r})"
        )
    text = instant(last)
    if last <= g.scheduled_at:
        raise LeafError(f"{g.device}/{g.point}: a run of slots ends at {text}, not after its start")
    return {"last_scheduled_at": text, "slots": slots}


def leaf_bytes(record: Record, salt: bytes) -> bytes:
    """The canonical leaf bytes of ``record`` with ``salt``.

    Requires a 16-byte salt, timezone-aware times, a finite value and integers
    within ±(2**53 - 1) (JCS numbers); raises :class:`LeafError` or
    :class:`engine.canonical.CanonicalError` otherwise.

    Storage ingest hashes every record it stores, and building the leaf object
    and canonicalising it generically manages well under 100,000 leaves a
    second. So the common records are written by :func:`_fast_leaf`, a fixed
    template per record type in JCS member order; anything it does not write
    itself (an exponent float, an unsafe integer, a naive time, a bad salt, a
    lone surrogate, an unexpected type) goes to the general path, which writes
    it or raises exactly as it always has. ``tests/test_leaf_fast.py`` proves
    both paths byte-identical on generated records, and both match ``rfc8785``.
    """
    try:
        return _fast_leaf(record, salt)
    except Exception:  # anything unusual: the general path is the authority, errors included
        return canonical_json(leaf_object(record, salt))


def record_leaf_hash(record: Record, salt: bytes) -> bytes:
    """``SHA-256(0x00 || leaf_bytes(record, salt))``."""
    return leaf_hash(leaf_bytes(record, salt))


_POINT = b'"point":"'
_POINTS = re.compile(rb'"point":"([^"\\]*)"')


def point_of(leaf: bytes) -> str:
    """The point a stored leaf names, read without parsing the whole record: the text between
    ``"point":"`` and the next quote (canonical JSON escapes every quote inside a string, so
    that pattern is the member's own), or the parsed member when the name holds an escape."""
    start = leaf.index(_POINT) + len(_POINT)
    name = leaf[start : leaf.index(b'"', start)]
    if b"\\" in name:
        return str(json.loads(leaf)["point"])
    return name.decode()


def points_of(leaves: Sequence[bytes]) -> list[bytes]:
    """The point each leaf names, as the bytes of its name (one regular-expression scan of all
    of them); a name holding an escape is decoded (:func:`point_of`) and encoded again.

    A leaf holds one ``"point"`` member and the pattern matches nowhere else (canonical JSON
    escapes every quote inside a string), so as many matches as leaves is one for each, in
    order; a name holding an escape does not match, and then every leaf is read apart."""
    found: list[bytes] = _POINTS.findall(b"\n".join(leaves))
    if len(found) == len(leaves):
        return found
    return [point_of(leaf).encode() for leaf in leaves]


_POINT_TOKENS = re.compile(rb'"point":("[^"\\]*(?:\\.[^"\\]*)*")')


def point_map_of(leaves: Sequence[bytes]) -> bytes:
    """The point map of a batch (:func:`engine.sign.batch.point_map`) from its leaves in
    position order: each leaf's ``point`` member as the leaf writes it, canonical JSON text,
    in one JSON array, found by one regular-expression scan of all of them (as
    :func:`points_of`, escapes included). Raises ValueError for a leaf without one."""
    found: list[bytes] = _POINT_TOKENS.findall(b"\n".join(leaves))
    if len(found) != len(leaves):
        raise ValueError("a leaf names no point")
    return b"[" + b",".join(found) + b"]"


# The fast path. Members are written in JCS order: keys sorted by UTF-16 code
# units, which for these ASCII keys is plain string order. Strings are escaped
# with the C ``json`` escaper, which escapes exactly as JCS does (see
# engine/canonical.py); numbers follow ES6 formatting for the forms handled.


class _Unusual(Exception):
    """A value the fast path leaves to the general path."""


_QUALITY = {q: encode_basestring(q.value) for q in Quality}
_REASON = {r: encode_basestring(r.value) for r in GapReason}
_READING_TAIL = f'"type":"reading","v":{LEAF_VERSION},"value":'
_GAP_TAIL = f'"type":"gap","v":{LEAF_VERSION}}}'


def _fast_leaf(record: Record, salt: bytes) -> bytes:
    if type(salt) is not bytes or len(salt) != SALT_SIZE:
        raise _Unusual
    if type(record) is not Reading:
        if type(record) is Gap:
            return _gap_text(record, salt.hex()).encode()
        raise _Unusual
    scheduled, collected, quality = record.scheduled_at, record.collected_at, record.quality
    device, point = record.device, record.point
    if not (
        scheduled is not None
        and record.raw_code is None
        and record.server_at is None
        and record.source_at is None
        and record.coalesced == 0
        and type(record.coalesced) is int
        and record.held is False
        and type(collected) is datetime
        and type(scheduled) is datetime
        and type(device) is str
        and type(point) is str
        and not (collected.fold or scheduled.fold)
    ):
        return _reading_text(record, salt.hex()).encode()
    # The usual scheduled sample: no optional member but its slot. It is written from
    # remembered pieces, inline, as this runs for every reading the store ingests.
    known = _IDENTITIES.get((device, point))
    if known is None or known[0] is not quality:
        known = _identity(device, point, quality)
    value = record.value
    if type(value) is float and 1e-4 <= abs(value) < 1e16 and not value.is_integer():
        number = repr(value)  # no exponent in this range, and a fraction: as ES6 writes it
    else:
        number = _scalar(value)
    return (
        f'{{"collected_at":"{_INSTANTS[collected]}{known[1]}{salt.hex()}","scheduled_at":'
        f'"{_INSTANTS[scheduled]}",{_READING_TAIL}{number}}}'
    ).encode()


def _reading_text(r: Reading, salt: str) -> str:
    if type(r.quality) is not Quality:
        raise _Unusual
    return (
        f'{{{_coalesced(r.coalesced)}"collected_at":"{_utc(r.collected_at)}",'
        f'"device":{_text(r.device)},{_flag(r.held)}"point":{_text(r.point)},'
        f'"quality":{_QUALITY[r.quality]},'
        f'{_member("raw_code", r.raw_code)}"salt":"{salt}",'
        f"{_time('scheduled_at', r.scheduled_at)}{_time('server_at', r.server_at)}"
        f"{_time('source_at', r.source_at)}{_READING_TAIL}{_scalar(r.value)}}}"
    )


_IDENTITIES: dict[tuple[str, str], tuple[Quality, str]] = {}
"""Per (device, point): its last quality, and the leaf text from after ``collected_at`` up to
the salt, which only those three decide. Cleared when it holds :data:`CACHE_SIZE` points."""
CACHE_SIZE = 65_536


def _identity(device: str, point: str, quality: object) -> tuple[Quality, str]:
    if type(quality) is not Quality:
        raise _Unusual
    if len(_IDENTITIES) >= CACHE_SIZE:
        _IDENTITIES.clear()
    known = _IDENTITIES[device, point] = (
        quality,
        f'","device":{_text(device)},"point":{_text(point)},"quality":{_QUALITY[quality]},"salt":"',
    )
    return known


def _gap_text(g: Gap, salt: str) -> str:
    if type(g.reason) is not GapReason:
        raise _Unusual
    detail = f'"detail":{_text(g.detail)},' if g.detail else ""
    last, slots = g.last_scheduled_at, g.slots
    if last is None and type(slots) is int and slots == 1:
        last_text = count = ""
    elif type(last) is datetime and type(slots) is int and slots > 1 and last > g.scheduled_at:
        last_text, count = f'"last_scheduled_at":"{_utc(last)}",', f'"slots":{_int(slots)},'
    else:
        raise _Unusual
    return (
        f'{{{detail}"device":{_text(g.device)},{last_text}"point":{_text(g.point)},'
        f'{_member("raw_code", g.raw_code)}"reason":{_REASON[g.reason]},"salt":"{salt}",'
        f'"scheduled_at":"{_utc(g.scheduled_at)}",{count}{_GAP_TAIL}'
    )


def _flag(held: object) -> str:
    if held is False:
        return ""
    if held is True:
        return '"held":true,'
    raise _Unusual


def _coalesced(count: object) -> str:
    if type(count) is not int:
        raise _Unusual
    return f'"coalesced":{_int(count)},' if count > 0 else ""


def _member(key: str, value: object) -> str:
    return "" if value is None else f'"{key}":{_scalar(value)},'


def _time(key: str, moment: datetime | None) -> str:
    return "" if moment is None else f'"{key}":"{_utc(moment)}",'


def _scalar(value: object) -> str:
    if type(value) is float:
        return _float(value)
    if type(value) is str:
        return encode_basestring(value)
    if value is None:
        return "null"
    if type(value) is bool:
        return "true" if value else "false"
    if type(value) is int:
        return _int(value)
    raise _Unusual


def _float(number: float) -> str:
    if 1e-4 <= abs(number) < 1e16:  # repr writes these without an exponent, as ES6 does
        text = repr(number)
        return text[:-2] if text[-2:] == ".0" else text  # ES6 writes integral numbers bare
    if number == 0:
        return "0"  # -0 too
    raise _Unusual  # an exponent form (ES6 differs from repr), inf or nan (no JCS form)


def _int(number: int) -> str:
    if -MAX_SAFE_INTEGER <= number <= MAX_SAFE_INTEGER:
        return str(number)
    raise _Unusual


def _text(value: object) -> str:
    if type(value) is not str:
        raise _Unusual
    return encode_basestring(value)


def _utc(moment: object) -> str:
    if type(moment) is not datetime:
        raise _Unusual
    return instant(moment) if moment.fold else _INSTANTS[moment]


class _Instants(dict[datetime, str]):
    """:func:`instant` of ``fold=0`` datetimes, remembered: a read group's records share times.

    Aware datetimes that compare equal are the same instant, so have the same
    text, even in different time zones, with one exception: two times with the
    *same* tzinfo compare by wall clock, ignoring ``fold``, so 02:30 before and
    after a DST fall-back are equal yet an hour apart. Hence only ``fold=0``
    times are looked up here. A naive time raises (:class:`LeafError`) and is
    not remembered. Cleared when it holds :data:`CACHE_SIZE` times.
    """

    def __missing__(self, moment: datetime) -> str:
        text = instant(moment)
        if len(self) >= CACHE_SIZE:
            self.clear()
        self[moment] = text
        return text


_INSTANTS = _Instants()
