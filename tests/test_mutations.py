"""Mutation fuzzing: a damaged copy of a valid example gives findings, never a traceback.

Each example mutates one or more of the example files (every policy under
``policies/`` and the plant-basel site inventory) the way hands and merges
damage YAML: a line deleted, duplicated, swapped or re-indented, a scalar
replaced by a value of another type, a stray character, a truncated file.
The whole example project is then compiled from a temporary folder. The
compiler must return findings, each with a real place and a documented code,
and everything it returns must render as text and SARIF.

Value-level mutations go after the classes of input a held-out fuzzer found
crashing (issue 15): tags on words they cannot read, huge and boundary
numbers, dates at the calendar's edges, control and line-separator
characters in values and keys, very long values, lines and files, many small
devices. Those examples run through the ``converge`` command itself (``check``,
``plan``, ``explain`` or ``coverage``): an exit code, findings one per line,
never a traceback.
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
from hypothesis import given, settings
from hypothesis import strategies as st
from rich.console import Console

from engine.cli import main
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
    return _replace_with(lines, data, REPLACEMENTS)


def _replace_with(lines: list[str], data: st.DataObject, values: list[str]) -> list[str]:
    """A ``key: value`` line gets one of ``values`` as its value."""
    candidates = [i for i, line in enumerate(lines) if LINE.match(line)]
    if not candidates:
        return lines
    i = data.draw(st.sampled_from(candidates))
    match = LINE.match(lines[i])
    assert match is not None
    changed = list(lines)
    changed[i] = match["head"] + data.draw(st.sampled_from(values))
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


# --- value-level mutations -----------------------------------------------------------------

VALUE_TRAPS = [
    # tags on words they cannot read
    "!!bool maybe",
    "!!timestamp x",
    "!!int abc",
    "!!float x",
    "!!null x",
    "!!str 5",
    "!!binary aGk=",
    "!!set {a, b}",
    "!!omap [a: 1]",
    "!!timestamp 2027-02-30",
    # huge and boundary numbers
    str(2**53 - 1),
    str(2**53),
    str(-(2**53) - 1),
    "1" + "0" * 400,
    "0b" + "1" * 15_000,
    "9" * 4_400,
    "0x7fffffffffffffff",
    "0o777",
    "1_000",
    "65535",
    "65536",
    "1e308",
    "1e309",
    "-0.0",
    "5e-324",
    ".nan",
    ".inf",
    "-.inf",
    "190:20:30",
    # dates at the calendar's edges
    "0001-01-01",
    "9999-12-30",
    "9999-12-31",
    "2024-02-29",
    "2023-02-29",
    "0000-01-01",
    "10000-01-01",
    "9999-12-31T23:59:59-12:00",
    "0001-01-01T00:00:00+14:00",
    "1970-01-01T00:00:00Z",
    # control and line-separator characters
    '"a\x00b"',
    '"a\nb"',
    '"a\u2028b"',
    '"a\u2029b"',
    '"a\rb"',
    '"a\x85b"',
    '"\x1b[31mred"',
    "a\x07b",
    # very long values
    "x" * 70_000,
    "[" + ", ".join(["1"] * 2_000) + "]",
]
"""Values that broke the compiler, or sit at a bound, to put where a scalar was."""

RAW_CHARACTERS = ["\x00", "\x07", "\x1b", "\x7f", "\x85", "\u2028", "\u2029", "\r", "\ufeff"]
"""Characters written raw (not escaped) into a file."""


def replace_value(lines: list[str], data: st.DataObject) -> list[str]:
    """A ``key: value`` line gets one of the value traps."""
    return _replace_with(lines, data, VALUE_TRAPS)


def break_key(lines: list[str], data: st.DataObject) -> list[str]:
    """A key gets a line break, a line separator or a control character (quoted, escaped)."""
    candidates = [i for i, line in enumerate(lines) if LINE.match(line)]
    if not candidates:
        return lines
    i = data.draw(st.sampled_from(candidates))
    indent = len(lines[i]) - len(lines[i].lstrip(" "))
    key, _, value = lines[i].strip().partition(":")
    escape = data.draw(st.sampled_from(["\\n", "\\u2028", "\\x07", "\\r", "\\t"]))
    changed = list(lines)
    changed[i] = " " * indent + f'"{key.lstrip("- ")}{escape}x":{value}'
    return changed


def raw_character(lines: list[str], data: st.DataObject) -> list[str]:
    text = "\n".join(lines)
    at = data.draw(st.integers(0, len(text)))
    return (text[:at] + data.draw(st.sampled_from(RAW_CHARACTERS)) + text[at:]).split("\n")


def long_line(lines: list[str], data: st.DataObject) -> list[str]:
    """A comment or a value so long it crosses the bound on characters."""
    i = _index(lines, data)
    changed = list(lines)
    changed[i] = lines[i] + " # " + "y" * data.draw(st.sampled_from([10_000, 70_000]))
    return changed


def pad_file(lines: list[str], data: st.DataObject) -> list[str]:
    """Tens of thousands of comment lines before the content, so places are far down."""
    return ["# padding"] * data.draw(st.sampled_from([1_000, 60_000])) + lines


def many_devices(lines: list[str], data: st.DataObject) -> list[str]:
    """Many small devices appended to a site's list (some with clashing ids)."""
    if not any(line.startswith("devices:") for line in lines):
        return lines
    count = data.draw(st.sampled_from([50, 2_000]))
    clash = data.draw(st.booleans())
    devices = []
    for n in range(count):
        ident = "reactor-1-plc" if clash and n == 0 else f"fuzz-{n}"
        devices += [
            f"  - id: {ident}",
            "    class: reactor",
            "    protocol: modbus",
            f"    endpoint: {{host: 127.0.0.1, port: {6000 + n % 1000}}}",
            "    points:",
            f"      - {{name: P{n % 7}, signal: temperature, "
            f"address: {{table: holding, register: {n % 70_000}, type: int16}}}}",
        ]
    return lines + devices


VALUE_MUTATIONS: list[Mutation] = [
    replace_value,
    replace_value,
    replace_value,
    break_key,
    raw_character,
    long_line,
    pad_file,
    many_devices,
]


def mutate(text: str, data: st.DataObject, mutations: list[Mutation] = MUTATIONS) -> str:
    lines = text.split("\n")
    for _ in range(data.draw(st.integers(1, 3), label="mutations")):
        mutation = data.draw(st.sampled_from(mutations))
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


@settings(max_examples=200)
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


COMMANDS = {
    "check": ["check", "-p", "policies", "-s", SITE.as_posix()],
    "check-sarif": ["check", "-p", "policies", "-s", SITE.as_posix(), "--format", "sarif"],
    "plan": ["plan", "-p", "policies", "-s", SITE.as_posix(), "-o", "out"],
    "explain": ["explain", "reactor-1-plc/TT101_PV", "-p", "policies", "-s", SITE.as_posix()],
    "coverage": ["coverage", "-p", "policies", "-s", SITE.as_posix()],
}
FINDING_LINE = re.compile(r"^[^\n]+:\d+:\d+: (error|warning)\[[a-z0-9-]+\]: [^\n]*$")


def run_command(pristine: Path, files: dict[str, str], argv: list[str]) -> tuple[int, str, str]:
    """``converge`` on a mutated copy of the project: exit code, standard output and error."""
    out, err = io.StringIO(), io.StringIO()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "project"
        shutil.copytree(pristine, root)
        for name, text in files.items():
            (root / name).write_text(text, encoding="utf-8")
        with (
            contextlib.chdir(root),
            contextlib.redirect_stdout(out),
            contextlib.redirect_stderr(err),
        ):
            code = main([*argv, "--at", "2026-06-01"])
    return code, out.getvalue(), err.getvalue()


@settings(max_examples=150)
@given(data=st.data())
def test_a_value_level_mutation_ends_in_an_exit_code_never_a_traceback(
    pristine: Path, data: st.DataObject
) -> None:
    chosen = data.draw(st.lists(st.sampled_from(TARGETS), min_size=1, max_size=2, unique=True))
    files = {name: mutate(ORIGINAL[name], data, VALUE_MUTATIONS) for name in chosen}
    command = data.draw(st.sampled_from(sorted(COMMANDS)))
    code, out, err = run_command(pristine, files, COMMANDS[command])
    assert code in (0, 1, 2), code
    findings = [line for line in (out + err).splitlines() if re.match(r"^\S.*:\d+:\d+: ", line)]
    for line in findings:
        assert FINDING_LINE.match(line), f"not one finding on one line: {line!r}"
    if code == 2:
        assert err.startswith("converge: error: ") and err.count("\n") == 1, err
    if command == "check-sarif":
        log = json.loads(out)
        assert len(log["runs"][0]["results"]) == out.count('"ruleId"')
