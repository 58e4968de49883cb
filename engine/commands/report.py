"""``converge report``: the report page an auditor's bundle carries, on its own.

A report is a read of summaries of the evidence a principal may export, so
the guard decides it as an export (``access.export`` grants only), and the
decision is an ``access.decision`` audit entry whether it allows or denies.
The page covers the allowed points; the store is verified with the trusted
keys as it is made. Exit 0 when everything asked was allowed, 3 when some or
all of it was refused (nothing is written when all of it was).
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

import pluggy
from rich.console import Console

from engine.access import record
from engine.access.guard import Decision
from engine.commands.export import add_scope, decide, refused
from engine.commands.options import (
    Handler,
    Subparsers,
    add_as,
    add_audit_key,
    add_db,
    add_policies,
    add_principals,
    add_trust,
    key_folder,
    principals_of,
    verifying_trust_of,
)
from engine.compile import Inputs, compile_project
from engine.errors import AccessDenied, ConvergeError, FindingsError
from engine.report import Checking, render
from engine.store.store import Store


def register(commands: Subparsers) -> None:
    parser = commands.add_parser("report", help="the evidence report (report.html) on its own")
    add_db(parser)
    add_principals(parser)
    add_as(parser)
    add_scope(parser)
    add_trust(parser)
    add_audit_key(parser)
    parser.add_argument(
        "--witness",
        type=Path,
        metavar="FILE",
        help="checkpoints kept outside the store, checked by the verification as by audit verify",
    )
    add_policies(
        parser,
        "policy files or folders: the report lists the controls each policy cites "
        "(plans name their policies, not the controls)",
    )
    parser.add_argument("-o", "--out", type=Path, required=True, metavar="FILE.html")
    handler: Handler = run
    parser.set_defaults(handler=handler)


def run(args: argparse.Namespace, pm: pluggy.PluginManager, console: Console) -> int:
    if args.start and args.end and args.end <= args.start:
        raise ConvergeError("--to must be after --from")
    resolver = principals_of(args, pm)
    checking = Checking(verifying_trust_of(args, pm), _source(args), args.audit_key, args.witness)
    controls = _controls(args.policies, pm) if args.policies else None
    with Store.open_existing(args.db) as store:
        decision = decide(store, resolver, args)
        record(store, decision)  # before anything is read, allowed or not
        if not decision.allowed:
            raise AccessDenied(_refusal(decision))
        page = render(store, decision, checking, controls)
    args.out.write_bytes(page)
    console.print(f"wrote {args.out} (decision {decision.id})", highlight=False)
    return refused(decision)


def _source(args: argparse.Namespace) -> str:
    """Where the trusted keys came from, in words."""
    if args.public_keys:
        return "the public key files " + ", ".join(str(p) for p in args.public_keys)
    return f"the key folder {key_folder(args)}"


def _controls(paths: Sequence[Path], pm: pluggy.PluginManager) -> dict[str, tuple[str, ...]]:
    """Each policy's controls, from the policy files."""
    result = compile_project(Inputs(paths, []), pm)
    if not result.ok:
        raise FindingsError(result.findings)
    return {p.id: p.controls for p in result.project.policies}


def _refusal(decision: Decision) -> str:
    asked = decision.refusals() or "no point was asked"
    return (
        f"{decision.request.principal} may report on nothing asked ({asked}; "
        f"decision {decision.id})"
    )
