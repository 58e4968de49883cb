"""``converge export``: an auditor's bundle of the evidence one principal may export.

The guard decides first (``access.export`` grants only), and the decision is an
audit entry whether it allows or denies; the bundle (docs/bundle.md) holds the
allowed points' records with everything that proves them, a report and
``verify.py``. Exit 0 when everything asked was exported, 3 when some or all
of it was refused (what was allowed is still written).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Mapping
from functools import partial
from pathlib import Path

import pluggy
from rich.console import Console

from engine.access import Question, Range, ask
from engine.access.guard import Decision
from engine.commands.options import (
    KEYS_ENV,
    Handler,
    Subparsers,
    add_as,
    add_audit_key,
    add_db,
    add_principals,
    add_range,
    key_folder,
    key_store_of,
    principal_of,
    principals_of,
)
from engine.compile.load import load_text
from engine.errors import ConvergeError, FindingsError
from engine.export import Target, export
from engine.principals import PrincipalResolver
from engine.report import Checking, render
from engine.sign.leaf import instant
from engine.store import data
from engine.store.store import Store
from engine.verify.trust import Trust


def register(commands: Subparsers) -> None:
    parser = commands.add_parser("export", help="an auditor's bundle of the evidence")
    add_db(parser)
    add_principals(parser)
    add_as(parser)
    add_scope(parser)
    parser.add_argument(
        "--keys",
        type=Path,
        metavar="DIR",
        help=f"the key folder with the log's key (default: ${KEYS_ENV}, else ./keys)",
    )
    add_audit_key(parser)
    parser.add_argument(
        "--plan-key",
        action="append",
        default=[],
        metavar="KEY",
        help="a key that signs plans, named so in the bundle's keys.json (repeat for more)",
    )
    parser.add_argument(
        "--sources",
        type=Path,
        default=Path("."),
        metavar="DIR",
        help="the folder the plans were compiled in, to carry their policy and site files"
        " (default: the current folder)",
    )
    parser.add_argument("-o", "--out", type=Path, required=True, metavar="FILE.zip")
    handler: Handler = run
    parser.set_defaults(handler=handler)


def add_scope(parser: argparse.ArgumentParser) -> None:
    """What an export (or a report) asks for: devices, points and a range."""
    parser.add_argument(
        "--device",
        action="append",
        default=[],
        metavar="ID",
        help="only this device (repeat for more; default: every device)",
    )
    parser.add_argument(
        "--point",
        action="append",
        default=[],
        metavar="NAME",
        help="only this point of each device (repeat for more)",
    )
    add_range(parser)


def run(args: argparse.Namespace, pm: pluggy.PluginManager, console: Console) -> int:
    if args.start and args.end and args.end <= args.start:
        raise ConvergeError("--to must be after --from")
    resolver, keys = principals_of(args, pm), key_store_of(args, pm)
    span = Range(
        instant(args.start) if args.start else None, instant(args.end) if args.end else None
    )
    folder = f"the exporter's key folder {key_folder(args)}"
    checking = Checking(Trust.from_key_store(keys), folder, args.audit_key)
    with Store.open_existing(args.db) as store:
        store.audit_key = args.audit_key
        decision = decide(store, resolver, args)
        report = partial(render, checking=checking)
        target = Target(
            args.out,
            report,
            tuple(args.plan_key),
            args.sources,
            parallel=True,
            controls=controls_of,
        )
        done = export(store, decision, span, keys, target)
    for path, why in done.left_out:
        print(f"converge: source {path} is not in the bundle: {why}", file=sys.stderr)
    console.print(
        f"exported {done.records:,} records of {done.batches} batch"
        f"{'' if done.batches == 1 else 'es'} to {args.out} "
        f"(decision {decision.id})",
        highlight=False,
    )
    return refused(decision)


def controls_of(carried: Mapping[str, bytes]) -> dict[str, tuple[str, ...]]:
    """Each policy's controls, read from the source files a bundle carries (path: bytes), so
    that its report names the controls each policy cites. A file that is not a policy, or does
    not load, names none."""
    found: dict[str, tuple[str, ...]] = {}
    for path, raw in sorted(carried.items()):
        try:
            said = load_text(raw, path).data
        except FindingsError:
            continue
        if isinstance(said, dict) and isinstance(said.get("policy"), str):
            cited = said.get("controls") or []
            found[said["policy"]] = tuple(str(c) for c in cited) if isinstance(cited, list) else ()
    return found


def refused(decision: Decision) -> int:
    """Say on standard error why each denied point was refused; 3 if any was, else 0."""
    for point in decision.denied:
        print(
            f"converge: refused: {decision.request.principal} may not export {point.device}/"
            f"{point.point}: {point.reason}",
            file=sys.stderr,
        )
    return 3 if decision.denied else 0


def decide(store: Store, resolver: PrincipalResolver, args: argparse.Namespace) -> Decision:
    """One export decision over every point asked: each device's points (or its ``--point``
    ones)."""
    with store.reading() as conn:
        devices = args.device or data.devices(conn)
        question = Question(
            principal_of(args), "export", devices, args.point or None, args.start, args.end
        )
        return ask(conn, resolver, question)
