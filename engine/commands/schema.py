"""``converge schema``: the JSON Schema of a kind of file, for editors."""

from __future__ import annotations

import argparse
import json

import pluggy
from rich.console import Console

from engine.commands.options import Subparsers
from engine.compile.validate.jsonschema import json_schema


def register(commands: Subparsers) -> None:
    parser = commands.add_parser("schema", help="print the JSON Schema of a file kind")
    parser.add_argument("kind", choices=("policy", "site", "principals"))
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace, pm: pluggy.PluginManager, console: Console) -> int:
    print(json.dumps(json_schema(args.kind, pm), indent=2, sort_keys=True))
    return 0
