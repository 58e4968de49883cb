"""Collecting one Modbus device: a :class:`~engine.protocols.Session` on pymodbus.

One read group is one request. Whatever the device answers becomes records:
a reading per point, or a gap per point with the reason (``timeout``,
``refused``, ``exception`` with the Modbus exception code, ``malformed``).

Deadlines are ours: the connect and each request run under ``asyncio.timeout``
of ``limits.timeout_ms``, and pymodbus gets a longer timeout and no retries or
automatic reconnection of its own, since the collector owns retries and
reconnection. A late answer that arrives after our deadline carries an old
transaction id, and pymodbus skips it, so it is never taken for the answer to
the next request; RTU frames have none, so over RTU a timeout drops the connection.
"""

from __future__ import annotations

import asyncio
import errno
import math
from collections.abc import Awaitable, Callable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

from pymodbus.client import AsyncModbusTcpClient
from pymodbus.exceptions import ConnectionException, ModbusException
from pymodbus.framer import FramerType
from pymodbus.pdu import ExceptionResponse, ModbusPDU

from engine.errors import ConvergeError
from engine.plans.body import PlanBody, ReadGroup
from engine.protocols import Deliver
from engine.records import Gap, GapReason, Quality, Reading, Record, Value
from plugins.modbus.codec import decode_group
from plugins.modbus.schema import BIT_TABLES
from plugins.reach import unreachable

DEFAULT_TIMEOUT_MS = 3000

RETRYABLE_EXCEPTION_CODES = frozenset({6, 0x0A, 0x0B})
"""Exception codes worth retrying: device busy, gateway path unavailable, gateway target
failed to respond. Illegal function, address or value (1, 2, 3) never heal by retrying."""

_BACKSTOP_S = 1.0
"""How much longer than our own deadline pymodbus waits, so that ours always fires first."""


def is_retryable(record: Record) -> bool:
    """Whether the collector may retry the sample that gave ``record``.

    Timeouts are; Modbus exceptions only with a code of
    :data:`RETRYABLE_EXCEPTION_CODES`. A refused connection is the
    collector's to handle by reconnecting, not by retrying the read.
    """
    if not isinstance(record, Gap):
        return False
    if record.reason is GapReason.TIMEOUT:
        return True
    return record.reason is GapReason.EXCEPTION and record.raw_code in RETRYABLE_EXCEPTION_CODES


class ModbusSession:
    """One Modbus device over TCP (Modbus TCP, or RTU frames over TCP), for one plan."""

    def __init__(self, plan: PlanBody) -> None:
        device = plan.device
        self.device_id = device.id
        self._endpoint = device.endpoint
        self._timeout = float(device.limits.timeout_ms or DEFAULT_TIMEOUT_MS) / 1000
        self._pause = float(device.limits.pause_after_connect_ms or 0) / 1000
        self._framer = FramerType(str(self._endpoint.get("framer", "socket")))
        self._addresses = {p.name: p.address for p in plan.points}
        self._client: AsyncModbusTcpClient | None = None
        self._lost = asyncio.Event()

    @property
    def connected(self) -> bool:
        """Whether connected; after a ``refused`` gap it is not, until :meth:`connect`."""
        return self._client is not None and self._client.connected and not self._lost.is_set()

    async def connect(self) -> None:
        """Connect, unless connected; raises :class:`OSError` or :class:`TimeoutError`."""
        if self.connected:
            return
        await self.close()
        self._lost = asyncio.Event()
        client = self._new_client()
        try:
            async with asyncio.timeout(self._timeout):
                ok = await client.connect()
        except BaseException:  # our timeout, or the caller's cancelling: leave no socket behind
            client.close()
            raise
        if not ok:
            client.close()
            raise unreachable(self.device_id, self._where(), await self._why_not())
        self._client = client
        if self._pause:
            await asyncio.sleep(self._pause)

    async def _why_not(self) -> BaseException:
        """What a plain TCP connect to the endpoint says (pymodbus only logs it)."""
        host, port = str(self._endpoint["host"]), int(self._endpoint.get("port", 502))
        try:
            async with asyncio.timeout(self._timeout):
                _, writer = await asyncio.open_connection(host, port)
        except OSError as error:  # a timeout too, which says no more than "no answer"
            return error
        writer.close()
        return ConnectionError("the device accepted a connection, then the Modbus client lost it")

    def _new_client(self) -> AsyncModbusTcpClient:
        lost = self._lost

        def on_connect_change(connected: bool) -> None:
            if not connected:
                lost.set()

        return AsyncModbusTcpClient(
            str(self._endpoint["host"]),
            port=int(self._endpoint.get("port", 502)),
            framer=self._framer,
            timeout=self._timeout + _BACKSTOP_S,
            retries=0,
            reconnect_delay=0,
            trace_connect=on_connect_change,
        )

    async def read(self, group: ReadGroup, scheduled_at: datetime) -> list[Record]:
        """One request for ``group``: a reading per point, or a gap per point."""
        sent_at = datetime.now(UTC)
        try:
            response = await self._request(group)
        except TimeoutError:
            self._forget_late_answer()
            return self._gaps(group, scheduled_at, GapReason.TIMEOUT, "no answer in time")
        except (OSError, ConnectionException) as error:
            self._lost.set()
            return self._gaps(group, scheduled_at, GapReason.REFUSED, str(error) or "no connection")
        except ModbusException as error:
            return self._gaps(group, scheduled_at, GapReason.MALFORMED, str(error))
        if isinstance(response, ExceptionResponse):
            code = int(response.exception_code)
            detail = f"Modbus exception {code}"
            return self._gaps(group, scheduled_at, GapReason.EXCEPTION, detail, code)
        try:
            values = decode_group(group.spec, self._addresses, _payload(group.spec, response))
        except ValueError as error:
            return self._gaps(group, scheduled_at, GapReason.MALFORMED, str(error))
        return [
            _reading(self.device_id, name, value, sent_at, scheduled_at)
            for name, value in zip(group.points, values, strict=True)
        ]

    async def _request(self, group: ReadGroup) -> ModbusPDU:
        """Send the group's request; the connection being lost meanwhile is a reset."""
        client = self._client
        if client is None or not self.connected:
            raise ConnectionResetError(errno.ENOTCONN, f"not connected to {self._where()}")
        spec = group.spec
        call = _READS[str(spec["table"])](client)
        request = asyncio.ensure_future(
            call(int(spec["start"]), count=int(spec["count"]), device_id=int(spec["unit"]))
        )
        lost = asyncio.ensure_future(self._lost.wait())
        try:
            async with asyncio.timeout(self._timeout):
                await asyncio.wait({request, lost}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (request, lost):
                task.cancel()
        if request.done() and not request.cancelled():
            return request.result()
        raise ConnectionResetError(errno.ECONNRESET, f"connection to {self._where()} lost")

    def _forget_late_answer(self) -> None:
        """RTU frames carry no transaction id: drop the connection, lest a late answer be taken
        for the next one. Modbus TCP frames do, and pymodbus skips a late one."""
        if self._framer is FramerType.RTU:
            self._lost.set()

    def _gaps(
        self,
        group: ReadGroup,
        scheduled_at: datetime,
        reason: GapReason,
        detail: str,
        raw_code: int | None = None,
    ) -> list[Record]:
        return [
            Gap(self.device_id, name, scheduled_at, reason, detail, raw_code)
            for name in group.points
        ]

    async def subscribe(self, group: ReadGroup, deliver: Deliver) -> None:
        """Modbus has no subscriptions: every group is polled."""
        raise ConvergeError(f"Modbus has no subscriptions (device '{self.device_id}')")

    async def close(self) -> None:
        """Close the connection; idempotent, never raises."""
        client, self._client = self._client, None
        if client is not None:
            client.close()

    def _where(self) -> str:
        return f"{self._endpoint['host']}:{self._endpoint.get('port', 502)}"


Read = Callable[..., Awaitable[ModbusPDU]]

_READS: dict[str, Callable[[AsyncModbusTcpClient], Read]] = {
    "coil": lambda c: c.read_coils,
    "discrete": lambda c: c.read_discrete_inputs,
    "holding": lambda c: c.read_holding_registers,
    "input": lambda c: c.read_input_registers,
}
"""The read of each table (function codes 1, 2, 3, 4)."""


def _payload(group: Mapping[str, Any], response: ModbusPDU) -> Sequence[int] | Sequence[bool]:
    """The bits or registers of a good answer."""
    if group["table"] in BIT_TABLES:
        return list(response.bits)
    return list(response.registers)


def _reading(
    device: str, point: str, value: Value, sent_at: datetime, scheduled_at: datetime
) -> Reading:
    """A reading; a float that is not finite (a sensor fault, often) is a bad reading.

    NaN and infinity have no canonical JSON form, so they are kept as
    ``raw_code`` and the value is ``None``.
    """
    if isinstance(value, float) and not math.isfinite(value):
        code = str(value)
        return Reading(device, point, sent_at, None, Quality.BAD, None, None, code, scheduled_at)
    return Reading(device, point, sent_at, value, scheduled_at=scheduled_at)


__all__ = ["RETRYABLE_EXCEPTION_CODES", "ModbusSession", "is_retryable"]
