"""``converge simulate``: serve a site's points from real local protocol servers.

The site is validated by the compiler's own load and validate stages (no
policies needed). Values come from deterministic generators declared in
``simulation.yaml`` beside ``site.yaml``; a point it does not name gets a sine
whose mean and amplitude derive from a hash of its name (bools alternate), so
every run, on every machine, serves the same values at the same ``t``.
A faults file schedules :class:`~engine.protocols.Fault` injections.
"""

from __future__ import annotations

import asyncio
import contextlib
import fnmatch
import hashlib
import math
import random
import signal
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pluggy
from rich.console import Console

from engine.compile import Inputs, compile_project
from engine.compile.load import Document, load_file
from engine.compile.validate.schema_errors import run
from engine.durations import parse_duration
from engine.errors import ConvergeError, Finding, FindingsError, PluginError, error
from engine.model import Device, Point, Site
from engine.plugin_manager import make_plugin_manager
from engine.protocols import Fault, Simulator
from engine.records import Value

SIMULATION_FILE = "simulation.yaml"
GENERATORS = ("constant", "ramp", "sine", "step", "noise")
FAULT_KINDS = ("stop", "start", "delay", "exception", "bad-status", "drop-connections", "malformed")
Generator = Callable[[float], Value]

_NUMBER = {"type": "number", "check_with": "finite"}
_DURATION = {"type": "string", "check_with": "positive_duration"}
_GENERATOR_SCHEMAS: dict[str, dict[str, Any]] = {
    "constant": {"value": {"type": ["number", "boolean", "string"], "required": True}},
    "ramp": {
        "start": {**_NUMBER, "required": True},
        "step": {**_NUMBER, "required": True},
        "min": _NUMBER,
        "max": _NUMBER,
    },
    "sine": {
        "mean": {**_NUMBER, "required": True},
        "amplitude": {**_NUMBER, "required": True},
        "period": {**_DURATION, "required": True},
    },
    "step": {
        "values": {
            "type": "list",
            "required": True,
            "minlength": 1,
            "schema": {"type": ["number", "boolean", "string"]},
        },
        "every": {**_DURATION, "required": True},
    },
    "noise": {
        "mean": {**_NUMBER, "required": True},
        "sigma": {**_NUMBER, "required": True},
        "seed": {"type": "integer", "default": 0},
    },
}
SIMULATION_SCHEMA: dict[str, Any] = {
    "values": {
        "type": "list",
        "default": [],
        "schema": {
            "type": "dict",
            "schema": {
                "device": {"type": "string", "required": True, "check_with": "glob"},
                "point": {"type": "string", "default": "*", "check_with": "glob"},
                **{
                    name: {"type": "dict", "schema": rules}
                    for name, rules in _GENERATOR_SCHEMAS.items()
                },
            },
        },
    },
}
FAULTS_SCHEMA: dict[str, Any] = {
    "faults": {
        "type": "list",
        "required": True,
        "schema": {
            "type": "dict",
            "schema": {
                "at": {"type": "string", "required": True, "check_with": "duration"},
                "device": {"type": "string", "required": True},
                "fault": {"type": "string", "required": True, "allowed": list(FAULT_KINDS)},
                "params": {"type": "dict", "default": {}},
            },
        },
    },
}


# --- generators ---------------------------------------------------------------------------


def make_generator(kind: str, p: Mapping[str, Any]) -> Generator:
    """The function of ``t`` (seconds since start) of one generator declaration."""
    if kind == "constant":
        return lambda t: p["value"]
    if kind == "ramp":
        return lambda t: _ramp(p["start"] + p["step"] * t, p["start"], p.get("min"), p.get("max"))
    if kind == "sine":
        period = parse_duration(p["period"]) / 1000
        return lambda t: p["mean"] + p["amplitude"] * math.sin(2 * math.pi * t / period)
    if kind == "step":
        every, values = parse_duration(p["every"]) / 1000, list(p["values"])
        return lambda t: values[int(t // every) % len(values)]
    return lambda t: random.Random(f"{p.get('seed', 0)}:{round(t * 1000)}").gauss(
        p["mean"], p["sigma"]
    )


def _ramp(value: float, start: float, low: float | None, high: float | None) -> float:
    """A ramp wraps around: past ``max`` it starts again at ``min`` (or its start), and back."""
    bottom = start if low is None else low
    if high is not None and value > high > bottom:
        return bottom + (value - bottom) % (high - bottom)
    if low is not None and value < low:
        top = start if high is None else high
        return top - (top - value) % (top - low) if top > low else low
    return value


def _fraction(text: str, salt: str) -> float:
    """A number in [0, 1) that depends only on ``text`` (not on PYTHONHASHSEED)."""
    digest = hashlib.sha256(f"{salt}:{text}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


_RAW_RANGE = {
    "int16": (-(2**15), 2**15 - 1),
    "uint16": (0, 2**16 - 1),
    "int32": (-(2**31), 2**31 - 1),
    "uint32": (0, 2**32 - 1),
}


def default_generator(point: Point) -> Generator:
    """A sine from the point name's hash, within what the address can represent."""
    address, name = point.address, point.name
    kind = str(address.get("type", "float32"))
    if kind == "bool" or address.get("table") in ("coil", "discrete"):
        half = 5 + 10 * _fraction(name, "period")
        return lambda t: int(t // half) % 2 == 1
    low, high = _engineering_range(address, kind)
    mean = low + (high - low) * (0.3 + 0.4 * _fraction(name, "mean"))
    amplitude = (high - low) * (0.05 + 0.15 * _fraction(name, "amplitude"))
    period = 30 + 90 * _fraction(name, "period")

    def sine(t: float) -> float:
        return mean + amplitude * math.sin(2 * math.pi * t / period)

    whole = kind in _RAW_RANGE and "scale" not in address
    return (lambda t: round(sine(t))) if whole else sine


def _engineering_range(address: Mapping[str, Any], kind: str) -> tuple[float, float]:
    """Values 0..100, narrowed to what an integer register with its scale can hold."""
    if kind not in _RAW_RANGE:
        return 0.0, 100.0
    scale, offset = float(address.get("scale", 1)), float(address.get("offset", 0))
    ends = sorted(r * scale + offset for r in _RAW_RANGE[kind])
    low, high = max(0.0, ends[0]), min(100.0, ends[1])
    return (low, high) if low < high else (ends[0], ends[1])


@dataclass
class ValueModel:
    """``value_at`` for a site: the first matching rule of simulation.yaml, else the default."""

    devices: Sequence[Device]
    rules: Sequence[Mapping[str, Any]] = ()
    generators: dict[tuple[str, str], Generator] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for device in self.devices:
            for point in device.points:
                self.generators[(device.id, point.name)] = self._pick(device.id, point)

    def _pick(self, device: str, point: Point) -> Generator:
        for rule in self.rules:
            if fnmatch.fnmatchcase(device, rule["device"]) and fnmatch.fnmatchcase(
                point.name, rule.get("point", "*")
            ):
                kind = next(k for k in GENERATORS if k in rule)
                return make_generator(kind, rule[kind])
        return default_generator(point)

    def value_at(self, device: str, point: str, t: float) -> Value:
        generator = self.generators.get((device, point))
        if generator is None:
            raise ConvergeError(f"no simulated point {device}/{point}")
        return generator(t)


# --- files --------------------------------------------------------------------------------


def _validated(path: Path, schema: dict[str, Any]) -> tuple[Document, Any, list[Finding]]:
    """The document, its normalized data and the schema's findings (path:line:col)."""
    doc = load_file(path)
    if not isinstance(doc.data, dict):
        raise FindingsError([error(doc.at(), "wrong-type", f"{path.name} must be a mapping")])
    found, data = run(schema, doc.data, doc)
    return doc, data, [p.finding for p in found]


def load_rules(path: Path) -> list[dict[str, Any]]:
    """The rules of a ``simulation.yaml``; each names exactly one generator."""
    doc, data, findings = _validated(path, SIMULATION_SCHEMA)
    rules = data.get("values") if isinstance(data.get("values"), list) else []
    for i, rule in enumerate(rules):
        kinds = [k for k in GENERATORS if isinstance(rule, dict) and k in rule]
        if len(kinds) != 1:
            findings.append(
                error(
                    doc.at(("values", i)),
                    "bad-value",
                    f"name exactly one generator ({', '.join(GENERATORS)}), got {len(kinds)}",
                )
            )
    if findings:
        raise FindingsError(findings)
    return list(rules)


def load_faults(path: Path, devices: Sequence[Device]) -> list[tuple[float, Fault]]:
    """``(seconds since start, fault)`` of a faults file, in time order."""
    doc, data, findings = _validated(path, FAULTS_SCHEMA)
    known = {d.id for d in devices}
    findings += [
        error(
            doc.at(("faults", i, "device")),
            "reference-unknown",
            f"no device {f.get('device')} in the site",
        )
        for i, f in enumerate(data.get("faults") or [])
        if isinstance(f, dict) and f.get("device") not in known
    ]
    if findings:
        raise FindingsError(findings)
    faults = [
        (parse_duration(f["at"]) / 1000, Fault(f["fault"], f["device"], f["params"]))
        for f in data["faults"]
    ]
    return sorted(faults, key=lambda item: item[0])


def load_sites(site_path: Path, pm: pluggy.PluginManager) -> list[Site]:
    """The valid sites at ``site_path`` (load and validate, no policies); raises on errors."""
    result = compile_project(Inputs([], [site_path]), pm)
    if not result.ok:
        raise FindingsError(result.findings)
    if not result.project.sites:
        raise ConvergeError(f"no site found at {site_path}")
    return result.project.sites


# --- running ------------------------------------------------------------------------------


@dataclass
class Simulation:
    sites: list[Site]
    simulators: dict[str, Simulator]
    by_device: dict[str, str]
    """Device id to protocol."""

    async def inject(self, fault: Fault) -> None:
        await self.simulators[self.by_device[fault.device]].inject(fault)


def _simulators(
    sites: Sequence[Site], model: ValueModel, pm: pluggy.PluginManager
) -> dict[str, Simulator]:
    by_protocol: dict[str, list[Device]] = {}
    for device in (d for s in sites for d in s.devices):
        by_protocol.setdefault(device.protocol, []).append(device)
    simulators: dict[str, Simulator] = {}
    for protocol, devices in by_protocol.items():
        sim = pm.hook.converge_simulator(
            protocol=protocol, devices=devices, value_at=model.value_at
        )
        if sim is None:
            raise PluginError(f"no plugin simulates protocol '{protocol}'")
        simulators[protocol] = sim
    return simulators


@contextlib.asynccontextmanager
async def running(
    site_path: Path | str,
    faults: Path | str | None = None,
    *,
    pm: pluggy.PluginManager | None = None,
) -> AsyncIterator[Simulation]:
    """Start a simulator per protocol of the site (and the fault schedule); stop them on exit."""
    pm = pm or make_plugin_manager()
    sites = load_sites(Path(site_path), pm)
    rules = [r for s in sites for r in _rules_beside(s)]
    devices = [d for s in sites for d in s.devices]
    schedule = load_faults(Path(faults), devices) if faults else []
    sim = Simulation(
        sites,
        _simulators(sites, ValueModel(devices, rules), pm),
        {d.id: d.protocol for d in devices},
    )
    started: list[Simulator] = []
    try:
        for protocol, simulator in sim.simulators.items():
            await _start(protocol, simulator)
            started.append(simulator)
        async with asyncio.TaskGroup() as tasks:
            injector = tasks.create_task(_inject_on_schedule(sim, schedule))
            yield sim
            injector.cancel()
    finally:
        for simulator in started:
            await simulator.stop()


async def _start(protocol: str, simulator: Simulator) -> None:
    """Start one simulator; a socket error its plugin let through is still one line."""
    try:
        await simulator.start()
    except OSError as error:
        raise ConvergeError(f"cannot start the {protocol} simulator: {error}") from error


def _rules_beside(site: Site) -> list[dict[str, Any]]:
    path = Path(site.location.path).parent / SIMULATION_FILE
    return load_rules(path) if path.is_file() else []


async def _inject_on_schedule(sim: Simulation, schedule: Sequence[tuple[float, Fault]]) -> None:
    loop = asyncio.get_running_loop()
    start = loop.time()
    for at, fault in schedule:
        await asyncio.sleep(max(0.0, start + at - loop.time()))
        await sim.inject(fault)


async def serve(
    site_path: Path,
    faults: Path | None,
    duration: float | None,
    pm: pluggy.PluginManager,
    console: Console,
) -> None:
    """``converge simulate``: serve until Ctrl-C, SIGTERM or ``duration`` seconds."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)
    async with running(site_path, faults, pm=pm) as sim:
        for site in sim.sites:
            for device in site.devices:
                console.print(
                    f"serving {device.id} ({device.protocol}) at {_where(device.endpoint)}",
                    markup=False,
                )
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), duration)
    console.print("stopped", markup=False)


def _where(endpoint: Mapping[str, Any]) -> str:
    if "host" in endpoint:
        return f"{endpoint['host']}:{endpoint.get('port', '')}"
    return str(endpoint.get("url") or endpoint.get("broker") or dict(endpoint))
