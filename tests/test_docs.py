"""The documentation stays true to the code.

Generated pages are what ``python -m engine.commands.docgen`` would write now; every
hook has a docstring, every finding code and every command is documented;
relative links and anchors in ``docs/`` resolve, and so do the ``engine.`` names
they mention; and the examples the docs tell readers to run (the plan verifier,
the policy unit tests, the example plugin) do what the docs say.
"""

from __future__ import annotations

import argparse
import importlib
import inspect
import re
import subprocess
import sys
import tomllib
import types
from datetime import date
from pathlib import Path

import pytest
import yaml

from engine import hookspecs
from engine.cli import build_parser
from engine.codes import CODES
from engine.commands import docgen
from engine.commands.test import run_tests
from engine.compile import Inputs, compile_project
from engine.plans.folder import write_plans
from engine.plugin_manager import make_plugin_manager
from engine.testkit import ProjectBuilder

REPO = Path(__file__).resolve().parent.parent
DOCS = REPO / "docs"
PAGES = sorted(DOCS.rglob("*.md"))
PACKS = [REPO / "policies" / pack for pack in ("gmp", "security", "privacy", "utility")]

_FENCE = re.compile(r"^```.*?^```", re.MULTILINE | re.DOTALL)
_CODE_SPAN = re.compile(r"`[^`\n]*`")
_LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
_HEADING = re.compile(r"^#{1,6} +(.+?) *#*$", re.MULTILINE)
_EXPLICIT_ANCHOR = re.compile(r"<a id=\"([^\"]+)\"")
_BLOCK = re.compile(r"^```(\w*)\n(.*?)^```", re.MULTILINE | re.DOTALL)


@pytest.fixture(scope="module")
def pm():
    return docgen.built_in_plugins()


def read(name: str) -> str:
    return (DOCS / name).read_text(encoding="utf-8")


def blocks(name: str, language: str) -> list[str]:
    """The fenced code blocks of a page in one language, in page order."""
    return [body for lang, body in _BLOCK.findall(read(name)) if lang == language]


# --- generated pages --------------------------------------------------------------------


def test_every_hook_has_a_docstring():
    declared = {name for name in vars(hookspecs) if name.startswith("converge_")}
    assert {hook.__name__ for hook in docgen.hooks()} == declared
    undocumented = [h.__name__ for h in docgen.hooks() if not (inspect.getdoc(h) or "").strip()]
    assert not undocumented, f"hooks without a docstring in engine/hookspecs.py: {undocumented}"


def test_plugins_page_is_what_docgen_writes():
    assert read("plugins.md") == docgen.render_plugins(), (
        "docs/plugins.md is stale: run python -m engine.commands.docgen"
    )


def test_plugins_page_shows_the_entry_points_as_pyproject_declares_them():
    declared = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))
    (shown,) = [tomllib.loads(b) for b in blocks("plugins.md", "toml") if "plugins.modbus" in b]
    assert shown == {"project": {"entry-points": declared["project"]["entry-points"]}}


def test_plugins_page_documents_every_hook():
    page = read("plugins.md")
    for hook in docgen.hooks():
        assert f"#### `{hook.__name__}`" in page


@pytest.mark.parametrize("kind", docgen.KINDS)
def test_schema_file_is_what_json_schema_produces(kind, pm):
    path = DOCS / "schema" / f"{kind}.json"
    assert path.is_file(), f"{path} is missing: run python -m engine.commands.docgen"
    assert path.read_text(encoding="utf-8") == docgen.render_schema(kind, pm), (
        f"docs/schema/{kind}.json is stale: run python -m engine.commands.docgen"
    )


def test_docgen_check_agrees(capsys):
    assert docgen.main(["--check"]) == 0, capsys.readouterr().out


def test_yaml_modelines_point_at_existing_schemas():
    modeline = re.compile(r"#\s*yaml-language-server:\s*\$schema=(\S+)")
    files = [*REPO.glob("policies/**/*.yaml"), *REPO.glob("examples/**/*.yaml")]
    targets = {
        file: file.parent / match[1]
        for file in files
        if (match := modeline.search(file.read_text(encoding="utf-8")))
    }
    assert targets, "no modelines found"
    broken = [f"{f.relative_to(REPO)} -> {t}" for f, t in targets.items() if not t.is_file()]
    assert not broken


# --- findings and commands --------------------------------------------------------------


def documented_codes() -> set[str]:
    return set(re.findall(r"^#{2,6} `([a-z0-9-]+)`$", read("findings.md"), re.MULTILINE))


@pytest.mark.parametrize("code", sorted(CODES))
def test_every_engine_code_is_documented(code):
    assert code in documented_codes(), f"docs/findings.md has no section for `{code}`"


def plugin_codes() -> set[str]:
    problem = re.compile(r"PlanProblem\(\s*[\w.]+,\s*\"([a-z][a-z0-9-]*)\"")
    return {
        code
        for source in REPO.glob("plugins/*/*.py")
        for code in problem.findall(source.read_text(encoding="utf-8"))
    }


def test_every_builtin_plugin_code_is_documented():
    codes = plugin_codes()
    assert codes, "no PlanProblem codes found in plugins/"
    assert not codes - documented_codes()


def test_every_documented_code_is_one_the_engine_or_a_builtin_plugin_reports():
    """A section for a code nothing emits sends readers (and CI filters) after a ghost."""
    assert not documented_codes() - set(CODES) - plugin_codes()


def subcommands() -> dict[str, argparse.ArgumentParser]:
    parser = build_parser()
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(action.choices)


def cli_sections() -> dict[str, str]:
    """The text of each ``## `converge NAME``` section of docs/cli.md."""
    parts = re.split(r"^## ", read("cli.md"), flags=re.MULTILINE)
    return {m[1]: part for part in parts if (m := re.match(r"`converge (\w+)`", part))}


@pytest.mark.parametrize("command", sorted(subcommands()))
def test_every_command_and_its_options_are_documented(command):
    section = cli_sections().get(command)
    assert section is not None, f"docs/cli.md has no section ## `converge {command}`"
    for action in subcommands()[command]._actions:
        spelled = [s for s in action.option_strings if s.startswith("--")] or action.option_strings
        if spelled and spelled[0] != "--help":
            assert spelled[0] in section or spelled[0] in read("cli.md"), (
                f"option {spelled[0]} of converge {command} is not in docs/cli.md"
            )


def test_global_options_are_documented():
    page = read("cli.md")
    for action in build_parser()._actions:
        for option in action.option_strings:
            assert f"`{option}`" in page, f"global option {option} is not in docs/cli.md"


# --- links ------------------------------------------------------------------------------


def slug(heading: str) -> str:
    """The anchor GitHub gives a heading."""
    text = re.sub(r"<[^>]+>", "", heading).strip().lower()
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def anchors(page: Path) -> set[str]:
    text = _FENCE.sub("", page.read_text(encoding="utf-8"))
    found: set[str] = set(_EXPLICIT_ANCHOR.findall(text))
    seen: dict[str, int] = {}
    for heading in _HEADING.findall(text):
        base = slug(heading)
        found.add(f"{base}-{seen[base]}" if base in seen else base)
        seen[base] = seen.get(base, 0) + 1
    return found


def links(page: Path) -> list[str]:
    text = _CODE_SPAN.sub("", _FENCE.sub("", page.read_text(encoding="utf-8")))
    return _LINK.findall(text)


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(DOCS)))
def test_relative_links_resolve(page):
    broken = []
    for target in links(page):
        if re.match(r"[a-z]+:", target):
            continue  # https:, mailto:
        path, _, anchor = target.partition("#")
        file = (page.parent / path).resolve() if path else page
        if not file.exists():
            broken.append(f"{target}: no such file")
        elif anchor and file.suffix == ".md" and anchor not in anchors(file):
            broken.append(f"{target}: no heading #{anchor}")
    assert not broken, f"broken links in {page.relative_to(REPO)}: {broken}"


_PYTHON_NAME = re.compile(r"\bengine(?:\.[A-Za-z_]\w*)+")


def resolves(dotted: str) -> bool:
    """Whether ``engine.a.b`` is a module, or an attribute of the longest module it names."""
    parts = dotted.split(".")
    for end in range(len(parts), 0, -1):
        try:
            found: object = importlib.import_module(".".join(parts[:end]))
        except ImportError:
            continue
        for name in parts[end:]:
            if not hasattr(found, name):
                return False
            found = getattr(found, name)
        return True
    return False


@pytest.mark.parametrize(
    "page", [*PAGES, REPO / "README.md"], ids=lambda p: str(p.relative_to(REPO))
)
def test_python_names_in_the_docs_resolve(page):
    names = set(_PYTHON_NAME.findall(page.read_text(encoding="utf-8")))
    assert not sorted(name for name in names if not resolves(name))


# --- examples the docs tell readers to run ----------------------------------------------


@pytest.fixture(scope="module")
def plan_folder(tmp_path_factory, pm):
    inputs = Inputs(PACKS, [REPO / "examples" / "sites"], at=date(2026, 6, 1))
    result = compile_project(inputs, pm)
    assert result.ok, [str(f) for f in result.findings]
    out = tmp_path_factory.mktemp("plans")
    write_plans(out, result.plans, result.index())
    return out


def test_the_hand_verifier_accepts_a_plan_and_rejects_a_changed_one(plan_folder, tmp_path):
    [script] = [b for b in blocks("plans.md", "python") if "rfc8785" in b]
    verifier = tmp_path / "verify_plan.py"
    verifier.write_text(script, encoding="utf-8")
    plan = plan_folder / "reactor-7.plan.json"
    ok = subprocess.run(
        [sys.executable, verifier, plan], check=False, capture_output=True, text=True
    )
    assert ok.returncode == 0 and ok.stdout.startswith("ok sha256:"), ok.stderr
    changed = tmp_path / "changed.plan.json"
    changed.write_bytes(plan.read_bytes().replace(b'"every_ms":5000', b'"every_ms":9000', 1))
    bad = subprocess.run(
        [sys.executable, verifier, changed], check=False, capture_output=True, text=True
    )
    assert bad.returncode != 0 and "digest does not verify" in bad.stderr


def unit_test_examples() -> list[tuple[str, str]]:
    return [
        (page, body)
        for page in ("tutorial.md", "how-to/policy-unit-tests.md")
        for body in blocks(page, "yaml")
        if body.lstrip("#").lstrip().startswith(("policies:", "policy-tests/", "scratch/"))
        and "cases:" in body
    ]


@pytest.mark.parametrize("page, body", unit_test_examples(), ids=lambda v: v[:24])
def test_policy_unit_test_examples_pass(page, body, tmp_path, pm):
    spec = yaml.safe_load(body)
    here = REPO / "scratch"  # both pages put their test file one folder below the root

    def absolute(value):
        values = [value] if isinstance(value, str) else value
        return [str((here / v).resolve()) for v in values]

    spec["policies"], spec["site"] = absolute(spec["policies"]), absolute(spec["site"])
    test_file = tmp_path / "example.test.yaml"
    test_file.write_text(yaml.safe_dump(spec, sort_keys=False), encoding="utf-8")
    results = run_tests([test_file], pm)
    assert results and all(r.passed for r in results), [(r.name, r.failures) for r in results]


def test_the_example_plugin_works(tmp_path):
    [plugin_code] = [b for b in blocks("plugins.md", "python") if "@hookimpl" in b]
    [test_code] = [b for b in blocks("plugins.md", "python") if "converge_project" in b]
    plugin = types.ModuleType("converge_bacnet")
    exec(compile(plugin_code, "docs/plugins.md", "exec"), plugin.__dict__)
    namespace: dict[str, object] = {}
    exec(compile(test_code, "docs/plugins.md", "exec"), namespace)
    [test] = [f for name, f in namespace.items() if name.startswith("test_")]
    builder = ProjectBuilder(tmp_path, make_plugin_manager(extra=[plugin]))
    test(builder)
    fixed = str(namespace["SITE"]).replace("binary-input 2", "binary-input:2")
    good = builder.write({"sites/hvac/site.yaml": fixed}).compile()
    good.assert_success()
    assert good.plan("ahu-3")["read_groups"] == [
        {
            "kind": "read",
            "service": "ReadPropertyMultiple",
            "every_ms": 30000,
            "objects": ["binary-input:2"],
            "points": ["FAN_STATUS"],
        }
    ]
