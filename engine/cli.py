"""The ``converge`` command: the parser, the table of commands, and how errors end a run.

Every command is a module of :mod:`engine.commands` that registers its own
parser and runs it (see that package). Nothing here decides anything. Errors
meant for users (:class:`~engine.errors.ConvergeError`) print one line and
exit 2; findings print one line each and exit 1 when any is an error.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence
from importlib.metadata import version
from typing import Protocol

from rich.console import Console

from engine.commands import (
    access,
    audit,
    check,
    coverage,
    diff,
    explain,
    export,
    ingest,
    keys,
    plan,
    principals,
    query,
    report,
    run,
    schema,
    serve,
    simulate,
    test,
    verify,
)
from engine.commands.findings import findings_text
from engine.commands.options import PIPE_WIDTH, Handler, Subparsers
from engine.errors import AccessDenied, ConvergeError, FindingsError
from engine.plugin_manager import make_plugin_manager


class Command(Protocol):
    """A module of :mod:`engine.commands`: ``register`` adds its parser, with its handler."""

    def register(self, commands: Subparsers) -> None: ...


COMMANDS: tuple[Command, ...] = (
    check,
    plan,
    explain,
    coverage,
    diff,
    test,
    schema,
    run,
    simulate,
    keys,
    audit,
    access,
    query,
    export,
    report,
    verify,
    serve,
    principals,
    ingest,
)
"""Every command, in the order ``converge --help`` lists them."""


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    # protocol libraries log warnings for conditions Converge reports itself (as gap records)
    logging.basicConfig(level=logging.ERROR, format="%(name)s: %(message)s")
    on_terminal = sys.stdout.isatty()
    console = Console(
        highlight=False,
        emoji=False,  # ':100:' in a path:line:col is a place, not an emoji
        soft_wrap=not on_terminal,
        width=None if on_terminal else PIPE_WIDTH,
    )
    try:
        pm = make_plugin_manager(trace=args.trace_hooks)
        handler: Handler = args.handler
        return handler(args, pm, console)
    except FindingsError as exc:
        findings_text(Console(stderr=True, soft_wrap=True), exc.findings)
        return 1
    except AccessDenied as exc:
        Console(stderr=True, highlight=False, soft_wrap=True).print(
            f"converge: refused: {exc}", markup=False
        )
        return 3
    except ConvergeError as exc:
        Console(stderr=True, highlight=False, soft_wrap=True).print(
            f"converge: error: {exc}", markup=False
        )
        return 2
    except BrokenPipeError:
        # the reader (`| head`) has gone: stop quietly, as Unix tools do
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="converge",
        description="Compile compliance policies for OT data into per-device collection plans.",
    )
    parser.add_argument("--version", action="version", version=f"converge {version('converge')}")
    parser.add_argument(
        "--trace-hooks", action="store_true", help="print every plugin hook call to standard error"
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for command in COMMANDS:
        command.register(commands)
    return parser


if __name__ == "__main__":
    sys.exit(main())
