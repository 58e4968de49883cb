"""Golden cases: every folder under ``tests/cases/`` is a small project and what Converge says.

A case folder holds its inputs (``policies/*.yaml``, ``site/site.yaml``,
optionally ``site/principals.yaml`` and ``at.txt``) and its expectations:

- ``expected.txt``: exactly what ``converge check`` prints (one line per
  finding, ``path:line:col: severity[code]: message``, then the summary);
- ``expected-codes.txt``: ``path:line:col code`` of each finding, same order;
- ``expected-plan.json`` when the case compiles: every device's plan body,
  indented for readable diffs (the plan bytes are checked to be the canonical
  form of that body).

``CONVERGE_REGEN=1 pytest tests/test_cases.py`` rewrites the expected files;
review the diff before keeping it. See ``tests/cases/README.md``.
"""

from __future__ import annotations

import contextlib
import difflib
import io
import json
import os
from datetime import date
from pathlib import Path
from typing import Any

import pluggy
import pytest
import rfc8785
from rich.console import Console

from engine.cli import main
from engine.commands.findings import findings_text
from engine.compile import Compilation, Inputs, compile_project
from engine.errors import Finding
from engine.plans.format import verify_plan
from engine.testkit import ProjectBuilder

CASES = Path(__file__).parent / "cases"
REGEN = os.environ.get("CONVERGE_REGEN") == "1"
DEFAULT_AT = date(2026, 6, 1)
EXPECTED_TEXT = "expected.txt"
EXPECTED_CODES = "expected-codes.txt"
EXPECTED_PLAN = "expected-plan.json"


def case_dirs() -> list[Path]:
    return sorted(p for p in CASES.iterdir() if p.is_dir() and not p.name.startswith("."))


def at_of(case: Path) -> date:
    written = case / "at.txt"
    return date.fromisoformat(written.read_text().strip()) if written.exists() else DEFAULT_AT


def compile_case(case: Path, pm: pluggy.PluginManager) -> Compilation:
    """Compile the case from its own folder, so that findings name paths relative to it."""
    with contextlib.chdir(case):
        inputs = Inputs([Path("policies")], [Path("site")], [], at_of(case))
        return compile_project(inputs, pm)


def check_text(findings: list[Finding]) -> str:
    """What ``converge check`` prints for ``findings`` (no terminal, so no colour)."""
    out = io.StringIO()
    findings_text(Console(file=out, highlight=False, soft_wrap=True), findings)
    return out.getvalue()


def codes_text(findings: list[Finding]) -> str:
    return "".join(f"{f.location} {f.code}\n" for f in findings)


def plans_json(result: Compilation) -> dict[str, Any]:
    return {plan.device: plan.body for plan in result.plans}


def pretty(value: Any) -> str:
    return json.dumps(value, indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def compare_text(path: Path, actual: str) -> None:
    """Assert that ``path`` holds ``actual`` (or write it when regenerating)."""
    if REGEN:
        path.write_text(actual, encoding="utf-8")
        return
    assert path.exists(), f"{path} is missing; run CONVERGE_REGEN=1 pytest {__file__}"
    expected = path.read_text(encoding="utf-8")
    if expected != actual:
        diff = "".join(
            difflib.unified_diff(
                expected.splitlines(keepends=True),
                actual.splitlines(keepends=True),
                f"{path.name} (expected)",
                f"{path.name} (actual)",
            )
        )
        pytest.fail(f"{path.parent.name}/{path.name} differs:\n{diff}", pytrace=False)


def compare_plans(case: Path, result: Compilation) -> None:
    path = case / EXPECTED_PLAN
    for plan in result.plans:
        assert plan.canonical == rfc8785.dumps(plan.body), "plan bytes are not canonical"
        assert verify_plan(plan.canonical) == plan.body
    if REGEN:
        path.unlink(missing_ok=True)
        if result.plans:
            path.write_text(pretty(plans_json(result)), encoding="utf-8")
    if not result.ok:
        assert not result.plans, "a plan must never be emitted from inputs with errors"
        assert not path.exists(), f"{case.name} has errors but also an {EXPECTED_PLAN}"
        return
    expected = json.loads(path.read_text(encoding="utf-8")) if path.exists() else {}
    if expected != plans_json(result):
        compare_text(path, pretty(plans_json(result)))  # fails, with a readable diff


@pytest.mark.parametrize("case", case_dirs(), ids=lambda p: p.name)
def test_case(case: Path, converge_pm: pluggy.PluginManager) -> None:
    result = compile_case(case, converge_pm)  # must never raise, whatever the input
    for finding in result.findings:
        assert finding.location.line >= 1 and finding.location.col >= 1, str(finding)
    compare_text(case / EXPECTED_TEXT, check_text(result.findings))
    compare_text(case / EXPECTED_CODES, codes_text(result.findings))
    compare_plans(case, result)


@pytest.mark.parametrize("case", case_dirs(), ids=lambda p: p.name)
def test_converge_check_prints_the_expected_text(case: Path, capsys: pytest.CaptureFixture[str]):
    """The command itself, in the case folder, prints expected.txt and exits 1 on errors."""
    if REGEN:
        pytest.skip("regenerating")
    expected = (case / EXPECTED_TEXT).read_text(encoding="utf-8")
    with contextlib.chdir(case):
        code = main(["check", "-p", "policies", "-s", "site", "--at", at_of(case).isoformat()])
    out, err = capsys.readouterr()
    assert out == expected
    assert err == ""
    assert code == (1 if ": error[" in expected else 0)


def test_every_case_has_inputs_and_expectations() -> None:
    """A folder without inputs or expectations would pass for the wrong reason."""
    assert len(case_dirs()) >= 25
    for case in case_dirs():
        assert (case / "policies").is_dir(), case.name
        assert (case / "site" / "site.yaml").is_file(), case.name
        if not REGEN:
            assert (case / EXPECTED_TEXT).is_file(), case.name


# --- known bugs (strict: they fail loudly once fixed, so the marker can be removed) ---------

SITE = """
    site: test-plant
    timezone: Europe/Zurich
    devices:
      - id: reactor-1
        class: reactor
        protocol: modbus
        endpoint: {host: 127.0.0.1}
        points:
          - {name: TT1_PV, signal: temperature, address: {table: holding, register: 0, type: int16}}
    """


def test_a_selector_value_that_matches_nothing_is_placed_at_that_value(
    converge_project: ProjectBuilder,
) -> None:
    outcome = converge_project.write(
        {
            "sites/test/site.yaml": SITE,
            "policies/gmp.yaml": """
        policy: gmp-temperatures
        title: GMP temperatures
        owner: quality-assurance
        applies:
          devices:
            id:
              - reactor-*
              - reactor_*
        capture:
          every: 5s
        """,
        }
    ).compile()
    outcome.assert_findings([("policies/gmp.yaml", 8, 9, "selector-matches-nothing")])


def test_a_role_nobody_holds_is_placed_at_that_role(converge_project: ProjectBuilder) -> None:
    outcome = converge_project.write(
        {
            "sites/test/site.yaml": SITE,
            "sites/test/principals.yaml": (
                "principals:\n  - {id: alice, kind: person, roles: [qa]}\n"
            ),
            "policies/gmp.yaml": """
            policy: gmp-temperatures
            title: GMP temperatures
            owner: quality-assurance
            applies:
              devices: {class: reactor}
            capture:
              every: 5s
            access:
              read:
                - qa
                - auditors
            """,
        }
    ).compile()
    outcome.assert_findings([("policies/gmp.yaml", 11, 7, "role-unheld")])


CRASHING_MAPPINGS = {
    # a list written as a mapping that has a key named 'type'
    "policy controls": (
        "policies/gmp.yaml",
        """
        policy: gmp-temperatures
        title: GMP temperatures
        owner: quality-assurance
        controls:
          type: regulation
          ref: "21 CFR 11.10(e)"
        applies:
          devices: {class: reactor}
        capture:
          every: 5s
        """,
        5,
        3,
    ),
    "site devices": (
        "sites/test/site.yaml",
        """
        site: test-plant
        timezone: Europe/Zurich
        devices:
          id: reactor-1
          type: plc
        """,
        4,
        3,
    ),
    "principals": (
        "sites/test/principals.yaml",
        """
        principals:
          id: alice
          type: person
        """,
        2,
        3,
    ),
}


@pytest.mark.parametrize("kind", CRASHING_MAPPINGS)
def test_a_list_written_as_a_mapping_with_a_type_key_is_a_finding(
    converge_project: ProjectBuilder, kind: str
) -> None:
    path, text, line, col = CRASHING_MAPPINGS[kind]
    files = {
        "sites/test/site.yaml": SITE,
        "policies/gmp.yaml": """
        policy: gmp-temperatures
        title: GMP temperatures
        owner: quality-assurance
        applies:
          devices: {class: reactor}
        capture:
          every: 5s
        """,
    }
    outcome = converge_project.write({**files, path: text}).compile()
    assert (path, line, col, "wrong-type") in [
        (f.location.path, f.location.line, f.location.col, f.code) for f in outcome.findings
    ]
