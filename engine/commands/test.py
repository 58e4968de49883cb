"""``converge test``: policy unit tests that compliance teams write in YAML.

A test file names the policies and site it runs against (paths relative to
the test file) and a list of cases; each case names a point and the merged
facets it expects, in the policy language's own spelling::

    policies: [../policies]
    site: ../examples/sites/plant-basel
    at: 2026-06-01
    cases:
      - name: reactor temperatures are captured every 5 s and signed by QA
        point: reactor-1-plc/TT101_PV
        expect:
          capture.every: 5s
          signing.keys: [qa-signing, site-integrity]
        winners:
          capture.every: gmp-critical-process-data

``expect: {governed: false}`` asserts a point is ungoverned, ``collected:
false`` that no capture is in force for it (governed or not); a facet
expected as ``null`` must be absent. A failure prints expected against actual and the
provenance of the actual value. ``--junit FILE`` writes JUnit XML for CI.
"""

from __future__ import annotations

import argparse
import json
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pluggy
from rich.console import Console

from engine.commands.findings import findings_json, findings_text
from engine.commands.options import Subparsers
from engine.compile import Compilation, Inputs, compile_project
from engine.compile.load import Document, load_file
from engine.compile.merge import MergedPoint, describe
from engine.compile.validate import schema_errors
from engine.durations import parse_duration
from engine.errors import ConvergeError, Finding, FindingsError, Location, error, sort_findings
from engine.model import FACETS

LANGUAGE_FACETS = {facet.removesuffix("_ms"): facet for facet in FACETS}
"""``capture.every`` (as written in policies) to ``capture.every_ms`` (as merged)."""

_SCHEMA: dict[str, Any] = {
    "policies": {"type": ["string", "list"], "required": True, "schema": {"type": "string"}},
    "site": {"type": ["string", "list"], "required": True, "schema": {"type": "string"}},
    "principals": {"type": "list", "schema": {"type": "string"}},
    "at": {"type": "date"},
    "cases": {
        "type": "list",
        "required": True,
        "empty": False,
        "schema": {
            "type": "dict",
            "schema": {
                "name": {"type": "string", "required": True},
                "point": {"type": "string", "required": True, "regex": r"[^/]+/.+"},
                "expect": {
                    "type": "dict",
                    "required": True,
                    "keysrules": {"allowed": [*LANGUAGE_FACETS, "governed", "collected"]},
                },
                "winners": {
                    "type": "dict",
                    "keysrules": {"allowed": list(LANGUAGE_FACETS)},
                    "valuesrules": {"type": ["string", "list"]},
                },
            },
        },
    },
}


def register(commands: Subparsers) -> None:
    parser = commands.add_parser("test", help="run policy unit tests written in YAML")
    parser.add_argument("tests", nargs="+", type=Path, metavar="TESTS")
    parser.add_argument("--junit", type=Path, metavar="FILE", help="also write JUnit XML")
    parser.add_argument("--format", choices=("text", "json"), default="text")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace, pm: pluggy.PluginManager, console: Console) -> int:
    try:
        results = run_tests(args.tests, pm)
    except FindingsError as exc:
        # printed where and as ``check`` prints findings: the test file and its inputs are inputs
        if args.format == "json":
            print(findings_json(exc.findings))
        else:
            findings_text(console, exc.findings)
        return 1
    if args.format == "json":
        print(json.dumps(results_json(results), indent=2))
    else:
        render(console, results)
    if args.junit:
        try:
            args.junit.write_bytes(junit_xml(results))
        except OSError as exc:
            raise ConvergeError(f"cannot write {args.junit}: {exc.strerror}") from exc
    return 1 if any(not r.passed for r in results) else 0


@dataclass
class CaseResult:
    file: str
    name: str
    location: Location
    failures: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return not self.failures


def run_test_file(path: Path, pm: pluggy.PluginManager) -> list[CaseResult]:
    """Compile the file's inputs once and check every case against the merged points."""
    doc = load_file(path)
    spec = _validated(doc)
    unreadable = _unreadable_expectations(doc, spec)
    if unreadable:
        raise FindingsError(unreadable)
    base = path.parent
    compilation = compile_project(_inputs(spec, base), pm)
    if not compilation.ok:
        raise FindingsError(compilation.findings)
    points = {mp.target.ref: mp for mp in compilation.merged.points}
    return [_run_case(doc, i, case, points, compilation) for i, case in enumerate(spec["cases"])]


def _validated(doc: Document) -> dict[str, Any]:
    """The test file's content, or every problem with it as findings."""
    if not isinstance(doc.data, dict):
        raise FindingsError([schema_errors.not_a_mapping(doc, "policy test", "policies")])
    problems, document = schema_errors.run(_SCHEMA, doc.data, doc)
    if problems:
        raise FindingsError([problem.finding for problem in problems])
    return document


def _unreadable_expectations(doc: Document, spec: dict[str, Any]) -> list[Finding]:
    """An expected duration that is not one is the test file's error, not a failed case."""
    findings = []
    for i, case in enumerate(spec["cases"]):
        for key, want in case["expect"].items():
            if key.startswith(("capture.every", "retention.keep", "signing.batch")) and want:
                try:
                    parse_duration(str(want))
                except ValueError as exc:
                    findings.append(
                        error(
                            doc.at(("cases", i, "expect", key)), "duration-invalid", f"{key}: {exc}"
                        )
                    )
    return findings


def _paths(value: str | list[str], base: Path) -> list[Path]:
    return [base / v for v in ([value] if isinstance(value, str) else value)]


def _inputs(spec: dict[str, Any], base: Path) -> Inputs:
    return Inputs(
        _paths(spec["policies"], base),
        _paths(spec["site"], base),
        _paths(spec.get("principals", []), base),
        spec.get("at"),
    )


def _run_case(
    doc: Document,
    index: int,
    case: dict[str, Any],
    points: dict[str, MergedPoint],
    compilation: Compilation,
) -> CaseResult:
    result = CaseResult(doc.path, case["name"], doc.at(("cases", index)))
    mp = points.get(case["point"])
    if mp is None:
        result.failures.append(f"no point {case['point']} in the site")
        return result
    for key, want in case["expect"].items():
        result.failures += _check_expect(mp, key, want)
    for key, want in case.get("winners", {}).items():
        result.failures += _check_winner(mp, LANGUAGE_FACETS[key], key, want)
    return result


def _check_expect(mp: MergedPoint, key: str, want: Any) -> list[str]:
    if key in ("governed", "collected"):
        state = mp.governed if key == "governed" else mp.collected
        if state == want:
            return []
        return [f"{key}: expected {_yaml_bool(want)}, got {_yaml_bool(state)}"]
    facet = LANGUAGE_FACETS[key]
    merged = mp.facets.get(facet)
    got = describe(facet, merged.value) if merged else None
    expected = None if want is None else describe(facet, _as_value(facet, want))
    if got == expected:
        return []
    came_from = "; ".join(f"{c.policy} @ {c.location}" for c in merged.winners) if merged else ""
    suffix = f" (from {came_from})" if came_from else ""
    return [f"{key}: expected {expected}, got {got}{suffix}"]


def _as_value(facet: str, want: Any) -> Any:
    """A value as written in a test, in the merged form (ms durations, sorted name tuples)."""
    if facet.endswith("_ms"):
        return parse_duration(str(want))
    if isinstance(want, list):
        return tuple(sorted({str(w) for w in want}))
    if facet == "capture.cron" and isinstance(want, str):
        return (want,)
    if facet == "capture.on_change.deadband" and isinstance(want, int):
        return float(want)
    return want


def _yaml_bool(value: object) -> str:
    return str(value).lower() if isinstance(value, bool) else str(value)


def _check_winner(mp: MergedPoint, facet: str, key: str, want: str | list[str]) -> list[str]:
    merged = mp.facets.get(facet)
    got = sorted({c.policy for c in merged.winners}) if merged else []
    expected = sorted([want] if isinstance(want, str) else want)
    return (
        []
        if got == expected
        else [f"{key} won by: expected {', '.join(expected)}, got {', '.join(got) or 'nothing'}"]
    )


def junit_xml(results: list[CaseResult]) -> bytes:
    suite = ET.Element(
        "testsuite",
        name="converge-policy-tests",
        tests=str(len(results)),
        failures=str(sum(not r.passed for r in results)),
    )
    for r in results:
        case = ET.SubElement(
            suite,
            "testcase",
            classname=r.file,
            name=r.name,
            file=r.location.path,
            line=str(r.location.line),
        )
        if not r.passed:
            ET.SubElement(case, "failure", message=r.failures[0]).text = "\n".join(r.failures)
    return bytes(ET.tostring(suite, encoding="utf-8", xml_declaration=True))


def run_tests(paths: list[Path], pm: pluggy.PluginManager) -> list[CaseResult]:
    """Every case of every test file (folders are searched for ``*.yaml``)."""
    files: list[Path] = []
    for path in paths:
        if not path.exists():
            raise ConvergeError(f"no such test file or folder: {path}")
        files += sorted(path.rglob("*.yaml")) if path.is_dir() else [path]
    results: list[CaseResult] = []
    findings: list[Finding] = []
    for file in files:
        try:
            results += run_test_file(file, pm)
        except FindingsError as exc:
            findings += exc.findings
    if findings:
        raise FindingsError(sort_findings(findings))
    return results


def results_json(results: list[CaseResult]) -> list[dict[str, Any]]:
    return [
        {"name": r.name, "at": str(r.location), "passed": r.passed, "failures": r.failures}
        for r in results
    ]


def render(console: Console, results: list[CaseResult]) -> None:
    """PASS or FAIL per case, each failure under its case, then the counts."""
    failed = sum(not r.passed for r in results)
    for r in results:
        mark = "[green]PASS[/]" if r.passed else "[bold red]FAIL[/]"
        console.print(f"{mark} {r.location}: {r.name}", highlight=False)
        for failure in r.failures:
            console.print(f"     {failure}", highlight=False, markup=False)
    console.print(f"{len(results) - failed} passed, {failed} failed", highlight=False)
