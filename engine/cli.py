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
from importlib import import_module
from importlib.metadata import version

from rich.console import Console

from engine.commands.findings import findings_text
from engine.commands.options import PIPE_WIDTH, Handler
from engine.commands.terminal import printable_lines
from engine.errors import AccessDenied, ConvergeError, FindingsError
from engine.plugin_manager import make_plugin_manager

COMMANDS: tuple[str, ...] = (
    "check",
    "plan",
    "explain",
    "coverage",
    "diff",
    "test",
    "schema",
    "run",
    "simulate",
    "keys",
    "audit",
    "access",
    "query",
    "export",
    "report",
    "verify",
    "serve",
    "principals",
    "ingest",
    "retention",
    "hold",
)
"""Every command, in the order ``converge --help`` lists them: each is the module of
:mod:`engine.commands` of its name."""


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser(sys.argv[1:] if argv is None else argv).parse_args(argv)
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
            f"converge: refused: {printable_lines(str(exc))}", markup=False
        )
        return 3
    except ConvergeError as exc:
        Console(stderr=True, highlight=False, soft_wrap=True).print(
            f"converge: error: {printable_lines(str(exc))}", markup=False
        )
        return 2
    except BrokenPipeError:
        # the reader (`| head`) has gone: stop quietly, as Unix tools do
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1


def build_parser(argv: Sequence[str] | None = None) -> argparse.ArgumentParser:
    """The parser of every command, or of the one ``argv`` runs: a command's module imports
    what it needs (the store, the compiler, the report), most of a second for them all, and a
    run needs only its own."""
    parser = argparse.ArgumentParser(
        prog="converge",
        description="Compile compliance policies for OT data into per-device collection plans.",
    )
    parser.add_argument("--version", action="version", version=f"converge {version('converge')}")
    parser.add_argument(
        "--trace-hooks", action="store_true", help="print every plugin hook call to standard error"
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in _running(argv) or COMMANDS:
        import_module(f"engine.commands.{name}").register(commands)
    return parser


def _running(argv: Sequence[str] | None) -> tuple[str, ...]:
    """The command ``argv`` runs, when nothing before it asks for help, the version or a
    listing of the commands (an unknown name's error lists them all); else none."""
    for word in argv or ():
        if word != "--trace-hooks":
            return (word,) if word in COMMANDS else ()
    return ()


if __name__ == "__main__":
    sys.exit(main())
