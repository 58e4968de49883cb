"""Mutation fuzzing: a damaged copy of a valid example gives findings, never a traceback.

Each example mutates one or more of the example files (every policy under
``policies/`` and the plant-basel site inventory) the way hands and merges
damage YAML: a line deleted, duplicated, swapped or re-indented, a scalar
replaced by a value of another type, a stray character, a truncated file.
The whole example project is then compiled from a temporary folder. The
compiler must return findings, each with a real place and a documented code,
and everything it returns must render as text and SARIF.
"""

from __future__ import annotations

import contextlib
import io
import json
import re
import shutil
import tempfile
from collections.abc import Callable
from datetime import date
from pathlib import Path

import pluggy
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from rich.console import Console

from engine.codes import CODES
from engine.commands.findings import findings_sarif, findings_text
from engine.compile import Compilation, Inputs, compile_project
from engine.errors import Finding
from engine.plans.format import verify_plan

REPO = Path(__file__).resolve().parent.parent
SITE = Path("examples/sites/plant-basel")
TARGETS = sorted(
    p.relative_to(REPO).as_posix()
    for p in (REPO / "policies").rglob("*.yaml")
    if "tests" not in p.relative_to(REPO / "policies").parts  # policy unit tests, not policies
)
TARGETS.append((SITE / "site.yaml").as_posix())
ORIGINAL = {name: (REPO / name).read_text(encoding="utf-8") for name in TARGETS}
PLUGIN_PREFIXES = ("modbus-", "opcua-", "mqtt-")

# Values of every YAML type (and some traps) to put where a scalar was. A mapping with a
# key named 'type' is left out: where a list is expected it crashes cerberus, a known bug
# (tests/test_cases.py::test_a_list_written_as_a_mapping_with_a_type_key_is_a_finding);
# add "{type: x}" here once it is fixed.
REPLACEMENTS = [
    "42",
    "-1",
    "0",
    "3.5",
    "1e400",
    ".nan",
    "-.inf",
    "0x1F",
    "true",
    "no",
    "null",
    "~",
    "",
    "[]",
    "{}",
    "[a, b]",
    "{a: 1}",
    '"5s"',
    "'quoted'",
    "5s",
    "1.5h",
    "-5s",
    "0ms",
    "90d",
    "2027-03-31",
    "2027-02-30",
    "2026-13-01",
    "2027-03-31T10:00:00Z",
    "*undefined",
    "&anchor value",
    "!!binary aGk=",
    "!!python/name:os.system",
    "|\n  block",
    ">-",
    "? complex",
    "- item",
    "'",
    '"',
    "#",
    "@reserved",
    "%TAG",
    "\t",
    "x" * 200,
    "ü∂ ☃",
    "\\x00",
]
LINE = re.compile(r"^(?P<head>\s*(?:- )?[^:#\n]+:[ ]+)(?P<value>[^#\n]+?)\s*$")

Mutation = Callable[[list[str], st.DataObject], list[str]]


def _index(lines: list[str], data: st.DataObject) -> int:
    return data.draw(st.integers(0, max(len(lines) - 1, 0)))


def delete_line(lines: list[str], data: st.DataObject) -> list[str]:
    i = _index(lines, data)
    return lines[:i] + lines[i + 1 :]


def duplicate_line(lines: list[str], data: st.DataObject) -> list[str]:
    i = _index(lines, data)
    return lines[: i + 1] + lines[i:]


def swap_lines(lines: list[str], data: st.DataObject) -> list[str]:
    i, j = _index(lines, data), _index(lines, data)
    swapped = list(lines)
    swapped[i], swapped[j] = swapped[j], swapped[i]
    return swapped


def reindent(lines: list[str], data: st.DataObject) -> list[str]:
    i = _index(lines, data)
    changed = list(lines)
    changed[i] = " " * data.draw(st.integers(0, 12)) + lines[i].lstrip(" ")
    return changed


def replace_scalar(lines: list[str], data: st.DataObject) -> list[str]:
    """A ``key: value`` line gets a value of another type (or a YAML trap)."""
    candidates = [i for i, line in enumerate(lines) if LINE.match(line)]
    if not candidates:
        return lines
    i = data.draw(st.sampled_from(candidates))
    match = LINE.match(lines[i])
    assert match is not None
    changed = list(lines)
    changed[i] = match["head"] + data.draw(st.sampled_from(REPLACEMENTS))
    return changed


def insert_character(lines: list[str], data: st.DataObject) -> list[str]:
    text = "\n".join(lines)
    at = data.draw(st.integers(0, len(text)))
    char = data.draw(
        st.one_of(st.sampled_from(list(":-[]{}#&*!|>'\"%@,?\t\n \\")), st.characters(codec="utf-8"))
    )
    return (text[:at] + char + text[at:]).split("\n")


def truncate(lines: list[str], data: st.DataObject) -> list[str]:
    text = "\n".join(lines)
    return text[: data.draw(st.integers(0, len(text)))].split("\n")


MUTATIONS: list[Mutation] = [
    delete_line,
    duplicate_line,
    swap_lines,
    reindent,
    replace_scalar,
    insert_character,
    truncate,
]


def mutate(text: str, data: st.DataObject) -> str:
    lines = text.split("\n")
    for _ in range(data.draw(st.integers(1, 3), label="mutations")):
        mutation = data.draw(st.sampled_from(MUTATIONS))
        lines = mutation(lines, data) or [""]  # an empty file is one empty line
    return "\n".join(lines)


@pytest.fixture(scope="module")
def pristine(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of the example project (all policies, the plant-basel site and its principals)."""
    root = tmp_path_factory.mktemp("pristine")
    shutil.copytree(
        REPO / "policies", root / "policies", ignore=shutil.ignore_patterns("tests", "*.md")
    )
    shutil.copytree(REPO / SITE, root / SITE)
    return root


def compile_copy(pristine: Path, files: dict[str, str], pm: pluggy.PluginManager) -> Compilation:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "project"
        shutil.copytree(pristine, root)
        for name, text in files.items():
            (root / name).write_text(text, encoding="utf-8")
        with contextlib.chdir(root):
            return compile_project(Inputs([Path("policies")], [SITE], [], date(2026, 6, 1)), pm)


def assert_well_formed(finding: Finding, files: dict[str, str]) -> None:
    assert finding.location.line >= 1 and finding.location.col >= 1, str(finding)
    documented = finding.code in CODES or finding.code.startswith(PLUGIN_PREFIXES)
    assert documented, f"undocumented code {finding.code}: {finding}"
    if finding.location.path in files:
        lines = files[finding.location.path].split("\n")
        assert finding.location.line <= len(lines) + 1, f"line past the end of file: {finding}"


def test_the_unmutated_examples_compile_cleanly(pristine: Path, converge_pm: pluggy.PluginManager):
    """The baseline the mutations start from: no errors, a plan per governed device."""
    result = compile_copy(pristine, {}, converge_pm)
    assert result.ok, [str(f) for f in result.findings]
    assert len(result.plans) == 6


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_a_mutated_example_gives_findings_never_a_traceback(
    pristine: Path, converge_pm: pluggy.PluginManager, data: st.DataObject
) -> None:
    chosen = data.draw(st.lists(st.sampled_from(TARGETS), min_size=1, max_size=2, unique=True))
    files = {name: mutate(ORIGINAL[name], data) for name in chosen}
    result = compile_copy(pristine, files, converge_pm)
    for finding in result.findings:
        assert_well_formed(finding, files)
    findings_text(Console(file=io.StringIO(), width=100), result.findings)
    sarif = json.loads(findings_sarif(result.findings, "0"))
    assert len(sarif["runs"][0]["results"]) == len(result.findings)
    if result.ok:
        for plan in result.plans:
            assert verify_plan(plan.canonical) == plan.body
