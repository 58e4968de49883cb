"""Collecting one ``line`` device: a :class:`~engine.protocols.Session` on asyncio streams.

One read group is one ``READ`` request. The contract (``engine/protocols.py``):
every answer, good or bad, becomes records, one per point in the group's
order; only :class:`OSError`, :class:`TimeoutError` and ``ConvergeError``
are raised; the session never retries or reconnects on its own (the
collector does both).

``line`` answers carry no request id, so after a timeout a late answer could
be taken for the next request's: a timeout drops the connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
from datetime import UTC, datetime

from converge_line.schema import DEFAULT_PORT
from converge_line.wire import ErrorCode, parse_answer, request
from engine.errors import ConvergeError
from engine.plans.body import PlanBody, ReadGroup
from engine.protocols import Deliver
from engine.records import Gap, GapReason, Reading, Record

DEFAULT_TIMEOUT_MS = 3000


class LineSession:
    """One ``line`` device over TCP, for one plan."""

    def __init__(self, plan: PlanBody) -> None:
        device = plan.device
        self.device_id = device.id
        self._host = str(device.endpoint["host"])
        self._port = int(device.endpoint.get("port", DEFAULT_PORT))
        self._timeout = float(device.limits.timeout_ms or DEFAULT_TIMEOUT_MS) / 1000
        self._streams: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None

    @property
    def connected(self) -> bool:
        return self._streams is not None and not self._streams[1].is_closing()

    async def connect(self) -> None:
        """Connect unless connected; raises :class:`OSError` or :class:`TimeoutError`."""
        if self.connected:
            return
        await self.close()
        async with asyncio.timeout(self._timeout):
            self._streams = await asyncio.open_connection(self._host, self._port)

    async def read(self, group: ReadGroup, scheduled_at: datetime) -> list[Record]:
        """One ``READ`` for the group: a record per point, in the group's order."""
        sent_at = datetime.now(UTC)
        try:
            lines = await self._exchange(group)
        except TimeoutError:
            await self.close()
            return self._gaps(group, scheduled_at, GapReason.TIMEOUT, "no answer in time")
        except OSError as error:
            await self.close()
            return self._gaps(group, scheduled_at, GapReason.REFUSED, str(error) or "no connection")
        return [
            self._record(str(name), line, sent_at, scheduled_at)
            for name, line in zip(group.points, lines, strict=True)
        ]

    async def _exchange(self, group: ReadGroup) -> list[bytes]:
        if self._streams is None or not self.connected:
            raise ConnectionResetError(errno.ENOTCONN, f"not connected to {self._where()}")
        reader, writer = self._streams
        async with asyncio.timeout(self._timeout):
            writer.write(request(group.spec["registers"]))
            await writer.drain()
            lines = [await reader.readline() for _ in group.spec["registers"]]
        if not all(line.endswith(b"\n") for line in lines):
            raise ConnectionResetError(errno.ECONNRESET, f"{self._where()} closed the connection")
        return lines

    def _record(self, point: str, line: bytes, sent_at: datetime, at: datetime) -> Record:
        try:
            value = parse_answer(line)
        except ValueError as error:
            return Gap(self.device_id, point, at, GapReason.MALFORMED, str(error))
        if isinstance(value, ErrorCode):
            code = int(value)
            return Gap(self.device_id, point, at, GapReason.EXCEPTION, f"ERR {code}", code)
        return Reading(self.device_id, point, sent_at, value, scheduled_at=at)

    def _gaps(self, group: ReadGroup, at: datetime, reason: GapReason, detail: str) -> list[Record]:
        return [Gap(self.device_id, str(name), at, reason, detail) for name in group.points]

    async def subscribe(self, group: ReadGroup, deliver: Deliver) -> None:
        raise ConvergeError(f"line has no subscriptions (device '{self.device_id}')")

    async def close(self) -> None:
        """Close the connection; idempotent, never raises."""
        streams, self._streams = self._streams, None
        if streams is not None:
            streams[1].close()
            with contextlib.suppress(Exception):
                await streams[1].wait_closed()

    def _where(self) -> str:
        return f"{self._host}:{self._port}"
