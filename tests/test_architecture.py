"""The house rules of docs/architecture.md, kept by walking the import graph with ``ast``.

Every import counts, those under ``TYPE_CHECKING`` and inside functions too:
a two-way dependency hidden from the interpreter is still one for a reader.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

LAYERS: list[set[str]] = [
    # the shared core: what every stage may use
    {
        "engine.errors",
        "engine.codes",
        "engine.canonical",
        "engine.durations",
        "engine.heap",
        "engine.records",
        "engine.model",
    },
    {"engine.sign"},  # pure: Merkle trees, proofs, notes, leaves, batch statements
    {"engine.keys", "engine.principals"},
    {"engine.plans", "engine.audit"},
    # the plugin boundary
    {
        "engine.protocols",
        "engine.hookspecs",
        "engine.plugin_manager",
        "engine.protocol_plugin",
        "engine.transport",  # the transport contract a plugin implements (scale-out)
    },
    {"engine.collect"},
    {"engine.store"},
    {"engine.evidence"},
    {"engine.verify"},
    # the path to a central store: a site's publisher, the centre's ingesters and witness;
    # after verify, whose trusted keys it judges by, and beside nothing the run imports
    {"engine.central"},
    {"engine.access"},
    {"engine.report"},
    {"engine.export"},
    {"engine.retention"},  # archives are export bundles
    {"engine.compile"},  # nothing of the run-time pipeline imports the compiler
    {"engine.simulate", "engine.conformance", "engine.testkit"},
    {"engine.commands", "engine.api"},
    {"engine.cli", "engine"},
]
"""A package may import any package of its own layer or an earlier one, and no other; within a
layer, the cycle test keeps imports one way."""

PLUGINS_MAY_USE = set().union(*LAYERS[:5]) | {"engine.compile"}
"""Built-in plugins use the shared core, keys, plans and the plugin boundary, as any plugin;
a plugin that reads YAML (the principals file) uses the compiler's loader and validator."""

PLUGINS_SHARED = {"plugins.planning", "plugins.reach"}
"""What the built-in plugins share among themselves: schedules and read-group helpers
(planning), and the one-line connect and listen errors (reach)."""


def modules() -> dict[str, Path]:
    found = {}
    for path in [*(REPO / "engine").rglob("*.py"), *(REPO / "plugins").rglob("*.py")]:
        if "migrations" in path.parts:
            continue
        parts = list(path.relative_to(REPO).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        found[".".join(parts)] = path
    return found


MODULES = modules()


def owner(name: str) -> str | None:
    """The module of ours that ``name`` (a module or a name in one) is, if any."""
    while name and name not in MODULES:
        name = name.rpartition(".")[0]
    return name or None


def imports(module: str) -> Iterator[tuple[str, int]]:
    """(module of ours, line) of every import in ``module``, wherever it is written."""
    for node in ast.walk(ast.parse(MODULES[module].read_text("utf-8"))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names = [f"{node.module}.{alias.name}" for alias in node.names]
        else:
            continue
        for name in names:
            target = owner(name)
            if target is not None and target != module:
                yield target, node.lineno


def package(module: str) -> str:
    """The unit the layers name: ``engine.compile.validate.site`` -> ``engine.compile``."""
    parts = module.split(".")
    if parts[0] == "plugins":
        return ".".join(parts[:2])
    for depth in (2, 1):
        candidate = ".".join(parts[:depth])
        if any(candidate in layer for layer in LAYERS):
            return candidate
    raise AssertionError(f"{module} is in no layer of LAYERS: place it")


def layer(pkg: str) -> int:
    return next(i for i, names in enumerate(LAYERS) if pkg in names)


def allowed(source: str, target: str) -> bool:
    src, dst = package(source), package(target)
    if src == dst:
        return True
    if src.startswith("plugins."):
        return dst in PLUGINS_MAY_USE or dst in PLUGINS_SHARED
    if dst.startswith("plugins."):
        return False  # the engine never imports a plugin: built-ins load as entry points
    return layer(dst) <= layer(src)


def test_every_module_is_in_a_layer():
    for module in MODULES:
        package(module)


def test_imports_run_one_way_down_the_pipeline():
    wrong = [
        f"{MODULES[m].relative_to(REPO)}:{line}: {package(m)} imports {target}"
        for m in MODULES
        for target, line in imports(m)
        if not allowed(m, target)
    ]
    assert not wrong, "imports against docs/architecture.md:\n" + "\n".join(wrong)


def test_no_import_cycle_between_modules():
    graph = defaultdict(set)
    for module in MODULES:
        graph[module] = {target for target, _ in imports(module)}
    cycles = strongly_connected(graph)
    assert not cycles, f"import cycles: {cycles}"


def strongly_connected(graph: dict[str, set[str]]) -> list[list[str]]:
    """Tarjan's components of more than one module, iteratively."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is None:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[node])
                if low[node] == index[node]:
                    component = []
                    while True:
                        member = stack.pop()
                        on_stack.discard(member)
                        component.append(member)
                        if member == node:
                            break
                    if len(component) > 1:
                        found.append(sorted(component))
            elif child not in index:
                index[child] = low[child] = len(index)
                stack.append(child)
                on_stack.add(child)
                work.append((child, iter(sorted(graph.get(child, ())))))
            elif child in on_stack:
                low[node] = min(low[node], index[child])
    return found


def test_a_planted_import_back_up_is_caught(monkeypatch):
    """The rule itself fails when the store imports the compiler."""
    assert not allowed("engine.store.store", "engine.compile.merge")
    assert not allowed("engine.sign.batch", "engine.plans.body")
    assert not allowed("engine.audit", "engine.store.auditlog")
    assert not allowed("engine.collect.link", "engine.evidence.sink")
    assert not allowed("plugins.modbus.session", "engine.collect.link")
    assert allowed("engine.evidence.sink", "engine.collect.backfill")
    assert strongly_connected({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == [["a", "b", "c"]]


LIGHT = ["engine.records", "engine.sign", "engine.hookspecs", "engine.plans.body"]
HEAVY = ["cerberus", "rich", "yaml", "sqlalchemy", "engine.compile"]


def loaded_by(module: str, heavy: list[str]) -> list[str]:
    """The modules of ``heavy`` (or under them) that importing ``module`` alone loads."""
    probe = f"import sys, {module}; print(' '.join(sorted(sys.modules)))"
    loaded = set(
        subprocess.run(
            [sys.executable, "-c", probe], check=True, capture_output=True, text=True, cwd=REPO
        ).stdout.split()
    )
    return sorted(m for m in loaded for h in heavy if m == h or m.startswith(f"{h}."))


@pytest.mark.parametrize("module", LIGHT)
def test_light_modules_load_no_compiler_cerberus_or_rich(module: str):
    """What a plugin, the forked sealer or a verify worker imports stays small."""
    heavy = loaded_by(module, HEAVY)
    assert not heavy, f"import {module} loads {heavy}"


NOT_FOR_QUERY = [
    "sqlalchemy.orm",
    "sqlmodel",
    "pydantic",
    "alembic",
    "engine.verify.whole",
    "engine.verify.records",
    "engine.report",
    "engine.export",
    "engine.api",
]
"""What ``converge query`` does not need: an ORM, migrations, the whole store's verifier, the
report, the export, the read API (each tenths of a second of every start)."""


def test_converge_query_starts_without_an_orm_migrations_or_the_verifier():
    """The command's start is part of every read's time (bench/query.py)."""
    heavy = loaded_by("engine.cli, engine.commands.query", NOT_FOR_QUERY)
    assert not heavy, f"converge query loads {heavy}"


def test_every_exception_is_in_the_one_tree_that_errors_py_draws():
    """Every public exception class of the engine derives from ConvergeError, and the tree in
    engine/errors.py names it."""
    import importlib
    import inspect

    import engine.errors

    drawn = engine.errors.__doc__ or ""
    found = []
    standalone = {"engine.export.verifier"}  # verify.py: no engine import, its own Refused
    for module in sorted(m for m in MODULES if m.startswith("engine") and m not in standalone):
        loaded = importlib.import_module(module)
        for name, cls in inspect.getmembers(loaded, inspect.isclass):
            if cls.__module__ == module and issubclass(cls, BaseException):
                found.append(name)
                if not name.startswith("_"):
                    assert issubclass(cls, engine.errors.ConvergeError), f"{module}.{name}"
                    assert name in drawn, f"{module}.{name} is not drawn in engine/errors.py"
    assert {"StoreError", "SealerError", "MissingSigner", "TreeSizeError"} <= set(found)


def test_the_bundle_verifier_stands_alone():
    """verify.py, shipped in every bundle, imports nothing but the standard library and
    cryptography: an auditor runs it in a virtualenv that has only cryptography."""
    tree = ast.parse(MODULES["engine.export.verifier"].read_text("utf-8"))
    found = {
        a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names
    }
    found |= {
        n.module.split(".")[0]
        for n in ast.walk(tree)
        if isinstance(n, ast.ImportFrom) and n.module and not n.level
    }
    assert found - set(sys.stdlib_module_names) == {"cryptography"}
