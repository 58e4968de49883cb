"""The conformance kit's target: a protocol, a compiled site, a server, the values it serves."""

from __future__ import annotations

import importlib.metadata
import importlib.util
import math
import re
import socket
import zlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import pluggy
import pytest

from engine.compile import Compilation, Inputs, compile_project
from engine.errors import Severity
from engine.model import Device
from engine.plans.body import PlanBody
from engine.plans.format import read_plan
from engine.protocols import Session, Simulator
from engine.records import Value

SERVERS = ("simulator", "external")
CHECK_LIMIT_S = 40.0
"""Hard limit of one run-time check."""
WAIT_S = 8.0
"""How long a subscription may take to deliver, or a stopped server to show."""
TIMEOUT_MS = 500
"""The session timeout (``limits.timeout_ms``) of the timeout check."""
DELAY_S = 1.5
"""The simulator's ``delay`` in the timeout check: well past :data:`TIMEOUT_MS`."""
POLL_S = 0.2
PORT = re.compile(r"\$\{(PORT\w*)\}")
BIT_TABLES = ("coil", "discrete")
POLICY = """\
policy: conformance-capture-all
title: Conformance kit, every point captured every second
owner: conformance-kit
applies:
  devices: {{protocol: [{protocol}]}}
capture:
  every: 1s
"""

Problems = list[str]


# --- the target: a protocol, a compiled site, a server -------------------------------------


@dataclass
class Target:
    protocol: str
    pm: pluggy.PluginManager = field(repr=False)
    root: Path
    server: str
    compilation: Compilation = field(repr=False)

    @classmethod
    def build(
        cls, protocol: str, pm: pluggy.PluginManager, source: Path, root: Path, server: str
    ) -> Target:
        """Write the site (ports filled in) and the capture-all policy, and compile them."""
        (root / "sites").mkdir()
        (root / "policies").mkdir()
        (root / "sites" / "site.yaml").write_text(with_ports(source.read_text("utf-8")), "utf-8")
        (root / "policies" / "capture.yaml").write_text(POLICY.format(protocol=protocol), "utf-8")
        compilation = compile_project(Inputs([root / "policies"], [root / "sites"]), pm)
        return cls(protocol, pm, root, server, compilation)

    @property
    def site_file(self) -> Path:
        return self.root / "sites" / "site.yaml"

    @property
    def devices(self) -> list[Device]:
        sites = self.compilation.project.sites
        return [d for s in sites for d in s.devices if d.protocol == self.protocol]

    @cached_property
    def plans(self) -> list[PlanBody]:
        bodies = [read_plan(p.canonical) for p in self.compilation.plans]
        return [b for b in bodies if b.device.protocol == self.protocol]

    @cached_property
    def values(self) -> dict[tuple[str, str], Value]:
        """What each simulated point shows: a constant, of the kind its address asks for."""
        return {
            (d.id, p.name): kit_value(d.id, p.name, p.address, index)
            for d in self.devices
            for index, p in enumerate(d.points)
        }

    def value_at(self, device: str, point: str, t: float) -> Value:
        return self.values[(device, point)]

    @property
    def simulated(self) -> bool:
        return self.server == "simulator"

    def require_simulator(self) -> None:
        if not self.simulated:
            pytest.skip("needs the plugin's simulator and its faults (--converge-server simulator)")

    def simulator(self) -> Simulator:
        simulator: Simulator | None = self.pm.hook.converge_simulator(
            protocol=self.protocol, devices=self.devices, value_at=self.value_at
        )
        if simulator is None:
            pytest.fail(
                f"the {self.protocol} plugin has no simulator: "
                "run with --converge-server external against your own server"
            )
        return simulator

    def session(self, plan: PlanBody) -> Session:
        session: Session | None = self.pm.hook.converge_open_session(plan=plan)
        if session is None:
            pytest.fail(f"the {self.protocol} plugin opens no session (converge_open_session)")
        return session

    def need_plans(self) -> None:
        errors = [str(f) for f in self.compilation.findings if f.severity is Severity.ERROR]
        if errors or not self.plans:
            pytest.fail("the site does not compile to plans:\n" + "\n".join(errors or ["no plan"]))


def with_ports(text: str) -> str:
    """``${PORT}``, ``${PORT_B}``, ...: one free loopback port per distinct name."""
    ports: dict[str, int] = {}
    return PORT.sub(lambda m: str(ports.setdefault(m.group(1), free_port())), text)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def shipped_site(pm: pluggy.PluginManager, protocol: str) -> Path:
    """``conformance/site.yaml`` next to the module of the entry point that names ``protocol``."""
    for impl in pm.hook.converge_protocol_names.get_hookimpls():
        names = impl.function()
        if not isinstance(names, list) or protocol not in names:
            continue
        for entry in importlib.metadata.entry_points(group="converge", name=impl.plugin_name):
            spec = importlib.util.find_spec(entry.module)
            if spec is not None and spec.origin:
                site = Path(spec.origin).parent / "conformance" / "site.yaml"
                if site.is_file():
                    return site
    pytest.fail(
        f"no site for '{protocol}': pass --converge-site SITE.yaml, or ship "
        "conformance/site.yaml in the plugin's package",
        pytrace=False,
    )


# --- values --------------------------------------------------------------------------------

KINDS = ("int", "float", "bool", "text")
_TYPE_PREFIXES = (
    ("int", "int"),
    ("uint", "int"),
    ("float", "float"),
    ("double", "float"),
    ("bool", "bool"),
    ("str", "text"),
)


def kit_value(device: str, point: str, address: Mapping[str, Any], index: int) -> Value:
    """A constant, exactly representable value: the kind the address's ``type`` names, or
    int, float, bool, text in turn by point order when the address has no ``type``."""
    seed = zlib.crc32(f"{device}/{point}".encode())
    kind = value_kind(address, index)
    if kind == "int":
        return 1 + seed % 100
    if kind == "float":
        return seed % 100 + 0.25
    if kind == "bool":
        return seed % 2 == 1
    return f"t{seed % 10}"


def value_kind(address: Mapping[str, Any], index: int) -> str:
    declared = str(address.get("type", ""))
    for prefix, kind in _TYPE_PREFIXES:
        if declared.startswith(prefix):
            return kind
    if address.get("table") in BIT_TABLES:
        return "bool"
    return KINDS[index % len(KINDS)]


def same_value(got: Value, want: Value, address: Mapping[str, Any]) -> bool:
    """Equal, numbers within the rounding a ``scale`` other than 1 brings."""
    if isinstance(got, bool) or isinstance(want, bool | str):
        return got == want and type(got) is type(want)
    if isinstance(got, int | float) and isinstance(want, int | float):
        scale = abs(float(address.get("scale", 1)))
        return math.isclose(got, want, rel_tol=1e-6, abs_tol=scale / 2 if scale != 1 else 1e-9)
    return got == want
