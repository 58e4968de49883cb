"""The objects protocol plugins hand the engine at run time.

pluggy calls hooks synchronously, so the run-time hooks return objects whose
methods are coroutines: a :class:`Session` talks to one device for the
collector, a :class:`Simulator` serves one site's devices of one protocol
from real local servers. Both are structural types: a plugin's classes need
not inherit from them, only have these methods.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any, Protocol

from engine.records import Record, Value

if TYPE_CHECKING:
    from engine.plans.body import ReadGroup

Deliver = Callable[[Record], Awaitable[None]]
"""Where a subscription hands each record it receives (the collector's queue)."""


class Session(Protocol):
    """One device, as the collector sees it, for the life of a run.

    The collector owns reconnection: it calls :meth:`connect` again after any
    failure, with backoff. Methods must not retry on their own, and must
    raise only :class:`OSError`, :class:`TimeoutError` or
    :class:`~engine.errors.ConvergeError`; answers of the device, good or
    bad, are records.
    """

    @property
    def connected(self) -> bool:
        """Whether the connection is up as far as the session knows.

        A subscription-only session has no request to fail when its server
        goes away; it says so here, and the collector reconnects it.
        """

    async def connect(self) -> None:
        """Open the connection (and, for OPC UA, the session); idempotent."""

    async def read(self, group: ReadGroup, scheduled_at: datetime) -> list[Record]:
        """Read one read group of the plan: one record per point of the group, in its order."""

    async def subscribe(self, group: ReadGroup, deliver: Deliver) -> None:
        """Start a subscription read group; records arrive through ``deliver``."""

    async def close(self) -> None:
        """Close the connection; idempotent, never raises."""


ValueAt = Callable[[str, str, float], Value]
"""``value_at(device, point, seconds_since_start)``: what a simulated point shows."""


@dataclass(frozen=True)
class Fault:
    """A fault to inject into a simulated device (see ``converge simulate --faults``).

    ``kind`` is one of ``stop``, ``start``, ``delay`` (``seconds``),
    ``exception`` (Modbus ``code``), ``bad-status`` (OPC UA ``code``),
    ``drop-connections`` and ``malformed`` (MQTT). A simulator raises
    :class:`~engine.errors.ConvergeError` for a kind it does not support.
    """

    kind: str
    device: str
    params: Mapping[str, Any] = field(default_factory=dict)


class Simulator(Protocol):
    """Real local servers of one protocol, serving the points of some devices."""

    async def start(self) -> None:
        """Start serving every device on its endpoint's host and port."""

    async def inject(self, fault: Fault) -> None:
        """Apply a fault now (or undo it: ``start`` after ``stop``, ``delay`` of 0)."""

    async def stop(self) -> None:
        """Stop every server; idempotent."""


__all__ = ["Deliver", "Fault", "Session", "Simulator", "ValueAt"]
