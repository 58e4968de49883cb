"""Model objects for protocol-plugin tests, built directly (no YAML, no engine stages)."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

from engine.errors import Location
from engine.model import Device, Limits, PlannedPoint, Point

AT = Location("site.yaml", 1, 1)
PLUGINS = Path(__file__).resolve().parents[2] / "plugins"


def planned(
    name: str,
    address: Mapping[str, Any],
    *,
    every_ms: int | None = 5000,
    cron: tuple[str, ...] = (),
    deadband: float | None = None,
) -> PlannedPoint:
    point = Point(name, None, None, dict(address), AT, AT)
    return PlannedPoint(point, every_ms=every_ms, cron=cron, deadband=deadband)


def device(
    protocol: str,
    points: Sequence[PlannedPoint],
    endpoint: Mapping[str, Any] | None = None,
    **limits: Any,
) -> Device:
    return Device(
        id="dev-1",
        site="plant",
        protocol=protocol,
        endpoint=dict(endpoint or {}),
        limits=Limits(**limits),
        points=tuple(p.point for p in points),
        location=AT,
    )


def readme_sample(plugin: str) -> list[dict[str, Any]]:
    """The devices of the first YAML block of ``plugins/<plugin>/README.md``."""
    text = (PLUGINS / plugin / "README.md").read_text(encoding="utf-8")
    block = text.split("```yaml\n", 1)[1].split("```", 1)[0]
    devices: list[dict[str, Any]] = yaml.safe_load(block)["devices"]
    return devices


def readme_json_blocks(plugin: str) -> list[Any]:
    """Every JSON block of ``plugins/<plugin>/README.md``, parsed."""
    text = (PLUGINS / plugin / "README.md").read_text(encoding="utf-8")
    return [json.loads(part.split("```", 1)[0]) for part in text.split("```json\n")[1:]]


def planned_from_sample(sample: Mapping[str, Any], **schedule: Any) -> list[PlannedPoint]:
    return [planned(p["name"], p["address"], **schedule) for p in sample["points"]]
