"""Converge: compliance policies for OT data, compiled into plans, collected, signed, verified.

The package reads as the pipeline (docs/architecture.md has the whole map):

- ``compile/`` YAML policies, sites and principals → checked, merged plans;
- ``plans/`` the plan format, plan folders and plan signatures;
- ``collect/`` plans run against devices through protocol plugins;
- ``evidence/`` records batched, signed and handed to the store (or the spool);
- ``sign/`` Merkle trees, proofs, signed notes, leaves and batch statements (pure);
- ``store/`` the evidence database, the spool and the audit log's storage;
- ``verify/`` every leaf, root, signature, entry and checkpoint recomputed;
- ``commands/`` one module per ``converge`` command; ``cli.py`` the parser;
- ``conformance/`` and ``testkit.py`` the pytest plugins for plugin and policy authors.

The top level holds what every stage shares. The small public API below is
imported lazily (PEP 562), so that ``import engine.records`` or a plugin's
import of :mod:`engine.hookspecs` never loads the compiler, cerberus or rich.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from engine.compile import STAGES, Compilation, Inputs, compile_project
    from engine.errors import (
        ConvergeError,
        Finding,
        FindingsError,
        Location,
        PluginError,
        Severity,
    )
    from engine.hookspecs import hookimpl
    from engine.plans.format import Plan, verify_plan
    from engine.plugin_manager import make_plugin_manager
    from engine.protocol_plugin import ProtocolPlugin
    from engine.records import Gap, GapReason, Quality, Reading

_HOMES = {
    "STAGES": "engine.compile",
    "Compilation": "engine.compile",
    "Inputs": "engine.compile",
    "compile_project": "engine.compile",
    "ConvergeError": "engine.errors",
    "Finding": "engine.errors",
    "FindingsError": "engine.errors",
    "Location": "engine.errors",
    "PluginError": "engine.errors",
    "Severity": "engine.errors",
    "hookimpl": "engine.hookspecs",
    "Plan": "engine.plans.format",
    "verify_plan": "engine.plans.format",
    "make_plugin_manager": "engine.plugin_manager",
    "ProtocolPlugin": "engine.protocol_plugin",
    "Gap": "engine.records",
    "GapReason": "engine.records",
    "Quality": "engine.records",
    "Reading": "engine.records",
}

__all__ = [
    "STAGES",
    "Compilation",
    "ConvergeError",
    "Finding",
    "FindingsError",
    "Gap",
    "GapReason",
    "Inputs",
    "Location",
    "Plan",
    "PluginError",
    "ProtocolPlugin",
    "Quality",
    "Reading",
    "Severity",
    "compile_project",
    "hookimpl",
    "make_plugin_manager",
    "verify_plan",
]


def __getattr__(name: str) -> Any:
    """Each public name, imported from its home on first use."""
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module 'engine' has no attribute {name!r}")
    value = getattr(importlib.import_module(home), name)
    globals()[name] = value
    return value
