"""``converge check``: every error and warning in the inputs, as text, JSON or SARIF.

``--strict`` makes every warning an error, ``--error-on CODE`` the warnings
of one code: a selector value that matches nothing leaves a policy governing
nothing with only warnings, which a CI job must not let through quietly.
"""

from __future__ import annotations

import argparse
from collections.abc import Iterable, Sequence
from dataclasses import replace
from difflib import get_close_matches
from importlib.metadata import version

import pluggy
from rich.console import Console

from engine.codes import CODES
from engine.commands.findings import findings_json, findings_sarif, findings_text
from engine.commands.options import Subparsers, add_inputs, inputs_of
from engine.compile import compile_project
from engine.errors import ConvergeError, Finding, Severity, has_errors


def register(commands: Subparsers) -> None:
    parser = commands.add_parser("check", help="report every error and warning in the inputs")
    add_inputs(parser)
    parser.add_argument("--format", choices=("text", "json", "sarif"), default="text")
    parser.add_argument(
        "--strict", action="store_true", help="report every warning as an error (exit 1 on any)"
    )
    parser.add_argument(
        "--error-on",
        action="append",
        default=[],
        metavar="CODE",
        help="report the warnings of finding code CODE as errors (repeatable)",
    )
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace, pm: pluggy.PluginManager, console: Console) -> int:
    codes = error_codes(args.error_on)
    result = compile_project(inputs_of(args, pm), pm)
    findings = as_errors(result.findings, args.strict, codes)
    if args.format == "json":
        print(findings_json(findings))
    elif args.format == "sarif":
        print(findings_sarif(findings, version("converge")))
    else:
        findings_text(console, findings)
    return 1 if has_errors(findings) else 0


def error_codes(written: Iterable[str]) -> frozenset[str]:
    """The codes of ``--error-on``; an unknown one ends the command before anything is read."""
    for code in written:
        if code not in CODES:
            close = get_close_matches(code, sorted(CODES), n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            raise ConvergeError(f"--error-on: no finding code '{code}'{hint}; see docs/findings.md")
    return frozenset(written)


def as_errors(findings: Sequence[Finding], strict: bool, codes: frozenset[str]) -> list[Finding]:
    """``findings`` with the warnings ``--strict`` or ``--error-on`` names made errors."""
    return [
        replace(f, severity=Severity.ERROR)
        if f.severity is Severity.WARNING and (strict or f.code in codes)
        else f
        for f in findings
    ]
