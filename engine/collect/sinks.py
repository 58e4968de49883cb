"""Where records go: a back-pressured :class:`Sink`, and the JSON Lines sink.

The collector puts records on a bounded :class:`asyncio.Queue`; one drain task
hands them to the sink in order. When the sink is slower than the devices the
queue fills and device tasks wait on ``put``: nothing is dropped, collection
slows down instead (and shows up as lateness).

JSON Lines: one RFC 8785 canonical JSON object per line, ``type`` ``reading``
or ``gap``; see docs/runtime.md for every field.
"""

from __future__ import annotations

import asyncio
import math
from datetime import datetime
from pathlib import Path
from typing import IO, Any, Protocol

from engine.canonical import canonical_json
from engine.errors import ConvergeError
from engine.records import Gap, Reading, Record


class Sink(Protocol):
    async def put(self, record: Record) -> None:
        """Take one record; may wait (that is the back-pressure)."""

    async def close(self) -> None:
        """Flush and release; called once, after the last record."""


def instant(moment: datetime) -> str:
    """RFC 3339 UTC with microseconds: ``2026-06-01T12:00:00.250000Z``."""
    return moment.isoformat(timespec="microseconds").replace("+00:00", "Z")


def record_json(record: Record) -> dict[str, Any]:
    """The JSON object of a record; optional members are left out when unset."""
    if isinstance(record, Reading):
        body: dict[str, Any] = {
            "type": "reading",
            "device": record.device,
            "point": record.point,
            "collected_at": instant(record.collected_at),
            "value": _value(record.value),
            "quality": record.quality.value,
        }
        optional: dict[str, Any] = {
            "source_at": record.source_at and instant(record.source_at),
            "server_at": record.server_at and instant(record.server_at),
            "scheduled_at": record.scheduled_at and instant(record.scheduled_at),
            "raw_code": record.raw_code,
            "coalesced": record.coalesced or None,
            "held": record.held or None,
        }
    else:
        body = {
            "type": "gap",
            "device": record.device,
            "point": record.point,
            "scheduled_at": instant(record.scheduled_at),
            "reason": record.reason.value,
        }
        optional = {
            "detail": record.detail or None,
            "raw_code": record.raw_code,
            "last_scheduled_at": record.last_scheduled_at and instant(record.last_scheduled_at),
            "slots": record.slots if record.slots > 1 else None,
        }
    body.update({k: v for k, v in optional.items() if v is not None})
    return body


def _value(value: object) -> object:
    """Non-finite floats have no JSON form; they are written as strings ("nan", "inf")."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value


def record_line(record: Record) -> bytes:
    return canonical_json(record_json(record)) + b"\n"


class JsonLinesSink:
    """Appends one canonical JSON object per record to a file (or a binary stream)."""

    def __init__(self, target: Path | IO[bytes]) -> None:
        try:
            self.stream = target.open("ab") if isinstance(target, Path) else target
        except OSError as exc:
            raise ConvergeError(f"cannot write {target}: {exc.strerror}") from exc
        self.owned = isinstance(target, Path)
        self.count = 0

    async def put(self, record: Record) -> None:
        self.stream.write(record_line(record))
        self.count += 1
        if self.count % 256 == 0:
            await asyncio.sleep(0)  # let device tasks run during a long burst

    async def close(self) -> None:
        self.stream.flush()
        if self.owned:
            self.stream.close()


class MemorySink:
    """Keeps every record in a list (tests, the demo)."""

    def __init__(self) -> None:
        self.records: list[Record] = []
        self.closed = False

    async def put(self, record: Record) -> None:
        self.records.append(record)

    async def close(self) -> None:
        self.closed = True

    def gaps(self) -> list[Gap]:
        return [r for r in self.records if isinstance(r, Gap)]

    def readings(self) -> list[Reading]:
        return [r for r in self.records if isinstance(r, Reading)]
