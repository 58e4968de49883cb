"""The ``converge`` command as a user runs it: output, files written and exit codes.

Most tests call :func:`engine.cli.main` in-process from the repository root
(so that paths print as a user would type them); a few run the installed
``converge`` script in a subprocess. No command ever prints a traceback.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import jsonschema
import pytest
import yaml

from engine.cli import COMMANDS, build_parser, main
from engine.codes import CODES
from engine.errors import PlanRejected
from engine.plans.format import verify_plan
from engine.testkit import ProjectBuilder

REPO = Path(__file__).resolve().parent.parent
CONVERGE = Path(sys.executable).parent / "converge"
BASEL = "examples/sites/plant-basel"
PACKS = [
    "policies/gmp",
    "policies/security",
    "policies/privacy",
    "policies/utility/energy-metering.yaml",
]
AT = ["--at", "2026-06-01"]
INPUTS = ["-p", *PACKS, "-s", BASEL, *AT]


@pytest.fixture
def in_repo(monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(REPO)
    return REPO


def converge(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    """Run ``converge ARGV`` in-process: exit code, standard output, standard error."""
    try:
        code = main(list(argv))
    except SystemExit as exit_:  # argparse: --help, --version, usage errors
        code = int(exit_.code or 0)
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err
    return code, out, err


# --- a small project of our own ------------------------------------------------------------

SITE = """
    site: test-plant
    timezone: Europe/Zurich
    devices:
      - id: reactor-1
        class: reactor
        protocol: modbus
        endpoint: {host: 127.0.0.1}
        limits: {min_interval: 1s}
        points:
          - {name: TT1_PV, signal: temperature, address: {table: holding, register: 0, type: int16}}
          - {name: PT1_PV, signal: pressure, address: {table: holding, register: 2, type: int16}}
      - id: reactor-2
        class: reactor
        protocol: modbus
        endpoint: {host: 127.0.0.2}
        points:
          - {name: TT2_PV, signal: temperature, address: {table: input, register: 0, type: int16}}
    """

POLICY = """
    policy: gmp-data
    title: GMP data
    owner: quality-assurance
    applies:
      devices: {class: reactor}
      points: {signal: temperature}
    capture:
      every: 10s
    access:
      read: [qa]
      deny: [contractor]
    """


@pytest.fixture
def project(converge_project: ProjectBuilder, monkeypatch: pytest.MonkeyPatch) -> ProjectBuilder:
    converge_project.write({"policies/gmp.yaml": POLICY, "sites/test/site.yaml": SITE})
    monkeypatch.chdir(converge_project.root)
    return converge_project


ARGS = ["-p", "policies", "-s", "sites/test", *AT]
PRINCIPALS = """
    principals:
      - {id: alice@example.com, kind: person, roles: [qa]}
    """
TYPO = POLICY.replace("access:", "acess:")


# --- check ------------------------------------------------------------------------------------


def test_check_valid_examples_exits_0_and_says_so(in_repo, capsys):
    code, out, err = converge(capsys, "check", *INPUTS)
    assert code == 0
    assert out.splitlines()[-1] == "0 errors, 1 warning"
    assert err == ""


def test_check_prints_every_finding_as_path_line_col_and_exits_1(project, capsys):
    project.write({"policies/gmp.yaml": TYPO.replace("every: 10s", "every: 10")})
    code, out, _ = converge(capsys, "check", *ARGS)
    assert code == 1
    assert out.splitlines() == [
        "policies/gmp.yaml:8:10: error[wrong-type]: capture.every must be a duration such as"
        " 5s or 90d, got 10 (add a unit, e.g. 10s)",
        "policies/gmp.yaml:9:1: error[unknown-key]: unknown key 'acess' (did you mean 'access'?)",
        "2 errors, 0 warnings",
    ]


def test_check_warnings_alone_exit_0(project, capsys):
    project.write(
        {"policies/gmp.yaml": POLICY.replace("{class: reactor}", "{class: [reactor, x]}")}
    )
    code, out, _ = converge(capsys, "check", *ARGS)
    assert code == 0
    assert (
        "warning[selector-matches-nothing]: policy gmp-data:"
        " applies.devices.class 'x' matches no device"
    ) in out


def test_check_json_gives_code_and_place_of_each_finding(project, capsys):
    project.write({"policies/gmp.yaml": TYPO})
    code, out, _ = converge(capsys, "check", *ARGS, "--format", "json")
    assert code == 1
    assert json.loads(out) == [
        {
            "path": "policies/gmp.yaml",
            "line": 9,
            "col": 1,
            "severity": "error",
            "code": "unknown-key",
            "message": "unknown key 'acess' (did you mean 'access'?)",
        }
    ]


def test_check_json_of_valid_input_is_an_empty_list(project, capsys):
    code, out, _ = converge(capsys, "check", *ARGS, "--format", "json")
    assert (code, json.loads(out)) == (0, [])


def test_check_sarif_is_a_sarif_2_1_0_log(project, capsys):
    project.write(
        {
            "policies/gmp.yaml": TYPO.replace("every: 10s", "every: 10"),
            "policies/other.yaml": POLICY.replace("gmp-data", "other-data"),
            "sites/test/principals.yaml": PRINCIPALS,
        }
    )
    code, out, _ = converge(capsys, "check", *ARGS, "--format", "sarif")
    assert code == 1
    log = json.loads(out)
    assert log["version"] == "2.1.0"
    assert "sarif" in log["$schema"]
    [run] = log["runs"]
    driver = run["tool"]["driver"]
    assert driver["name"] == "converge"
    rule_ids = [rule["id"] for rule in driver["rules"]]
    assert rule_ids == ["role-unheld", "unknown-key", "wrong-type"]
    for rule in driver["rules"]:
        assert rule["shortDescription"]["text"] == CODES[rule["id"]]
    got = [
        (
            r["ruleId"],
            r["level"],
            r["locations"][0]["physicalLocation"]["artifactLocation"]["uri"],
            r["locations"][0]["physicalLocation"]["region"]["startLine"],
            r["locations"][0]["physicalLocation"]["region"]["startColumn"],
        )
        for r in run["results"]
    ]
    assert got == [
        ("wrong-type", "error", "policies/gmp.yaml", 8, 10),
        ("unknown-key", "error", "policies/gmp.yaml", 9, 1),
        ("role-unheld", "warning", "policies/other.yaml", 11, 10),
    ]
    for result in run["results"]:
        assert rule_ids[result["ruleIndex"]] == result["ruleId"]
        assert result["message"]["text"]


def test_check_of_a_missing_path_is_a_finding(project, capsys):
    code, out, _ = converge(capsys, "check", "-p", "nowhere", "-s", "sites/test", *AT)
    assert code == 1
    assert out.startswith("nowhere:1:1: error[path-not-found]: no such file or folder: nowhere")


# --- plan ---------------------------------------------------------------------------------


def test_plan_writes_one_plan_per_device_and_an_index(project, capsys):
    code, _, _ = converge(capsys, "plan", *ARGS, "-o", "out")
    assert code == 0
    out = project.root / "out"
    assert sorted(p.name for p in out.iterdir()) == [
        "index.json",
        "reactor-1.plan.json",
        "reactor-2.plan.json",
    ]
    index = json.loads((out / "index.json").read_bytes())
    assert index["format"] == "converge.plan-index/v1"
    assert index["as_of"] == {"test-plant": "2026-06-01"}
    assert index["ungoverned"] == ["reactor-1/PT1_PV"]
    for entry in index["plans"]:
        body = verify_plan((out / entry["file"]).read_bytes())
        assert entry["digest"] == body["digest"]
        assert entry["device"] == body["device"]["id"]
    plan = json.loads((out / "reactor-1.plan.json").read_bytes())
    assert [p["name"] for p in plan["points"]] == ["TT1_PV"]
    assert plan["points"][0]["capture"] == {"every_ms": 10000}
    assert plan["as_of"] == "2026-06-01"


def test_plan_bytes_are_identical_when_compiled_twice(project, capsys):
    converge(capsys, "plan", *ARGS, "-o", "first")
    converge(capsys, "plan", *ARGS, "-o", "second")
    first, second = project.root / "first", project.root / "second"
    names = sorted(p.name for p in first.iterdir())
    assert names == sorted(p.name for p in second.iterdir())
    for name in names:
        assert (first / name).read_bytes() == (second / name).read_bytes(), name


def test_plan_removes_the_stale_plan_of_a_device_no_longer_planned(project, capsys):
    converge(capsys, "plan", *ARGS, "-o", "out")
    assert (project.root / "out" / "reactor-2.plan.json").exists()
    project.write({"policies/gmp.yaml": POLICY.replace("{class: reactor}", "{id: reactor-1}")})
    code, _, _ = converge(capsys, "plan", *ARGS, "-o", "out")
    assert code == 0
    assert sorted(p.name for p in (project.root / "out").iterdir()) == [
        "index.json",
        "reactor-1.plan.json",
    ]


def test_plan_with_errors_writes_nothing_and_exits_1(project, capsys):
    project.write({"policies/gmp.yaml": TYPO})
    code, out, err = converge(capsys, "plan", *ARGS, "-o", "out")
    assert code == 1
    assert out == ""
    assert "policies/gmp.yaml:9:1: error[unknown-key]: unknown key 'acess'" in err
    assert not (project.root / "out").exists()


def test_a_plan_changed_by_one_byte_is_rejected(project, capsys):
    converge(capsys, "plan", *ARGS, "-o", "out")
    good = (project.root / "out" / "reactor-1.plan.json").read_bytes()
    assert verify_plan(good)["digest"].startswith("sha256:")
    tampered = good.replace(b'"every_ms":10000', b'"every_ms":90000')
    assert len(tampered) == len(good) and tampered != good
    with pytest.raises(PlanRejected, match="digest does not verify"):
        verify_plan(tampered)
    with pytest.raises(PlanRejected, match="not a JSON plan"):
        verify_plan(good[:-1])


# --- explain ------------------------------------------------------------------------------


def test_explain_text_names_winners_losers_and_waivers(in_repo, capsys):
    code, out, _ = converge(capsys, "explain", "reactor-7/TT701_PV", *INPUTS)
    assert code == 0
    lines = out.splitlines()
    assert lines[0] == f"reactor-7/TT701_PV (temperature, degC) at {BASEL}/site.yaml:149:9"
    assert "  capture.every = 5s  (the shortest interval wins)" in lines
    assert "  signing.keys = site-integrity  (every key signs every batch root)" in lines
    assert (
        "      from security-data-integrity @ policies/security/data-integrity.yaml:30:9" in lines
    )
    waived = [line for line in lines if line.startswith("  waived")]
    assert waived == [
        "  waived signing of gmp-critical-process-data until 2027-03-31: legacy RTU; paper chart"
        " recorder CR-701 is the GMP record until replacement CHG-1234 (risk assessment"
        " QRA-2025-017) (approved by j.doe@example.com,"
        " policies/gmp/critical-process-data.yaml:65:5)"
    ]


def test_explain_text_shows_the_losing_demand(in_repo, capsys):
    _, out, _ = converge(capsys, "explain", "reactor-1-plc/AGITATOR_RUN", *INPUTS)
    lines = out.splitlines()
    at = lines.index("  retention.keep_at_least = 7y  (the longest minimum retention wins)")
    assert lines[at + 1 : at + 3] == [
        "      from gmp-equipment-state-audit-trail @"
        " policies/gmp/equipment-state-audit-trail.yaml:34:18",
        "      lost 1y of security-auditable-events @"
        " policies/security/auditable-events.yaml:40:18",
    ]


def test_explain_json_lists_winners_losers_with_reason_and_waivers(in_repo, capsys):
    code, out, _ = converge(capsys, "explain", "reactor-7/TT701_PV", *INPUTS, "--format", "json")
    assert code == 0
    [entry] = json.loads(out)
    assert entry["point"] == "reactor-7/TT701_PV"
    assert entry["policies"] == [
        "gmp-critical-process-data",
        "security-access-control",
        "security-data-integrity",
    ]
    keys = entry["facets"]["signing.keys"]
    assert keys["value"] == "site-integrity"
    assert keys["won"] == [
        {"policy": "security-data-integrity", "at": "policies/security/data-integrity.yaml:30:9"}
    ]
    [waiver] = entry["waived"]
    assert waiver["policy"] == "gmp-critical-process-data"
    assert waiver["facets"] == ["signing"]
    assert waiver["removed"] == {
        "signing.required": "true",
        "signing.keys": "qa-signing",
        "signing.batch_window_ms": "1m",
    }
    assert waiver["expires"] == "2027-03-31"
    assert waiver["approved_by"] == "j.doe@example.com"


def test_explain_json_lost_candidates_say_why(in_repo, capsys):
    _, out, _ = converge(
        capsys, "explain", "reactor-1-plc/AGITATOR_RUN", *INPUTS, "--format", "json"
    )
    [entry] = json.loads(out)
    assert entry["facets"]["retention.keep_at_least_ms"]["lost"] == [
        {
            "policy": "security-auditable-events",
            "at": "policies/security/auditable-events.yaml:40:18",
            "value": "1y",
            "why": "the longest minimum retention wins (7y)",
        }
    ]
    assert entry["facets"]["retention.on_expiry"]["lost"][0]["why"] == (
        "archive beats delete (archive)"
    )
    assert entry["waived"] == []


def test_explain_a_device_explains_each_of_its_points(in_repo, capsys):
    _, out, _ = converge(capsys, "explain", "reactor-7", *INPUTS, "--format", "json")
    assert [e["point"] for e in json.loads(out)] == [
        "reactor-7/TT701_PV",
        "reactor-7/PT701_PV",
        "reactor-7/LT701_PV",
        "reactor-7/SC701_PV",
    ]


def test_explain_an_ungoverned_point_says_it_is_not_collected(project, capsys):
    code, out, _ = converge(capsys, "explain", "reactor-1/PT1_PV", *ARGS)
    assert code == 0
    assert "ungoverned: no policy selects this point, so it is not collected" in out


def test_explain_an_unknown_point_is_a_one_line_error(in_repo, capsys):
    code, out, err = converge(capsys, "explain", "reactor-1-plc/NOPE", *INPUTS)
    assert code == 2
    assert out == ""
    assert err == "converge: error: no point matches 'reactor-1-plc/NOPE' in the compiled sites\n"


# --- coverage -----------------------------------------------------------------------------


def coverage_json(capsys, *argv: str) -> dict:
    code, out, _ = converge(capsys, "coverage", *argv, "--format", "json")
    assert code == 0
    return json.loads(out)


def test_coverage_lists_ungoverned_points_and_policy_counts(in_repo, capsys):
    report = coverage_json(capsys, "-p", "policies/gmp", "-s", BASEL, *AT)
    assert report["points"] == 31
    assert report["governed"] == 24
    assert report["ungoverned"] == [
        "boiler-gateway/steam_flow",
        "boiler-gateway/steam_pressure",
        "boiler-gateway/fuel_gas_energy",
        "access-badge-gw/last_badge",
        "access-badge-gw/occupancy_production",
        "access-badge-gw/occupancy_office",
        "access-badge-gw/reader_online",
    ]
    assert {p["policy"]: p["points"] for p in report["policies"]} == {
        "gmp-cleanroom-environmental-monitoring": 5,
        "gmp-critical-process-data": 16,
        "gmp-equipment-state-audit-trail": 3,
    }


@pytest.mark.parametrize(
    ("at", "status"),
    [
        ("2026-06-01", "in force"),
        ("2027-02-28", "in force"),  # 31 days left
        ("2027-03-01", "expiring"),  # 30 days left
        ("2027-03-31", "expiring"),  # its last day
        ("2027-04-01", "expired"),
    ],
)
def test_coverage_exception_status_by_date(in_repo, capsys, at, status):
    report = coverage_json(capsys, "-p", *PACKS, "-s", BASEL, "--at", at)
    [exception] = report["exceptions"]
    assert exception["policy"] == "gmp-critical-process-data"
    assert exception["expires"] == "2027-03-31"
    assert exception["status"] == status
    assert exception["points"] == (0 if status == "expired" else 4)


def test_coverage_text_reports_an_expired_exception(in_repo, capsys):
    code, out, _ = converge(capsys, "coverage", "-p", *PACKS, "-s", BASEL, "--at", "2027-04-01")
    assert code == 0
    assert (
        "expired until 2027-03-31: signing of gmp-critical-process-data waived on 0 points" in out
    )
    assert (
        "policies/gmp/critical-process-data.yaml:65:5: warning[exception-expired]:"
        " exception for reactor-7 expired on 2027-03-31 and no longer applies"
    ) in out


# --- diff ---------------------------------------------------------------------------------


@pytest.fixture
def old_and_new(project: ProjectBuilder) -> ProjectBuilder:
    project.write({"old/gmp.yaml": POLICY, "new/gmp.yaml": POLICY})
    return project


DIFF = ["diff", "-p", "old", "-p", "new", "-s", "sites/test", *AT]


def diff_json(capsys) -> tuple[int, list[dict]]:
    code, out, _ = converge(capsys, *DIFF, "--format", "json")
    return code, json.loads(out)


def test_diff_of_unchanged_policies_exits_0(old_and_new, capsys):
    code, out, _ = converge(capsys, *DIFF)
    assert (code, out) == (0, "no point changes\n")


@pytest.mark.parametrize(
    ("edit", "facet", "change"),
    [
        (("every: 10s", "every: 5s"), "capture.every", "stricter"),
        (("every: 10s", "every: 1m"), "capture.every", "looser"),
        (("read: [qa]", "read: [qa, auditor]"), "access.read", "looser"),
        (("read: [qa]", "read: []"), "access.read", "stricter"),
        (("deny: [contractor]", "deny: []"), "access.deny", "looser"),
        (("deny: [contractor]", "deny: [contractor, visitor]"), "access.deny", "stricter"),
    ],
)
def test_diff_marks_each_change_stricter_or_looser(old_and_new, capsys, edit, facet, change):
    old_and_new.write({"new/gmp.yaml": POLICY.replace(*edit)})
    code, changes = diff_json(capsys)
    assert code == 1
    assert [(c["point"], c["facet"], c["change"]) for c in changes] == [
        ("reactor-1/TT1_PV", facet, change),
        ("reactor-2/TT2_PV", facet, change),
    ]


def test_diff_removing_the_deny_facet_is_looser(old_and_new, capsys):
    old_and_new.write({"new/gmp.yaml": POLICY.replace("  deny: [contractor]\n", "")})
    code, changes = diff_json(capsys)
    assert code == 1
    assert changes[0] == {
        "point": "reactor-1/TT1_PV",
        "facet": "access.deny",
        "old": "contractor",
        "new": None,
        "change": "looser",
    }


def test_diff_text_names_each_point_and_change(old_and_new, capsys):
    old_and_new.write({"new/gmp.yaml": POLICY.replace("every: 10s", "every: 5s")})
    code, out, _ = converge(capsys, *DIFF)
    assert code == 1
    assert "2 changes" in out
    rows = [line for line in out.splitlines() if "TT" in line]
    assert len(rows) == 2
    assert all("10s" in row and "5s" in row and "stricter" in row for row in rows)


def test_diff_needs_exactly_two_policy_sets(old_and_new, capsys):
    code, _, err = converge(capsys, "diff", "-p", "old", "-s", "sites/test", *AT)
    assert code == 2
    assert err == "converge: error: diff takes exactly two policy sets: -p OLD -p NEW\n"


# --- test (policy unit tests) -----------------------------------------------------------


def test_policy_unit_tests_of_the_examples_pass(in_repo, capsys, tmp_path):
    junit = tmp_path / "junit.xml"
    code, out, _ = converge(capsys, "test", "examples/policy-tests", "--junit", str(junit))
    assert code == 0, out
    passed = out.count("PASS examples/policy-tests/plant-basel.yaml:")
    assert passed >= 10
    assert out.count("PASS examples/policy-tests/water-works.yaml:") >= 7
    total = len(out.splitlines()) - 1
    assert out.splitlines()[-1] == f"{total} passed, 0 failed"
    suite = ET.fromstring(junit.read_bytes())
    assert (suite.get("tests"), suite.get("failures")) == (str(total), "0")


UNIT_TESTS = """
    policies: [../policies]
    site: ../sites/test
    at: 2026-06-01
    cases:
      - name: temperatures every 10 s
        point: reactor-1/TT1_PV
        expect: {capture.every: 10s, access.deny: [contractor]}
        winners: {capture.every: gmp-data}
      - name: a wrong expectation
        point: reactor-1/TT1_PV
        expect: {capture.every: 5s, access.read: [qa, auditor]}
      - name: pressures are not governed
        point: reactor-1/PT1_PV
        expect: {governed: false}
    """


def test_a_failing_policy_unit_test_prints_expected_and_actual(project, capsys):
    project.write({"tests/unit.yaml": UNIT_TESTS})
    code, out, _ = converge(capsys, "test", "tests", "--junit", "junit.xml")
    assert code == 1
    assert out.splitlines() == [
        "PASS tests/unit.yaml:5:5: temperatures every 10 s",
        "FAIL tests/unit.yaml:9:5: a wrong expectation",
        "     capture.every: expected 5s, got 10s (from gmp-data @ policies/gmp.yaml:8:10)",
        "     access.read: expected auditor, qa, got qa (from gmp-data @ policies/gmp.yaml:10:9)",
        "PASS tests/unit.yaml:12:5: pressures are not governed",
        "2 passed, 1 failed",
    ]
    suite = ET.fromstring((project.root / "junit.xml").read_bytes())
    assert (suite.get("tests"), suite.get("failures")) == ("3", "1")
    failed = [case for case in suite.iter("testcase") if case.find("failure") is not None]
    assert [case.get("name") for case in failed] == ["a wrong expectation"]
    assert failed[0].get("line") == "9"
    assert "expected 5s, got 10s" in failed[0].find("failure").get("message")


def test_policy_unit_tests_against_broken_inputs_show_the_findings(project, capsys):
    project.write({"tests/unit.yaml": UNIT_TESTS, "policies/gmp.yaml": TYPO})
    code, out, _ = converge(capsys, "test", "tests")
    assert code == 1
    assert "policies/gmp.yaml:9:1: error[unknown-key]: unknown key 'acess'" in out


def test_a_broken_policy_test_file_s_findings_are_printed_as_check_prints_them(project, capsys):
    """Sorted by place, on standard output, with the validate codes (docs/findings.md)."""
    broken = UNIT_TESTS.replace("site:", "sitez:").replace(
        "capture.every: 10s", "capture.evry: 10s"
    )
    project.write({"tests/unit.yaml": broken})
    code, out, err = converge(capsys, "test", "tests")
    assert (code, err) == (1, "")
    lines = out.splitlines()
    assert [line.split(": ")[:2] for line in lines[:-1]] == [
        ["tests/unit.yaml:1:1", "error[missing-key]"],
        ["tests/unit.yaml:2:1", "error[unknown-key]"],
        ["tests/unit.yaml:7:28", "error[bad-value]"],
    ]
    assert lines[-1] == "3 errors, 0 warnings"
    code, out, err = converge(capsys, "test", "tests", "--format", "json")
    assert (code, err) == (1, "")
    assert [(f["line"], f["code"]) for f in json.loads(out)] == [
        (1, "missing-key"),
        (2, "unknown-key"),
        (7, "bad-value"),
    ]


# --- schema and usage ---------------------------------------------------------------------

EXAMPLES = {
    "policy": sorted(
        str(p) for p in (REPO / "policies").glob("*/*.yaml") if p.parent.name != "tests"
    ),
    "site": [f"{REPO}/{BASEL}/site.yaml", f"{REPO}/examples/sites/water-works/site.yaml"],
    "principals": [f"{REPO}/{BASEL}/principals.yaml"],
}


@pytest.mark.parametrize("kind", ["policy", "site", "principals"])
def test_schema_prints_a_json_schema_the_examples_satisfy(capsys, kind):
    code, out, _ = converge(capsys, "schema", kind)
    assert code == 0
    schema = json.loads(out)
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    jsonschema.Draft202012Validator.check_schema(schema)
    validator = jsonschema.Draft202012Validator(schema)
    for file in EXAMPLES[kind]:
        data = json.loads(json.dumps(yaml.safe_load(Path(file).read_text()), default=str))
        assert not [e.message for e in validator.iter_errors(data)], file


def test_schema_of_a_policy_rejects_the_retension_typo(capsys):
    _, out, _ = converge(capsys, "schema", "policy")
    policy = yaml.safe_load((REPO / "policies/gmp/critical-process-data.yaml").read_text())
    policy["retension"] = policy.pop("retention")
    errors = list(
        jsonschema.Draft202012Validator(json.loads(out)).iter_errors(
            json.loads(json.dumps(policy, default=str))
        )
    )
    assert errors


@pytest.mark.parametrize(
    "argv",
    [
        ["check", "--bogus"],
        ["frobnicate"],
        [],
        ["schema", "plan"],
        ["check", "--at", "2026-13-01"],
    ],
)
def test_usage_errors_exit_2(capsys, argv):
    code, _, err = converge(capsys, *argv)
    assert code == 2
    assert "usage: converge" in err


def subcommands(parser: argparse.ArgumentParser) -> list[str]:
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return list(action.choices)


def test_the_help_lists_every_command_in_the_table_s_order(capsys):
    code, out, _ = converge(capsys, "--help")
    assert code == 0
    assert subcommands(build_parser()) == list(COMMANDS)
    assert all(f"    {name} " in out for name in COMMANDS)


@pytest.mark.parametrize("name", COMMANDS)
def test_each_command_is_the_module_of_its_name(name):
    assert subcommands(build_parser(["--trace-hooks", name, "--help"])) == [name]


@pytest.mark.parametrize("argv", [["--help", "query"], ["-h"], ["--version"], ["nope"], []])
def test_a_parser_not_sure_of_its_command_has_them_all(argv):
    assert subcommands(build_parser(argv)) == list(COMMANDS)


def test_a_command_imports_no_other_command():
    """Starting ``converge query`` imports the query command's module and what it needs, not
    every command's (half a second and more of a start)."""
    probe = (
        "import sys; from engine.cli import build_parser; build_parser(['query', '--help']);"
        " print(' '.join(m for m in sys.modules if m.startswith('engine.commands.')))"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe], check=True, capture_output=True, text=True, cwd=REPO
    )
    assert set(done.stdout.split()) == {
        "engine.commands.findings",
        "engine.commands.options",
        "engine.commands.query",
        "engine.commands.terminal",
    }


# --- the installed script -------------------------------------------------------------------


def run_script(*argv: str, cwd: Path = REPO) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "NO_COLOR": "1", "COLUMNS": "200"}
    done = subprocess.run(
        [str(CONVERGE), *argv],
        cwd=cwd,
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )
    assert "Traceback" not in done.stderr
    return done


def test_script_check_of_the_examples(tmp_path):
    done = run_script("check", *INPUTS)
    assert done.returncode == 0
    assert done.stdout.endswith("0 errors, 1 warning\n")


def test_script_check_of_a_typo_exits_1_with_one_line(tmp_path):
    (tmp_path / "p").mkdir()
    text = (REPO / "policies/gmp/critical-process-data.yaml").read_text()
    (tmp_path / "p/gmp.yaml").write_text(text.replace("\nretention:", "\nretension:"))
    done = run_script("check", "-p", "p", "-s", str(REPO / BASEL), *AT, cwd=tmp_path)
    assert done.returncode == 1
    assert done.stdout.splitlines() == [
        "p/gmp.yaml:48:1: error[unknown-key]: unknown key 'retension' (did you mean 'retention'?)",
        "1 error, 0 warnings",
    ]


def test_script_plan_and_version(tmp_path):
    done = run_script("plan", *INPUTS, "-o", str(tmp_path / "plans"), "--format", "json")
    assert done.returncode == 0
    rows = json.loads(done.stdout)
    assert [r["device"] for r in rows] == [
        "reactor-1-plc",
        "cleanroom-emu-1",
        "reactor-7",
        "filler-2",
        "boiler-gateway",
        "access-badge-gw",
    ]
    for row in rows:
        assert verify_plan(Path(row["file"]).read_bytes())["digest"] == row["digest"]
    assert run_script("--version").stdout.startswith("converge ")


# --- known bugs (strict: they fail loudly once fixed, so the marker can be removed) ---------


def test_plan_into_a_path_that_is_a_file_is_a_one_line_error(project, capsys):
    (project.root / "taken").write_text("not a folder")
    try:
        code, _, err = converge(capsys, "plan", *ARGS, "-o", "taken")
    except OSError as exc:
        pytest.fail(f"traceback: {exc!r}")
    assert code == 2
    assert err.startswith("converge: error:")


def test_junit_into_a_missing_folder_is_a_one_line_error(project, capsys):
    project.write({"tests/unit.yaml": UNIT_TESTS})
    try:
        code, _, err = converge(capsys, "test", "tests", "--junit", "missing/dir/junit.xml")
    except OSError as exc:
        pytest.fail(f"traceback: {exc!r}")
    assert code == 2
    assert err.startswith("converge: error:")


def test_an_unreadable_expected_duration_is_a_finding(project, capsys):
    unit_tests = UNIT_TESTS.replace("capture.every: 10s", "capture.every: 5 s")
    project.write({"tests/unit.yaml": unit_tests})
    try:
        code, out, err = converge(capsys, "test", "tests")
    except ValueError as exc:
        pytest.fail(f"traceback: {exc!r}")
    assert code == 1
    assert "tests/unit.yaml:7:" in out + err


def test_an_invalid_policy_test_file_is_reported_in_plain_words(project, capsys):
    project.write({"tests/unit.yaml": "policies: [../policies]\nsite: ../sites/test\ncases: 3\n"})
    code, out, _ = converge(capsys, "test", "tests")
    assert code == 1
    assert out.splitlines()[0] == (
        "tests/unit.yaml:3:8: error[wrong-type]: cases must be a list of mappings, got 3"
    )


def test_output_into_a_closed_pipe_has_no_traceback():
    child = subprocess.Popen(
        [str(CONVERGE), "schema", "site"], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    assert child.stdout is not None and child.stderr is not None
    child.stdout.close()  # the reader went away before the first byte, as `| head -0` does
    err = child.stderr.read().decode()
    child.wait(timeout=60)
    assert "Traceback" not in err


def test_check_of_the_whole_policies_folder_is_clean(in_repo, capsys):
    code, out, _ = converge(capsys, "check", "-p", "policies", "-s", BASEL, *AT)
    assert code == 0, out


def test_policy_unit_tests_as_json(in_repo, capsys):
    code, out, _ = converge(capsys, "test", "examples/policy-tests", "--format", "json")
    assert code == 0
    cases = json.loads(out)
    assert len(cases) >= 17
    assert all(case["passed"] and case["failures"] == [] for case in cases)
    assert cases[0]["at"].startswith("examples/policy-tests/plant-basel.yaml:")
