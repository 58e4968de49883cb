"""A policy mistake does not pass CI quietly (issue 15).

A misspelled selector value makes a policy govern nothing with only
warnings; ``check --strict`` (or ``--error-on CODE``) fails on them, and the
warning says which name was probably meant. ``explain`` of a point that does
not exist suggests the nearest ones.
"""

from __future__ import annotations

import contextlib
import json
import textwrap
from pathlib import Path

import pytest

from engine.cli import main
from engine.commands.test import run_tests
from engine.plugin_manager import make_plugin_manager
from engine.testkit import ProjectBuilder

SITE = """
    site: plant-basel
    timezone: Europe/Zurich
    devices:
      - id: reactor-1
        class: reactor
        zone: production
        labels: {gmp: "yes", line: "line-1"}
        protocol: modbus
        endpoint: {host: 127.0.0.1}
        points:
          - name: TT101_PV
            signal: temperature
            unit: degC
            address: {table: holding, register: 0, type: int16}
          - name: PT101_PV
            signal: pressure
            unit: bar
            address: {table: holding, register: 1, type: int16}
    """

POLICY = """
    policy: gmp-temperatures
    title: GMP temperatures
    owner: quality-assurance
    applies:
      devices: {site: [plant-basle]}
    capture:
      every: 5s
    """


def run(root: Path, capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    with contextlib.chdir(root):
        code = main([*args])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture
def misspelled(converge_project: ProjectBuilder) -> Path:
    converge_project.write({"sites/basel/site.yaml": SITE, "policies/gmp.yaml": POLICY})
    return converge_project.root


def test_a_misspelled_site_passes_check_with_warnings_only(misspelled, capsys):
    code, out, _ = run(misspelled, capsys, "check", "-p", "policies", "-s", "sites")
    assert code == 0
    assert "warning[selector-matches-nothing]" in out


def test_check_strict_fails_on_every_warning(misspelled, capsys):
    code, out, _ = run(misspelled, capsys, "check", "--strict", "-p", "policies", "-s", "sites")
    assert code == 1
    assert "error[selector-matches-nothing]" in out
    assert "error[policy-governs-nothing]" in out
    assert out.splitlines()[-1] == "2 errors, 0 warnings"


def test_check_error_on_fails_on_the_warnings_of_one_code(misspelled, capsys):
    args = ("check", "-p", "policies", "-s", "sites", "--format", "json")
    code, out, _ = run(misspelled, capsys, *args, "--error-on", "policy-governs-nothing")
    assert code == 1
    severities = {f["code"]: f["severity"] for f in json.loads(out)}
    assert severities == {"policy-governs-nothing": "error", "selector-matches-nothing": "warning"}
    code, _, _ = run(misspelled, capsys, *args, "--error-on", "role-unheld")
    assert code == 0


def test_check_error_on_an_unknown_code_suggests_the_nearest(misspelled, capsys):
    args = ("check", "-p", "policies", "-s", "sites", "--error-on", "policy-governs-nothin")
    code, out, err = run(misspelled, capsys, *args)
    assert code == 2
    assert out == ""
    assert err == (
        "converge: error: --error-on: no finding code 'policy-governs-nothin'"
        " (did you mean 'policy-governs-nothing'?); see docs/findings.md\n"
    )


SELECTORS = {
    "site": ("devices: {site: plant-basle}", "plant-basel"),
    "zone": ("devices: {zone: [prodution]}", "production"),
    "class": ("devices: {class: reactr}", "reactor"),
    "id": ("devices: {id: reactor-l}", "reactor-1"),
    "protocol": ("devices: {protocol: modbuss}", "modbus"),
    "label name": ('devices: {labels: {gpm: "yes"}}', "gmp"),
    "label value": ("devices: {labels: {line: lne-1}}", "line-1"),
    "has_label": ("devices: {has_label: [lien]}", "line"),
    "labels_not": ("devices: {labels_not: {line: line-l}}", "line-1"),
    "signal": ("points: {signal: temprature}", "temperature"),
    "unit": ("points: {unit: degc}", "degC"),
    "name": ("points: {name: TT101-PV}", "TT101_PV"),
}


@pytest.mark.parametrize("key", SELECTORS)
def test_a_selector_value_that_matches_nothing_suggests_a_name_that_exists(
    key: str, converge_project: ProjectBuilder
) -> None:
    selector, meant = SELECTORS[key]
    policy = POLICY.replace("devices: {site: [plant-basle]}", selector)
    outcome = converge_project.write({"sites/basel/site.yaml": SITE, "policies/gmp.yaml": policy})
    finding = outcome.compile().finding("selector-matches-nothing")
    assert finding.message.endswith(f"(did you mean '{meant}'?)"), finding.message
    assert finding.location.line == 5


def test_a_glob_that_matches_nothing_is_not_given_a_name_as_its_fix(
    converge_project: ProjectBuilder,
) -> None:
    policy = POLICY.replace("devices: {site: [plant-basle]}", "devices: {id: reactor_*}")
    outcome = converge_project.write({"sites/basel/site.yaml": SITE, "policies/gmp.yaml": policy})
    finding = outcome.compile().finding("selector-matches-nothing")
    assert finding.message.endswith("matches no device")


def test_explain_of_an_unknown_point_suggests_the_nearest(misspelled, capsys):
    args = ("-p", "policies", "-s", "sites")
    code, _, err = run(misspelled, capsys, "explain", "reactor-1/TT10_PV", *args)
    assert code == 2
    assert err == (
        "converge: error: no point matches 'reactor-1/TT10_PV' in the compiled sites"
        " (did you mean 'reactor-1/TT101_PV'?)\n"
    )
    code, _, err = run(misspelled, capsys, "explain", "reactr-1", *args)
    assert err.endswith("(did you mean 'reactor-1'?)\n")


# --- the whole inventory is checked, governed or not --------------------------------------

OVERLAP_SITE = """
    site: plant-basel
    timezone: Europe/Zurich
    devices:
      - id: reactor-1
        class: reactor
        protocol: modbus
        endpoint: {host: 127.0.0.1}
        points:
          - {name: TT101_PV, address: {table: holding, register: 0, type: int16}}
          - {name: TT102_PV, address: {table: holding, register: 3, type: float32}}
          - {name: TT103_PV, address: {table: holding, register: 4, type: int16}}
          - {name: TT104_PV, address: {table: holding, register: 6, type: int16}}
          - {name: TT105_PV, address: {table: holding, register: 6, type: uint16}}
    """


def test_overlapping_registers_no_policy_governs_are_site_errors(
    converge_project: ProjectBuilder,
) -> None:
    """An inventory bug surfaces at once, not during an unrelated policy change later."""
    policy = POLICY.replace("devices: {site: [plant-basle]}", "points: {name: TT101_PV}")
    outcome = converge_project.write(
        {"sites/basel/site.yaml": OVERLAP_SITE, "policies/gmp.yaml": policy}
    ).compile()
    outcome.assert_findings(
        [
            ("sites/basel/site.yaml", 11, 35, "modbus-overlap"),
            ("sites/basel/site.yaml", 13, 35, "modbus-type-conflict"),
        ]
    )
    assert not outcome.compilation.plans


# --- governed is not collected ------------------------------------------------------------

COLLECTED_SITE = """
    site: plant-basel
    timezone: Europe/Zurich
    devices:
      - id: reactor-1
        class: reactor
        protocol: modbus
        endpoint: {host: 127.0.0.1}
        points:
          - {name: TT101_PV, address: {table: holding, register: 0, type: int16}}
      - id: pump-1
        class: pump
        protocol: modbus
        endpoint: {host: 127.0.0.2}
        points:
          - {name: FT201_PV, address: {table: holding, register: 0, type: int16}}
          - {name: FT202_PV, address: {table: holding, register: 1, type: int16}}
    """

CAPTURE_REACTORS = POLICY.replace("devices: {site: [plant-basle]}", "devices: {class: reactor}")
KEEP_EVERYTHING = """
    policy: keep-everything
    title: Keep everything a year
    owner: records
    applies: {}
    retention:
      keep_at_least: 1y
    """


@pytest.fixture
def half_captured(converge_project: ProjectBuilder) -> Path:
    converge_project.write(
        {
            "sites/basel/site.yaml": COLLECTED_SITE,
            "policies/gmp.yaml": CAPTURE_REACTORS,
            "policies/keep.yaml": KEEP_EVERYTHING,
        }
    )
    return converge_project.root


def test_coverage_tells_governed_and_collected_from_governed_but_not_captured(
    half_captured, capsys
):
    args = ("-p", "policies", "-s", "sites", "--at", "2026-06-01")
    code, out, _ = run(half_captured, capsys, "coverage", *args, "--format", "json")
    assert code == 0
    report = json.loads(out)
    assert (report["points"], report["governed"], report["collected"]) == (3, 3, 1)
    assert report["not_captured"] == ["pump-1/FT201_PV", "pump-1/FT202_PV"]
    _, out, _ = run(half_captured, capsys, "coverage", *args)
    assert out.splitlines()[0] == "3 of 3 points governed, 1 of them collected"
    assert "Governed but not collected (no capture in force): 2" in out
    assert "  pump-1/FT201_PV, pump-1/FT202_PV" in out


def test_explain_says_when_and_why_a_point_is_not_collected(half_captured, capsys):
    args = ("-p", "policies", "-s", "sites", "--at", "2026-06-01")
    _, out, _ = run(half_captured, capsys, "explain", "pump-1/FT201_PV", *args, "--format", "json")
    [entry] = json.loads(out)
    assert entry["collected"] is False
    assert entry["not_collected"] == "no policy that governs it sets capture (keep-everything)"
    _, out, _ = run(half_captured, capsys, "explain", "pump-1/FT201_PV", *args)
    assert (
        "  not collected: no policy that governs it sets capture (keep-everything)"
        in out.splitlines()
    )
    _, out, _ = run(
        half_captured, capsys, "explain", "reactor-1/TT101_PV", *args, "--format", "json"
    )
    [entry] = json.loads(out)
    assert (entry["collected"], entry["not_collected"]) == (True, None)


def test_explain_names_the_waiver_that_stops_collection(converge_project, capsys):
    waived = textwrap.dedent(CAPTURE_REACTORS) + (
        "exceptions:\n"
        "  - devices: {id: reactor-1}\n"
        "    waive: [capture]\n"
        "    reason: decommissioned\n"
        "    approved_by: j.doe@example.com\n"
        "    expires: 2027-03-31\n"
    )
    converge_project.write({"sites/basel/site.yaml": COLLECTED_SITE, "policies/gmp.yaml": waived})
    args = ("-p", "policies", "-s", "sites", "--at", "2026-06-01", "--format", "json")
    _, out, _ = run(converge_project.root, capsys, "explain", "reactor-1/TT101_PV", *args)
    [entry] = json.loads(out)
    assert entry["not_collected"] == (
        "the capture of gmp-temperatures is waived until 2027-03-31 (policies/gmp.yaml:9:5)"
    )


def test_a_policy_unit_test_can_assert_that_a_point_is_not_collected(half_captured):
    (half_captured / "unit.yaml").write_text(
        textwrap.dedent(
            """\
            policies: [policies]
            site: sites
            at: 2026-06-01
            cases:
              - name: pumps are governed but not collected
                point: pump-1/FT201_PV
                expect: {governed: true, collected: false}
              - name: reactors are collected
                point: reactor-1/TT101_PV
                expect: {collected: false}
            """
        )
    )
    results = run_tests([half_captured / "unit.yaml"], make_plugin_manager())
    assert [r.failures for r in results] == [[], ["collected: expected false, got true"]]
