"""Built-in Modbus protocol plugin: schemas, read-group planning, sessions, simulator.

Only hook implementations live here; see ``README.md`` for what a site
inventory writes and what the plan contains.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from engine.hookspecs import hookimpl
from engine.model import Device, PlannedPoint, ReadGroupPlan
from engine.protocols import Session, Simulator, ValueAt
from plugins.modbus.address import address_problems
from plugins.modbus.plan import plan_read_groups
from plugins.modbus.schema import address_schema, endpoint_schema

PROTOCOL = "modbus"


@hookimpl
def converge_protocol_names() -> list[str]:
    return [PROTOCOL]


@hookimpl
def converge_endpoint_schema(protocol: str) -> dict[str, Any] | None:
    return endpoint_schema() if protocol == PROTOCOL else None


@hookimpl
def converge_address_schema(protocol: str) -> dict[str, Any] | None:
    return address_schema() if protocol == PROTOCOL else None


@hookimpl
def converge_check_address(protocol: str, address: dict[str, Any]) -> list[str] | None:
    return address_problems(address) if protocol == PROTOCOL else None


@hookimpl
def converge_plan_read_groups(
    device: Device, points: Sequence[PlannedPoint]
) -> ReadGroupPlan | None:
    return plan_read_groups(device, points) if device.protocol == PROTOCOL else None


# --- run time -----------------------------------------------------------------------------


@hookimpl
def converge_open_session(plan: Mapping[str, Any]) -> Session | None:
    if plan["device"]["protocol"] != PROTOCOL:
        return None
    # Imported here: pymodbus is an optional dependency that planning does not need.
    from plugins.modbus.session import ModbusSession  # noqa: PLC0415

    return ModbusSession(plan)


@hookimpl
def converge_simulator(
    protocol: str, devices: Sequence[Device], value_at: ValueAt
) -> Simulator | None:
    if protocol != PROTOCOL:
        return None
    from plugins.modbus.simulator import ModbusSimulator  # noqa: PLC0415

    return ModbusSimulator(devices, value_at)
