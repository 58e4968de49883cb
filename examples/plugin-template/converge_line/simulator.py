"""Simulated ``line`` devices: one asyncio TCP server per device, on its endpoint.

Each answer is ``value_at(device, point, t)`` of the point on the register
asked for (``ERR 2`` for a register no point uses). Faults, as
``converge simulate --faults`` and the conformance kit inject them:

| fault | effect |
|---|---|
| ``stop`` / ``start`` | close the server and its connections / listen again on the same port |
| ``delay`` ``{seconds}`` | answer every request that much later; ``0`` ends it |

Any other kind raises :class:`~engine.errors.ConvergeError`.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Sequence

from converge_line.schema import DEFAULT_PORT
from converge_line.wire import NO_SUCH_REGISTER, answer, error, parse_request
from engine.errors import ConvergeError
from engine.model import Device
from engine.protocols import Fault, ValueAt


class SimulatedDevice:
    """One device: its registers, its faults, and its server while it runs."""

    def __init__(self, device: Device, value_at: ValueAt, started_at: float) -> None:
        self.device = device
        self.value_at = value_at
        self.started_at = started_at
        self.registers = {int(p.address["register"]): p.name for p in device.points}
        self.delay_s = 0.0
        self.server: asyncio.Server | None = None
        self.writers: set[asyncio.StreamWriter] = set()

    async def start(self) -> None:
        if self.server is not None:
            return
        host = str(self.device.endpoint["host"])
        port = int(self.device.endpoint.get("port", DEFAULT_PORT))
        try:
            self.server = await asyncio.start_server(self.serve, host, port)
        except OSError as exc:
            raise ConvergeError(f"cannot serve '{self.device.id}' on {host}:{port}: {exc}") from exc

    async def stop(self) -> None:
        server, self.server = self.server, None
        if server is not None:
            server.close()
        for writer in list(self.writers):
            writer.close()
        if server is not None:
            await server.wait_closed()

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.writers.add(writer)
        try:
            while line := await reader.readline():
                if self.delay_s:
                    await asyncio.sleep(self.delay_s)
                writer.write(self.answer(line))
                await writer.drain()
        except (OSError, ValueError):
            pass  # a client gone, or one that does not speak line: drop it
        finally:
            self.writers.discard(writer)
            writer.close()

    def answer(self, line: bytes) -> bytes:
        t = asyncio.get_running_loop().time() - self.started_at
        answers = []
        for register in parse_request(line):
            point = self.registers.get(register)
            if point is None:
                answers.append(error(NO_SUCH_REGISTER))
            else:
                answers.append(answer(self.value_at(self.device.id, point, t)))
        return b"".join(answers)


class LineSimulator:
    """Real local ``line`` servers for some devices (see the module docstring)."""

    def __init__(self, devices: Sequence[Device], value_at: ValueAt) -> None:
        self._devices = list(devices)
        self._value_at = value_at
        self._sims: dict[str, SimulatedDevice] = {}

    async def start(self) -> None:
        started_at = asyncio.get_running_loop().time()
        self._sims = {d.id: SimulatedDevice(d, self._value_at, started_at) for d in self._devices}
        try:
            for sim in self._sims.values():
                await sim.start()
        except ConvergeError:
            await self.stop()
            raise

    async def inject(self, fault: Fault) -> None:
        sim = self._sims.get(fault.device)
        if sim is None:
            raise ConvergeError(f"no simulated line device '{fault.device}'")
        if fault.kind == "stop":
            await sim.stop()
        elif fault.kind == "start":
            await sim.start()
        elif fault.kind == "delay":
            sim.delay_s = float(fault.params.get("seconds", 0))
        else:
            raise ConvergeError(f"the line simulator has no fault '{fault.kind}'")

    async def stop(self) -> None:
        """Stop every server; idempotent."""
        for sim in self._sims.values():
            with contextlib.suppress(OSError):
                await sim.stop()
