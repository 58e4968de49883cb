"""Build the plugin manager: explicit, with no import-time side effects.

Entry points of the ``converge`` group are loaded only when asked for, the
hook specifications are checked (a misspelled ``converge_*`` hook is an
error), and ``trace=True`` prints every hook call to standard error, which
is how a plugin author sees what the engine asks of their plugin.
"""

from __future__ import annotations

import sys
from collections import Counter
from collections.abc import Iterable

import pluggy

from engine import hookspecs
from engine.errors import PluginError
from engine.hookspecs import PROJECT

ENTRY_POINT_GROUP = PROJECT


def make_plugin_manager(
    *, load_entry_points: bool = True, extra: Iterable[object] = (), trace: bool = False
) -> pluggy.PluginManager:
    """A plugin manager with the converge hook specs and the requested plugins registered."""
    pm = pluggy.PluginManager(PROJECT)
    pm.add_hookspecs(hookspecs)
    if load_entry_points:
        try:
            pm.load_setuptools_entrypoints(ENTRY_POINT_GROUP)
        except Exception as exc:  # any import error of a third-party plugin
            raise PluginError(f"cannot load a '{ENTRY_POINT_GROUP}' plugin: {exc}") from exc
    for plugin in extra:
        pm.register(plugin)
    try:
        pm.check_pending()
    except pluggy.PluginValidationError as exc:
        raise PluginError(str(exc)) from exc
    protocol_names(pm)
    if trace:
        pm.trace.root.setwriter(sys.stderr.write)
        pm.enable_tracing()
    return pm


def protocol_names(pm: pluggy.PluginManager) -> list[str]:
    """Every protocol name the registered plugins implement, sorted; duplicates are errors."""
    names = [name for result in pm.hook.converge_protocol_names() for name in result]
    twice = sorted(name for name, count in Counter(names).items() if count > 1)
    if twice:
        raise PluginError(f"protocol claimed by more than one plugin: {', '.join(twice)}")
    return sorted(names)
