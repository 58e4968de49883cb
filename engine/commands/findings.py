"""Findings for people (text), for machines (JSON) and for code review (SARIF 2.1.0).

A text finding is one line, ``path:line:col: severity[code]: message``, so
that editors jump to it and a reader can look the code up in
docs/findings.md. The line is written as it is: no markup, no emoji codes
(rich would print ``:100:`` as an emoji), and a line break or control
character inside a message or path is escaped, so one finding stays one
line. Colours appear only on a terminal, never in a pipe or a CI log.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import quote

from rich.console import Console
from rich.text import Text

from engine.codes import CODES
from engine.errors import Finding, Severity

SARIF_SCHEMA = "https://json.schemastore.org/sarif-2.1.0.json"
STYLE = {Severity.ERROR: "bold red", Severity.WARNING: "yellow"}


def findings_text(console: Console, findings: Sequence[Finding]) -> None:
    """Every finding on its own line, then the counts."""
    if not console.is_terminal:
        console.file.write("".join(f"{finding_line(f)}\n" for f in findings))
        console.file.write(f"{summary(findings)}\n")
        return
    text = Text()
    for f in findings:
        text.append(f"{one_line(str(f.location))}: ")
        text.append(f"{f.severity}[{f.code}]", style=STYLE[f.severity])
        text.append(f": {one_line(f.message)}\n")
    text.append(summary(findings))
    console.print(text, highlight=False, soft_wrap=True)


def finding_line(finding: Finding) -> str:
    """``path:line:col: severity[code]: message``, on one line whatever the message holds."""
    where, severity = one_line(str(finding.location)), finding.severity.value
    return f"{where}: {severity}[{finding.code}]: {one_line(finding.message)}"


_BREAKING = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]")


def one_line(text: str) -> str:
    """``text`` with line breaks and control characters escaped (``\\n``, ``\\u2028``)."""
    return _BREAKING.sub(_escaped, text)


def _escaped(match: re.Match[str]) -> str:
    return match.group().encode("unicode_escape").decode("ascii")


def summary(findings: Sequence[Finding]) -> str:
    errors = sum(f.severity is Severity.ERROR for f in findings)
    warnings = len(findings) - errors
    return f"{_count(errors, 'error')}, {_count(warnings, 'warning')}"


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" + ("" if n == 1 else "s")


def findings_json(findings: Sequence[Finding]) -> str:
    return json.dumps([f.as_dict() for f in findings], indent=2)


def findings_sarif(findings: Sequence[Finding], version: str, root: Path | None = None) -> str:
    """A SARIF 2.1.0 log with one rule per finding code, so review tools can annotate.

    A relative path (findings name files relative to the working folder) is
    a percent-encoded URI reference resolved against ``SRCROOT``, the working
    folder as the run declares it (``root``, default the working folder); an
    absolute path is a ``file://`` URI. Columns count code points, as YAML does.
    """
    used = sorted({f.code for f in findings})
    index = {code: i for i, code in enumerate(used)}
    rules = [{"id": code, "shortDescription": {"text": CODES.get(code, code)}} for code in used]
    base = (root or Path.cwd()).resolve().as_uri().rstrip("/") + "/"
    run: dict[str, Any] = {
        "tool": {"driver": {"name": "converge", "version": version, "rules": rules}},
        "originalUriBaseIds": {SOURCE_ROOT: {"uri": base}},
        "columnKind": "unicodeCodePoints",
        "results": [_sarif_result(f, index[f.code]) for f in findings],
    }
    return json.dumps({"$schema": SARIF_SCHEMA, "version": "2.1.0", "runs": [run]}, indent=2)


SOURCE_ROOT = "SRCROOT"
"""The ``uriBaseId`` of relative paths: the working folder the command ran in."""


def artifact_location(path: str) -> dict[str, str]:
    """A SARIF ``artifactLocation`` of a finding's path (see :func:`findings_sarif`)."""
    if PurePosixPath(path).is_absolute():
        return {"uri": PurePosixPath(path).as_uri()}
    return {"uri": quote(path, safe="/"), "uriBaseId": SOURCE_ROOT}


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
                    "artifactLocation": artifact_location(where.path),
                    "region": {"startLine": where.line, "startColumn": where.col},
                }
            }
        ],
    }
