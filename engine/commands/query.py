"""``converge query``: records through the access guard, each with its batch and its verdict.

The guard decides before anything is read, and the decision is an audit
entry whether it allows or denies (docs/access.md). Readings and gap records
of the allowed points come out in batch order as a table, CSV or JSON Lines,
each with its batch, its position in it and whether that batch verifies on
its own under the trusted keys. Points the principal may not read are
refused on standard error with the reason; the exit code is then 3.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterable
from typing import Any

import pluggy
from rich.console import Console
from rich.table import Table

from engine.access import Question, ask, record
from engine.access.data import Range, csv_chunks, records
from engine.access.guard import Decision
from engine.commands.options import (
    Handler,
    Subparsers,
    add_as,
    add_db,
    add_principals,
    add_range,
    add_trust,
    principal_of,
    principals_of,
    verifying_trust_of,
)
from engine.commands.terminal import markup_safe, printable
from engine.errors import ConvergeError
from engine.heap import collector_paused
from engine.sign.leaf import instant
from engine.store.store import Store


def register(commands: Subparsers) -> None:
    parser = commands.add_parser("query", help="records through the access guard")
    parser.add_argument("ref", metavar="DEVICE[/POINT]")
    add_db(parser)
    add_principals(parser)
    add_as(parser)
    add_range(parser)
    add_trust(parser)
    parser.add_argument("--format", choices=("table", "csv", "json"), default="table")
    handler: Handler = run
    parser.set_defaults(handler=handler)


def run(args: argparse.Namespace, pm: pluggy.PluginManager, console: Console) -> int:
    device, _, point = args.ref.partition("/")
    if args.start and args.end and args.end <= args.start:
        raise ConvergeError("--to must be after --from")
    resolver = principals_of(args, pm)
    question = Question(
        principal_of(args), "read", [device], [point] if point else None, args.start, args.end
    )
    trust = verifying_trust_of(args, pm)
    with Store.open_existing(args.db) as store:
        with store.reading() as conn:
            decision = ask(conn, resolver, question)
        record(store, decision)  # before anything is read, allowed or not
        span = Range(
            instant(args.start) if args.start else None, instant(args.end) if args.end else None
        )
        with store.reading() as conn:
            if args.format == "csv":
                with collector_paused():
                    sys.stdout.writelines(csv_chunks(conn, decision, span, trust, apart=True))
            else:
                render(console, args.format, records(conn, decision, span, trust))
    return refused(decision)


def refused(decision: Decision) -> int:
    """Say on standard error why each denied point was refused; 3 if any was, else 0."""
    if not decision.points:
        print(
            f"converge: refused: no plan names device {decision.request.targets or '?'}",
            file=sys.stderr,
        )
        return 3
    for point in decision.denied:
        said = f"{decision.request.principal} may not read {point.device}/{point.point}"
        print(
            f"converge: refused: {printable(said)}: {printable(point.reason)}"
            f" (decision {decision.id})",
            file=sys.stderr,
        )
    return 3 if decision.denied else 0


def render(console: Console, form: str, rows: Iterable[dict[str, Any]]) -> None:
    """JSON Lines or a table (CSV is written by :func:`~engine.access.data.csv_chunks`)."""
    if form == "json":
        for row in rows:
            sys.stdout.write(json.dumps(row, ensure_ascii=False) + "\n")
    else:
        table = Table(title_justify="left")
        for column in ("time", "point", "value", "quality / reason", "batch", "verified"):
            table.add_column(column)
        for row in rows:
            said = row["quality"] if row["type"] == "reading" else f"gap: {row['reason']}"
            table.add_row(
                markup_safe(row["time"]),
                markup_safe(row["point"]),
                markup_safe(str(row["value"])),
                markup_safe(str(said)),
                str(row["batch"]),
                _verdict(row["batch_verified"]),
            )
        console.print(table)


def _verdict(verified: bool | None) -> str:
    return "" if verified is None else "true" if verified else "false"
