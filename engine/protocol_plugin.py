"""A protocol plugin in one declaration.

Every protocol hook takes the protocol (or a device or plan naming it) and
must answer ``None`` for protocols that are not its own. Writing that test
seven times per plugin is noise, so a plugin may instead declare what it
provides and register the declaration::

    plugin = ProtocolPlugin(
        name="modbus",
        endpoint_schema=endpoint_schema,
        address_schema=address_schema,
        check_address=address_problems,
        plan_read_groups=plan_read_groups,
        session="plugins.modbus.session:ModbusSession",
        simulator="plugins.modbus.simulator:ModbusSimulator",
    )

with ``modbus = "plugins.modbus:plugin"`` in the ``converge`` entry-point
group. Session and simulator classes are named as ``module:Class`` and
imported on first use, so that compiling plans never imports a protocol
client library.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from engine.hookspecs import hookimpl
from engine.model import Device, PlannedPoint, ReadGroupPlan
from engine.plans.body import PlanBody
from engine.protocols import Session, Simulator, ValueAt

Schema = dict[str, Any]


@dataclass(frozen=True)
class ProtocolPlugin:
    """The hook implementations of one protocol, answering only for ``name``."""

    name: str
    endpoint_schema: Callable[[], Schema]
    address_schema: Callable[[], Schema]
    check_address: Callable[[Mapping[str, Any]], list[str]]
    plan_read_groups: Callable[[Device, Sequence[PlannedPoint]], ReadGroupPlan]
    session: str | None = None
    """``module:Class`` of the :class:`~engine.protocols.Session`, built with the plan."""
    simulator: str | None = None
    """``module:Class`` of the :class:`~engine.protocols.Simulator`, built with
    the devices and the value function."""

    @hookimpl
    def converge_protocol_names(self) -> list[str]:
        return [self.name]

    @hookimpl
    def converge_endpoint_schema(self, protocol: str) -> Schema | None:
        return self.endpoint_schema() if protocol == self.name else None

    @hookimpl
    def converge_address_schema(self, protocol: str) -> Schema | None:
        return self.address_schema() if protocol == self.name else None

    @hookimpl
    def converge_check_address(self, protocol: str, address: dict[str, Any]) -> list[str] | None:
        return self.check_address(address) if protocol == self.name else None

    @hookimpl
    def converge_plan_read_groups(
        self, device: Device, points: Sequence[PlannedPoint]
    ) -> ReadGroupPlan | None:
        return self.plan_read_groups(device, points) if device.protocol == self.name else None

    @hookimpl
    def converge_open_session(self, plan: PlanBody) -> Session | None:
        if self.session is None or plan.device.protocol != self.name:
            return None
        session: Session = _load(self.session)(plan)
        return session

    @hookimpl
    def converge_simulator(
        self, protocol: str, devices: Sequence[Device], value_at: ValueAt
    ) -> Simulator | None:
        if self.simulator is None or protocol != self.name:
            return None
        simulator: Simulator = _load(self.simulator)(devices, value_at)
        return simulator


def _load(reference: str) -> Any:
    """The object ``module:attribute`` names."""
    module, _, attribute = reference.partition(":")
    return getattr(importlib.import_module(module), attribute)
