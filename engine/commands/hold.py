"""``converge hold``: place, release and list legal holds.

A hold suspends the deletion of what it covers, whatever the policies say
(docs/retention.md). The guard decides who may place or release one
(``access.hold`` on every point it covers), the decision is an audit entry,
and so are the placing and the releasing; a hold is never deleted.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

import pluggy
from rich.console import Console

from engine.commands.options import (
    Handler,
    Subparsers,
    add_as,
    add_db,
    add_principals,
    add_range,
    add_signing,
    key_store_of,
    principal_of,
    principals_of,
)
from engine.commands.terminal import markup_safe
from engine.errors import ConvergeError
from engine.retention.holds import place, release
from engine.sign.leaf import instant
from engine.store import auditlog
from engine.store.retention import Hold, Scope
from engine.store.store import Store
from engine.verify.retention import HOLD_KINDS, HoldBook


def register(commands: Subparsers) -> None:
    parser = commands.add_parser("hold", help="place, release and list legal holds")
    actions = parser.add_subparsers(dest="hold_command", required=True, metavar="ACTION")
    add = actions.add_parser("add", help="place a legal hold; prints its id")
    _common(add)
    add.add_argument(
        "--device",
        action="append",
        default=[],
        metavar="ID",
        help="hold this device's data (repeat for more; default: every device)",
    )
    add.add_argument(
        "--point",
        action="append",
        default=[],
        metavar="GLOB",
        help="only points whose name matches (repeat for more; default: every point)",
    )
    add_range(add)
    gone = actions.add_parser("release", help="release a legal hold")
    gone.add_argument("id", type=int, metavar="ID")
    _common(gone)
    listing = actions.add_parser("list", help="every hold, in force or released")
    add_db(listing)
    listing.add_argument("--format", choices=("text", "json"), default="text")
    handler: Handler = run
    parser.set_defaults(handler=handler)


def _common(parser: argparse.ArgumentParser) -> None:
    add_db(parser)
    add_principals(parser)
    add_as(parser)
    add_signing(parser, "the hold's entries with a checkpoint")
    parser.add_argument("--reason", required=True, metavar="TEXT", help="why (in the log)")


def run(args: argparse.Namespace, pm: pluggy.PluginManager, console: Console) -> int:
    if args.hold_command == "list":
        return run_list(args, console)
    if not args.reason.strip():
        raise ConvergeError("--reason must say why: it is kept in the audit log")
    resolver = principals_of(args, pm)
    keys = key_store_of(args, pm)
    with Store.open_existing(args.db) as store:
        store.audit_key, store.witness = args.audit_key, args.witness
        if args.hold_command == "release":
            was = release(store, resolver, principal_of(args), args.id, args.reason, keys=keys)
            console.print(
                f"released hold {was.id} ({markup_safe(describe(was.scope))})", highlight=False
            )
            return 0
        scope = _scope(args)
        placed = place(store, resolver, principal_of(args), scope, args.reason, keys=keys)
    if placed.deleted_before:
        seqs = ", ".join(str(s) for s in placed.deleted_before[:10])
        print(
            f"converge: note: records the hold covers were deleted before it was placed, by "
            f"deletion receipts (audit entries {seqs}); a hold cannot bring them back",
            file=sys.stderr,
        )
    console.print(
        f"placed hold {placed.id}: {markup_safe(describe(scope))} (decision {placed.decision.id})",
        highlight=False,
    )
    print(placed.id)
    return 0


def _scope(args: argparse.Namespace) -> Scope:
    if args.start and args.end and args.end <= args.start:
        raise ConvergeError("--to must be after --from")
    return Scope(
        tuple(dict.fromkeys(args.device)),
        tuple(dict.fromkeys(args.point)),
        instant(args.start) if args.start else None,
        instant(args.end) if args.end else None,
    )


def describe(scope: Scope) -> str:
    """``reactor-1-plc, points TT*, from … to …`` for people."""
    devices = ", ".join(scope.devices) or "every device"
    points = f"points {', '.join(scope.points)}" if scope.points else "every point"
    since = f"from {scope.start}" if scope.start else "from the first record"
    until = f"to {scope.end}" if scope.end else "without end"
    return f"{devices}, {points}, {since} {until}"


def run_list(args: argparse.Namespace, console: Console) -> int:
    """Every hold as the audit log states it (its ``hold.placed`` and ``hold.released``
    entries, signed or in the unsigned tail, taken as written: a retention run reads them
    only once the store verifies, and ``audit verify`` judges each entry and compares the
    holds' rows with them), with the (device, point) pairs it covers."""
    with Store.open_existing(args.db) as store, store.reading() as conn:
        book = HoldBook()
        book.read(auditlog.entries(conn, sorted(HOLD_KINDS)))
    found = sorted(book.holds.values(), key=lambda hold: hold.id)
    if args.format == "json":
        print(json.dumps([hold_json(h) for h in found], indent=2))
        return 0
    for hold in found:
        state = (
            "[green]in force[/]"
            if hold.in_force
            else f"released by {markup_safe(str(hold.released_by))} at {hold.released_at}"
            f" ({markup_safe(str(hold.release_reason))})"
        )
        console.print(
            f"hold {hold.id}: {state}; {markup_safe(describe(hold.scope))}"
            f" ({markup_safe(covered(hold.scope))}); placed by {markup_safe(hold.placed_by)}"
            f" at {hold.placed_at}: {markup_safe(hold.reason)}",
            highlight=False,
        )
    if not found:
        console.print("no holds")
    return 0


SHOWN_PAIRS = 6
"""How many of the pairs a hold covers its line names; ``--format json`` gives them all."""


def covered(scope: Scope) -> str:
    """``covers 2 points: line-b/R1, line-b/R2`` for people (the first few)."""
    if scope.held is None:
        return "the pairs it covers not stated"
    pairs = [f"{device}/{point}" for device, point in sorted(scope.held)]
    named = ", ".join(pairs[:SHOWN_PAIRS]) + (" …" if len(pairs) > SHOWN_PAIRS else "")
    return f"covers {len(pairs)} point{'' if len(pairs) == 1 else 's'}: {named or 'none'}"


def hold_json(hold: Hold) -> dict[str, Any]:
    return {
        "id": hold.id,
        "in_force": hold.in_force,
        **hold.scope.as_json(),
        "held": None if hold.scope.held is None else hold.scope.held_json(),
        "reason": hold.reason,
        "placed_by": hold.placed_by,
        "placed_at": hold.placed_at,
        "placed_entry": hold.placed_seq,
        "released_by": hold.released_by,
        "released_at": hold.released_at,
        "release_reason": hold.release_reason,
        "released_entry": hold.released_seq,
    }
