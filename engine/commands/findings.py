"""Findings for people (text), for machines (JSON) and for code review (SARIF 2.1.0).

Text goes through rich, so colours appear only on a terminal and never in a
pipe or a CI log; the line format itself is fixed so editors can jump to it.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from rich.console import Console
from rich.markup import escape

from engine.codes import CODES
from engine.errors import Finding, Severity

SARIF_SCHEMA = "https://json.schemastore.org/sarif-2.1.0.json"
STYLE = {Severity.ERROR: "bold red", Severity.WARNING: "yellow"}


def findings_text(console: Console, findings: Sequence[Finding]) -> None:
    for f in findings:
        console.print(
            f"{escape(str(f.location))}: [{STYLE[f.severity]}]{f.severity}[/]: {escape(f.message)}",
            highlight=False,
            soft_wrap=True,
        )
    console.print(summary(findings), highlight=False)


def summary(findings: Sequence[Finding]) -> str:
    errors = sum(f.severity is Severity.ERROR for f in findings)
    warnings = len(findings) - errors
    return f"{_count(errors, 'error')}, {_count(warnings, 'warning')}"


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" + ("" if n == 1 else "s")


def findings_json(findings: Sequence[Finding]) -> str:
    return json.dumps([f.as_dict() for f in findings], indent=2)


def findings_sarif(findings: Sequence[Finding], version: str) -> str:
    """A SARIF 2.1.0 log with one rule per finding code, so review tools can annotate."""
    used = sorted({f.code for f in findings})
    rules = [{"id": code, "shortDescription": {"text": CODES.get(code, code)}} for code in used]
    run: dict[str, Any] = {
        "tool": {"driver": {"name": "converge", "version": version, "rules": rules}},
        "results": [_sarif_result(f, used.index(f.code)) for f in findings],
    }
    return json.dumps({"$schema": SARIF_SCHEMA, "version": "2.1.0", "runs": [run]}, indent=2)


def _sarif_result(finding: Finding, rule_index: int) -> dict[str, Any]:
    where = finding.location
    return {
        "ruleId": finding.code,
        "ruleIndex": rule_index,
        "level": "error" if finding.severity is Severity.ERROR else "warning",
        "message": {"text": finding.message},
        "locations": [
            {
                "physicalLocation": {
                    "artifactLocation": {"uri": where.path},
                    "region": {"startLine": where.line, "startColumn": where.col},
                }
            }
        ],
    }
