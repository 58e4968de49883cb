"""``converge verify``: check an audit bundle offline, as its own ``verify.py`` does.

The very code each bundle carries as ``verify.py`` (:mod:`engine.export.verifier`)
runs here, so both give the same verdicts and messages. Exit 0 when the
bundle verifies, 1 when anything does not.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pluggy
from rich.console import Console

from engine.commands.options import Handler, Subparsers
from engine.errors import ConvergeError
from engine.export import verifier


def register(commands: Subparsers) -> None:
    parser = commands.add_parser("verify", help="check an audit bundle offline")
    parser.add_argument("bundle", type=Path, metavar="FILE.zip")
    parser.add_argument(
        "--trust",
        type=Path,
        metavar="KEYS.json",
        help="the public keys you trust (else the bundle's own, which proves"
        " it consistent, not where it came from)",
    )
    parser.add_argument("--format", choices=("text", "json"), default="text")
    handler: Handler = run
    parser.set_defaults(handler=handler)


def run(args: argparse.Namespace, pm: pluggy.PluginManager, console: Console) -> int:
    try:
        trust = None if args.trust is None else args.trust.read_bytes()
    except OSError as exc:
        raise ConvergeError(f"cannot read {args.trust}: {exc.strerror}") from exc
    wrong = verifier.unusable(str(args.bundle), trust)
    if wrong is not None:
        raise ConvergeError(wrong)
    verdict = verifier.verify(str(args.bundle), trust)
    # printed as verify.py prints it, line for line (no wrapping): the two must say the same,
    # the bundle's text made printable by Verdict.lines itself
    said = verdict.lines() if args.format == "text" else [json.dumps(verdict.as_json(), indent=2)]
    print("\n".join(said))
    return 0 if verdict.ok else 1
