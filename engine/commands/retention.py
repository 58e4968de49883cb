"""``converge retention apply``: delete what expired, with a signed receipt per batch.

A run always uses the clock. It takes the store's retention lock (a second run
at the same time refuses), verifies the store (a store that does not verify
is left untouched), then deletes per batch, receipt and deletion in one
transaction, and signs a checkpoint covering the receipts before it returns
(docs/retention.md). ``--dry-run`` forecasts instead, at ``--at TIME`` if
given, and changes nothing.
"""

from __future__ import annotations

import argparse
import json
import os
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pluggy
from rich.console import Console

from engine.access.acting import Refusal, act_as
from engine.audit import Actor
from engine.commands.options import (
    AS_ENV,
    Handler,
    Subparsers,
    add_db,
    add_principals,
    add_signing,
    key_store_of,
    moment,
    principals_of,
)
from engine.commands.terminal import markup_safe
from engine.errors import AccessDenied, ConvergeError
from engine.retention import Job, Outcome, apply, forecast
from engine.sign.leaf import instant
from engine.store import auditlog
from engine.store.store import Store
from engine.verify.trust import Trust


def register(commands: Subparsers) -> None:
    parser = commands.add_parser("retention", help="apply the plans' retention, with receipts")
    actions = parser.add_subparsers(dest="retention_command", required=True, metavar="ACTION")
    run_parser = actions.add_parser(
        "apply", help="delete (or forecast) what expired, each batch with a signed receipt"
    )
    add_db(run_parser)
    who = run_parser.add_mutually_exclusive_group()
    who.add_argument(
        "--as",
        dest="principal",
        metavar="PRINCIPAL",
        help=f"the principal running it (default: ${AS_ENV}), with --principals",
    )
    who.add_argument(
        "--job", metavar="NAME", help="a named job running it on its own (a scheduler's)"
    )
    add_principals(run_parser)
    run_parser.add_argument(
        "--dry-run", action="store_true", help="only say what would be deleted; change nothing"
    )
    run_parser.add_argument(
        "--at",
        type=moment,
        metavar="TIME",
        help="with --dry-run: forecast what would go at this time (a run always uses the clock)",
    )
    add_signing(run_parser, "each batch's receipt, its public keys verify the store first")
    run_parser.add_argument(
        "--archives",
        type=Path,
        default=Path("archives"),
        metavar="DIR",
        help="where archives are written (on_expiry: archive), as audit bundles "
        "(default: ./archives)",
    )
    run_parser.add_argument("--format", choices=("text", "json"), default="text")
    handler: Handler = run
    parser.set_defaults(handler=handler)


def run(args: argparse.Namespace, pm: pluggy.PluginManager, console: Console) -> int:
    if args.at is not None and not args.dry_run:
        raise ConvergeError(
            "--at is for --dry-run only: a retention run always uses the clock, never a given time"
        )
    with Store.open_existing(args.db) as store:
        store.audit_key, store.witness = args.audit_key, args.witness
        if args.dry_run:
            outcome = forecast(store, args.at or datetime.now(UTC))
        else:
            actor = actor_of(store, args, pm)
            keys = key_store_of(args, pm)
            with store.transaction() as conn:
                auditlog.make(conn, store.audit_key, actor)  # the log is signed by this key
            job = Job(actor, keys, Trust.from_key_store(keys), archives=args.archives)
            outcome = apply(store, job)
    if args.format == "json":
        print(json.dumps(outcome_json(outcome, args.dry_run), indent=2))
    else:
        render(console, outcome, args.dry_run)
    return 0


def actor_of(store: Store, args: argparse.Namespace, pm: pluggy.PluginManager) -> Actor:
    """The job of ``--job``, or the principal of ``--as`` (a refusal recorded, then raised)."""
    if args.job:
        return Actor.job(args.job)
    principal = args.principal or os.environ.get(AS_ENV)
    if not principal:
        raise ConvergeError(f"say who runs it: --as PRINCIPAL (or ${AS_ENV}) or --job NAME")
    acting = act_as(principals_of(args, pm), principal, "retention")
    if isinstance(acting, Refusal):
        store.log("access.decision", acting.payload, actor=acting.actor)
        raise AccessDenied(acting.reason)
    return acting


def outcome_json(outcome: Outcome, dry_run: bool) -> dict[str, Any]:
    return {
        "dry_run": dry_run,
        "run": outcome.run.id,
        "at": instant(outcome.at),
        "records": outcome.records,
        "batches": outcome.batches,
        "receipts": outcome.receipts,
        "checkpoint": outcome.checkpoint,
        "deleted": [
            {"device": d, "point": p, "records": n, "rules": sorted(outcome.rules[d, p])}
            for (d, p), n in sorted(outcome.deleted.items())
        ],
        "kept_by_holds": {str(h): n for h, n in sorted(outcome.kept.items())},
        "held_past_keep_at_most": [
            {"device": d, "point": p, "records": n}
            for (d, p), n in sorted(outcome.held_past.items())
        ],
    }


def render(console: Console, outcome: Outcome, dry_run: bool) -> None:
    """What went (or would go), device by device; what holds keep; what they keep too long."""
    verb = f"would delete at {instant(outcome.at)}" if dry_run else "deleted"
    said = f"{verb} {outcome.records:,} records of {outcome.batches:,} batches"
    if outcome.receipts:
        first, last = outcome.receipts[0], outcome.receipts[-1]
        span = f"{first}" if first == last else f"{first}..{last}"
        said += f", each batch with its receipt (audit entries {span})"
    if outcome.checkpoint is not None:
        said += f"; signed by the checkpoint of size {outcome.checkpoint}"
    console.print(markup_safe(said), highlight=False)
    for device, (n, points, rules) in _by_device(outcome.deleted, outcome.rules).items():
        line = f"  {device}: {n:,} records of {points} point{'s' * (points > 1)} ({rules})"
        console.print(markup_safe(line), highlight=False)
    for hold, n in sorted(outcome.kept.items()):
        console.print(f"kept by hold {hold}: {n:,} expired records", highlight=False)
    for device, (n, points, _) in _by_device(outcome.held_past, {}).items():
        console.print(
            f"[yellow]warning:[/] {markup_safe(device)}: {n:,} records of {points} point"
            f"{'s' * (points > 1)} held past their keep_at_most (a hold keeps them; release it"
            " when it is no longer needed)",
            highlight=False,
        )


def _by_device(
    counts: Counter[tuple[str, str]], rules: dict[tuple[str, str], set[str]]
) -> dict[str, tuple[int, int, str]]:
    """(records, points, how they expired) by device."""
    found: dict[str, tuple[int, int, set[str]]] = {}
    for (device, point), n in sorted(counts.items()):
        records, points, said = found.get(device, (0, 0, set()))
        found[device] = (records + n, points + 1, said | rules.get((device, point), set()))
    return {d: (n, p, "; ".join(sorted(r))) for d, (n, p, r) in found.items()}
