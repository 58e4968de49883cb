"""Reference docs generated from the code, so that they cannot drift from it.

``python -m engine.commands.docgen`` rewrites

- ``docs/plugins.md``: the prose of ``docs/plugins.md.in`` with every hook of
  :mod:`engine.hookspecs` put in place of its ``{{hooks}}`` line, grouped by
  the ``# --- <phase> ---`` headings of that module, each with its signature,
  how results combine and its docstring;
- ``docs/schema/<kind>.json``: the JSON Schema of each kind of file, with
  every installed protocol plugin, exactly as ``converge schema <kind>``
  prints it.

``python -m engine.commands.docgen --check`` writes nothing and exits 1 when a file is
not what it would write (for CI). ``tests/test_docs.py`` runs the same check.
"""

from __future__ import annotations

import importlib
import inspect
import json
import re
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, get_args

import pluggy

from engine import hookspecs
from engine.compile.validate.jsonschema import Kind, json_schema
from engine.plugin_manager import make_plugin_manager

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"
TEMPLATE = DOCS / "plugins.md.in"
PLACEHOLDER = "{{hooks}}"
KINDS: tuple[Kind, ...] = get_args(Kind)

_SECTION = re.compile(r"^# --- (?P<title>.+?) -+\s*$", re.MULTILINE)
_ROLE = re.compile(r":[a-z]+:`~?(?:[\w.]*\.)?(?P<name>\w+)`")
_SPEC = f"{hookspecs.PROJECT}_spec"

Hook = Callable[..., Any]


def hooks() -> list[Hook]:
    """Every hook specification of :mod:`engine.hookspecs`, in source order."""
    found = [f for f in vars(hookspecs).values() if callable(f) and hasattr(f, _SPEC)]
    return sorted(found, key=lambda f: inspect.getsourcelines(f)[1])


def phases() -> list[tuple[str, list[Hook]]]:
    """The hooks grouped under the ``# --- phase ---`` heading they follow in the module."""
    source = inspect.getsource(hookspecs)
    starts = [(source.count("\n", 0, m.start()) + 1, m["title"]) for m in _SECTION.finditer(source)]
    groups: dict[str, list[Hook]] = {}
    for hook in hooks():
        line = inspect.getsourcelines(hook)[1]
        title = next((t for start, t in reversed(starts) if start < line), "hooks")
        groups.setdefault(title, []).append(hook)
    return list(groups.items())


def markdown(docstring: str) -> str:
    """A reST-flavoured docstring as Markdown: roles and double backticks become code."""
    return _ROLE.sub(r"`\g<name>`", docstring).replace("``", "`")


def signature(hook: Hook) -> str:
    """``def name(arg: type, ...) -> type`` as written in the hook module."""
    sig = inspect.signature(hook)
    params = ", ".join(f"{p.name}: {p.annotation}" for p in sig.parameters.values())
    return f"def {hook.__name__}({params}) -> {sig.return_annotation}"


def combining(hook: Hook) -> str:
    """How pluggy combines the results of several implementations."""
    if getattr(hook, _SPEC)["firstresult"]:
        return "the first result that is not `None` is used; later plugins are not called"
    return "every plugin is called; the results are collected in a list"


def render_hook(hook: Hook) -> str:
    doc = markdown(inspect.getdoc(hook) or "")
    return (
        f"#### `{hook.__name__}`\n\n```python\n{signature(hook)}\n```\n\n"
        f"*Results:* {combining(hook)}.\n\n{doc}\n"
    )


def render_hooks() -> str:
    parts = []
    for title, group in phases():
        parts.append(f"### Stage: {title}\n")
        parts += [render_hook(hook) for hook in group]
    return "\n".join(parts)


def render_plugins() -> str:
    """The text of ``docs/plugins.md``."""
    template = TEMPLATE.read_text(encoding="utf-8")
    return template.replace(PLACEHOLDER + "\n", render_hooks(), 1)


def render_schema(kind: Kind, pm: pluggy.PluginManager) -> str:
    """The text of ``docs/schema/<kind>.json``: what ``converge schema <kind>`` prints."""
    return json.dumps(json_schema(kind, pm), indent=2, sort_keys=True) + "\n"


BUILT_IN = ("plugins.modbus", "plugins.opcua", "plugins.mqtt")


def built_in_plugins() -> pluggy.PluginManager:
    """The plugins Converge ships, and no others: the docs describe what ships,
    whatever else happens to be installed (the plugin template, in CI)."""
    shipped = [importlib.import_module(module).plugin for module in BUILT_IN]
    return make_plugin_manager(load_entry_points=False, extra=shipped)


def outputs() -> dict[Path, str]:
    """Every generated file and the text it should hold now."""
    pm = built_in_plugins()
    files = {DOCS / "plugins.md": render_plugins()}
    files.update({DOCS / "schema" / f"{kind}.json": render_schema(kind, pm) for kind in KINDS})
    return files


def stale() -> list[Path]:
    """Generated files that are missing or differ from what would be written."""
    return [
        path
        for path, text in outputs().items()
        if not path.is_file() or path.read_text(encoding="utf-8") != text
    ]


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if args == ["--check"]:
        old = stale()
        for path in old:
            print(f"{path.relative_to(ROOT)} is out of date; run python -m engine.commands.docgen")
        return 1 if old else 0
    if args:
        print("usage: python -m engine.commands.docgen [--check]", file=sys.stderr)
        return 2
    for path, text in outputs().items():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
        print(f"wrote {path.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
