"""``converge access check``: what the guard would decide, and why, without reading data.

It reads no record, so it writes no audit entry. The plans come from a store
(``--db``: the plan in force at ``--at``, default now) or a plan folder
(``--plans``). Exit 0 when allowed, 3 when denied.
"""

from __future__ import annotations

import argparse
import json
import time
from datetime import UTC, datetime
from pathlib import Path

import pluggy
from rich.console import Console

from engine.access.guard import ACTIONS, Decision, Request, Target, decide
from engine.audit import os_user
from engine.commands.options import Handler, Subparsers, add_principals, moment, principals_of
from engine.commands.terminal import markup_safe
from engine.errors import ConvergeError
from engine.plans.body import PlanBody
from engine.plans.folder import load_plans
from engine.sign.leaf import instant
from engine.store import data
from engine.store.store import Store


def register(commands: Subparsers) -> None:
    parser = commands.add_parser("access", help="what the access guard decides, and why")
    actions = parser.add_subparsers(dest="access_command", required=True, metavar="ACTION")
    check = actions.add_parser("check", help="decide one principal's read, export or hold")
    check.add_argument("principal", metavar="PRINCIPAL")
    check.add_argument("action", choices=ACTIONS)
    check.add_argument("ref", metavar="DEVICE/POINT")
    add_principals(check)
    where = check.add_mutually_exclusive_group(required=True)
    where.add_argument("--db", metavar="URL", help="the evidence store whose plans decide")
    where.add_argument("--plans", type=Path, metavar="DIR", help="a plan folder whose plans decide")
    check.add_argument(
        "--at",
        type=moment,
        metavar="TIME",
        help="the plan in force at this time (with --db; default: now)",
    )
    check.add_argument("--format", choices=("text", "json"), default="text")
    handler: Handler = run
    check.set_defaults(handler=handler)


def run(args: argparse.Namespace, pm: pluggy.PluginManager, console: Console) -> int:
    device, _, point = args.ref.partition("/")
    if not point:
        raise ConvergeError(f"{args.ref!r}: name one point, as DEVICE/POINT")
    resolver = principals_of(args, pm)
    plans = _plans(args, device)
    request = Request(
        args.principal,
        resolver.resolve(args.principal),
        os_user(),
        args.action,
        [Target(device, point, plans)],
        principals=resolver.digest,
    )
    decision = decide(request)
    if args.format == "json":
        print(json.dumps(decision.payload(), indent=2))
    else:
        render(console, decision)
    return 0 if decision.outcome == "allow" else 3


def _plans(args: argparse.Namespace, device: str) -> list[PlanBody]:
    if args.plans:
        return [p for p in load_plans(args.plans, time.time()) if p.device.id == device]
    with Store.open_existing(args.db) as store, store.reading() as conn:
        found = data.latest_plan(conn, device, instant(args.at or datetime.now(UTC)))
    return [found] if found is not None else []


def render(console: Console, decision: Decision) -> None:
    """The verdict on one line, then the rule that decided, per plan."""
    r = decision.request
    for point in decision.points:
        verdict = "[green]allowed[/]" if point.allowed else "[red]denied[/]"
        console.print(
            f"{verdict}: {markup_safe(r.principal)} {r.action} "
            f"{markup_safe(point.device)}/{markup_safe(point.point)}",
            highlight=False,
        )
        for rule in point.rules or ():
            console.print(f"  {markup_safe(str(rule))}", highlight=False)
        if not point.rules:
            console.print(f"  {markup_safe(point.reason)}", highlight=False)
