"""A policy mistake does not pass CI quietly (issue 15).

A misspelled selector value makes a policy govern nothing with only
warnings; ``check --strict`` (or ``--error-on CODE``) fails on them, and the
warning says which name was probably meant. ``explain`` of a point that does
not exist suggests the nearest ones.
"""

from __future__ import annotations

import contextlib
import json
from pathlib import Path

import pytest

from engine.cli import main
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
