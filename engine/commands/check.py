"""``converge check``: every error and warning in the inputs, as text, JSON or SARIF."""

from __future__ import annotations

import argparse
from importlib.metadata import version

import pluggy
from rich.console import Console

from engine.commands.findings import findings_json, findings_sarif, findings_text
from engine.commands.options import Subparsers, add_inputs, inputs_of
from engine.compile import compile_project


def register(commands: Subparsers) -> None:
    parser = commands.add_parser("check", help="report every error and warning in the inputs")
    add_inputs(parser)
    parser.add_argument("--format", choices=("text", "json", "sarif"), default="text")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace, pm: pluggy.PluginManager, console: Console) -> int:
    result = compile_project(inputs_of(args, pm), pm)
    if args.format == "json":
        print(findings_json(result.findings))
    elif args.format == "sarif":
        print(findings_sarif(result.findings, version("converge")))
    else:
        findings_text(console, result.findings)
    return 0 if result.ok else 1
