"""Simulated Modbus devices: one real pymodbus TCP server per device.

Each device's server answers on the device's endpoint for every unit its
points use, from a :class:`PointStore` that holds exactly the addresses of
its points: a request touching any other address is answered "illegal data
address" (exception 2), as most PLCs do, so a read group spanning a hole is
caught; a device whose inventory allows reading holes (``limits.max_gap`` above
0) answers 0 for them instead. Values are refreshed from ``value_at`` every
100 ms.

The store is the server's datastore, and pymodbus awaits it for every
request, which is where faults act: ``delay`` sleeps before answering and
``exception`` answers with a Modbus exception code. ``stop``/``start`` stop
and restart the device's server (values are kept); ``drop-connections``
closes the open connections and keeps listening.

The store plugs in as a ``ModbusServerContext`` (pymodbus 3.x; deprecated
there in favour of ``SimDevice``, which cannot express holes between coils
or delays, and to be ported when pymodbus 4 removes it).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field

from pymodbus.constants import ExcCodes
from pymodbus.datastore import ModbusServerContext
from pymodbus.exceptions import NoSuchIdException
from pymodbus.framer import FramerType
from pymodbus.server import ModbusTcpServer

from engine.errors import ConvergeError
from engine.model import Device, Point
from engine.protocols import Fault, ValueAt
from engine.records import Value
from plugins.modbus.address import value_type
from plugins.modbus.codec import encode_registers, merge_bit
from plugins.modbus.schema import BIT_TABLES
from plugins.reach import cannot_serve

REFRESH_S = 0.1

Answer = list[int] | list[bool] | ExcCodes

_TABLE_OF_FUNCTION = {1: "coil", 2: "discrete", 3: "holding", 4: "input"}

log = logging.getLogger(__name__)


@dataclass
class FaultState:
    """What a device's server does to every request, besides answering it."""

    delay_s: float = 0.0
    exception_code: int = 0


@dataclass
class PointStore:
    """The registers and bits of one device, by (unit, table), holding only mapped addresses."""

    tables: dict[tuple[int, str], dict[int, int | bool]] = field(
        default_factory=lambda: defaultdict(dict)
    )
    faults: FaultState = field(default_factory=FaultState)
    holes_readable: bool = False
    """True for a device that answers unmapped registers (its ``limits.max_gap`` is above 0)."""

    def put(self, unit: int, point: Point, value: Value) -> None:
        """Store ``value`` at the point's address; :class:`ValueError` when it does not fit."""
        address = point.address
        table = self.tables[(unit, str(address["table"]))]
        start = int(address["register"])
        if address["table"] in BIT_TABLES:
            table[start] = bool(value)
        elif value_type(address) == "bool" and address.get("bit") is not None:
            table[start] = merge_bit(int(table.get(start, 0)), address, bool(value))
        else:
            for i, register in enumerate(encode_registers(address, value)):
                table[start + i] = register

    def get(self, unit: int, table: str, start: int, count: int) -> Answer:
        """What a read answers: the values, or the exception a real device would give."""
        values = self.tables.get((unit, table), {})
        if not self.holes_readable and any(a not in values for a in range(start, start + count)):
            return ExcCodes.ILLEGAL_ADDRESS
        if self.holes_readable and not values:
            return ExcCodes.ILLEGAL_ADDRESS
        values = {a: values.get(a, 0) for a in range(start, start + count)}
        if table in BIT_TABLES:
            return [bool(values[a]) for a in range(start, start + count)]
        return [int(values[a]) for a in range(start, start + count)]


class StoreContext(ModbusServerContext):
    """A :class:`PointStore` as the datastore of a pymodbus server.

    ``old_simulator`` makes the server call :meth:`async_getValues` for every
    request; the base ``__init__`` is not called because it only builds the
    ``SimDevice`` datastore that this class replaces.
    """

    def __init__(self, store: PointStore, units: Sequence[int]) -> None:
        self.store = store
        self.units = sorted(set(units))
        self.old_simulator = True
        self.simdevices = []

    async def async_getValues(
        self, device_id: int, func_code: int, address: int, count: int = 1
    ) -> Answer:
        if device_id not in self.units:
            raise NoSuchIdException(f"no unit {device_id}")  # answered 0x0B, as a gateway does
        faults = self.store.faults
        if faults.delay_s > 0:
            await asyncio.sleep(faults.delay_s)
        if faults.exception_code:
            return ExcCodes(faults.exception_code)
        table = _TABLE_OF_FUNCTION.get(func_code)
        if table is None:
            return ExcCodes.ILLEGAL_FUNCTION
        return self.store.get(device_id, table, address, count)

    async def async_setValues(
        self, device_id: int, func_code: int, address: int, values: Sequence[int] | Sequence[bool]
    ) -> ExcCodes | None:
        """The simulator is read-only: every write is an illegal function."""
        return ExcCodes.ILLEGAL_FUNCTION

    def device_ids(self) -> list[int]:
        return list(self.units)


class SimulatedDevice:
    """One device: its store, and its server while it runs."""

    def __init__(self, device: Device) -> None:
        self.device = device
        self.unit = int(device.endpoint.get("unit", 1))
        self.store = PointStore(holes_readable=device.limits.max_gap > 0)
        self.server: ModbusTcpServer | None = None

    def unit_of(self, point: Point) -> int:
        return int(point.address.get("unit", self.unit))

    def refresh(self, value_at: ValueAt, t: float) -> None:
        """Store every point's value at ``t``; a value that does not fit keeps the old one."""
        for point in self.device.points:
            try:
                self.store.put(self.unit_of(point), point, value_at(self.device.id, point.name, t))
            except (ValueError, TypeError) as error:
                log.warning("%s/%s: cannot serve value: %s", self.device.id, point.name, error)

    async def start(self) -> None:
        if self.server is not None:
            return
        endpoint = self.device.endpoint
        server = ModbusTcpServer(
            StoreContext(self.store, [self.unit_of(p) for p in self.device.points] or [self.unit]),
            framer=FramerType(str(endpoint.get("framer", "socket"))),
            address=(str(endpoint["host"]), int(endpoint.get("port", 502))),
        )
        host, port = str(endpoint["host"]), int(endpoint.get("port", 502))
        try:
            await server.serve_forever(background=True)
        except (RuntimeError, OSError) as error:
            what = f"{self.device.id} (modbus)"
            raise cannot_serve(what, f"{host}:{port}", host, port, error) from error
        self.server = server

    async def stop(self) -> None:
        server, self.server = self.server, None
        if server is not None:
            await server.shutdown()  # type: ignore[no-untyped-call]

    def drop_connections(self) -> None:
        if self.server is not None:
            for connection in list(self.server.active_connections.values()):
                connection.close()


class ModbusSimulator:
    """Real local Modbus TCP servers for some devices (see the module docstring)."""

    def __init__(self, devices: Sequence[Device], value_at: ValueAt) -> None:
        self._devices = {d.id: SimulatedDevice(d) for d in devices}
        self._value_at = value_at
        self._refresher: asyncio.Task[None] | None = None
        self._started_at = 0.0

    async def start(self) -> None:
        """Fill every store, then start every server and the refresh task."""
        loop = asyncio.get_running_loop()
        self._started_at = loop.time()
        self._refresh()
        try:
            for sim in self._devices.values():
                await sim.start()
        except ConvergeError:
            await self.stop()
            raise
        self._refresher = asyncio.create_task(self._refresh_forever())

    async def inject(self, fault: Fault) -> None:
        sim = self._devices.get(fault.device)
        if sim is None:
            raise ConvergeError(f"no simulated Modbus device '{fault.device}'")
        if fault.kind == "stop":
            await sim.stop()
        elif fault.kind == "start":
            await sim.start()
        elif fault.kind == "delay":
            sim.store.faults.delay_s = float(fault.params.get("seconds", 0))
        elif fault.kind == "exception":
            sim.store.faults.exception_code = _exception_code(fault.params.get("code", 0))
        elif fault.kind == "drop-connections":
            sim.drop_connections()
        else:
            raise ConvergeError(f"the Modbus simulator has no fault '{fault.kind}'")

    async def stop(self) -> None:
        """Stop the refresh task and every server; idempotent."""
        refresher, self._refresher = self._refresher, None
        if refresher is not None:
            refresher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await refresher
        for sim in self._devices.values():
            await sim.stop()

    def _refresh(self) -> None:
        t = asyncio.get_running_loop().time() - self._started_at
        for sim in self._devices.values():
            sim.refresh(self._value_at, t)

    async def _refresh_forever(self) -> None:
        while True:
            await asyncio.sleep(REFRESH_S)
            self._refresh()


def _exception_code(code: object) -> int:
    """A Modbus exception code pymodbus can send, or 0 to answer normally again."""
    number = int(str(code), 0)
    if number and number not in set(ExcCodes):
        valid = ", ".join(str(int(c)) for c in ExcCodes)
        raise ConvergeError(f"Modbus exception code {number} is not one of {valid}")
    return number


__all__ = ["FaultState", "ModbusSimulator", "PointStore"]
