"""Converge: compile compliance policies for OT data into per-device collection plans.

The small public API; everything else is importable from its stage module.
"""

from engine.compile import STAGES, Compilation, Inputs, compile_project
from engine.errors import ConvergeError, Finding, FindingsError, Location, PluginError, Severity
from engine.hookspecs import hookimpl
from engine.plans.format import Plan, verify_plan
from engine.plugin_manager import make_plugin_manager
from engine.protocol_plugin import ProtocolPlugin
from engine.records import Gap, GapReason, Quality, Reading

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
