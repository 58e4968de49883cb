"""``converge plan``: compile one canonical plan per device into a folder, signed if asked."""

from __future__ import annotations

import argparse
import json
import socket
from datetime import UTC, datetime
from pathlib import Path

import pluggy
from rich.console import Console
from rich.table import Table

from engine.access.acting import refusal_of
from engine.audit import Actor, os_user
from engine.commands.findings import findings_text
from engine.commands.options import (
    KEYS_ENV,
    Subparsers,
    add_as,
    add_inputs,
    compile_or_fail,
    key_store_of,
    principal_of,
)
from engine.compile import Compilation
from engine.errors import AccessDenied, ConvergeError
from engine.plans.folder import write_plans
from engine.plans.signature import MEANINGS, PlanSigner, Signer, open_signer, rfc3339
from engine.principals import Identity
from engine.store.store import Store


def register(commands: Subparsers) -> None:
    parser = commands.add_parser("plan", help="compile one canonical plan per device")
    add_inputs(parser)
    parser.add_argument(
        "-o",
        "--out",
        type=Path,
        required=True,
        metavar="DIR",
        help="folder for <device>.plan.json files and index.json",
    )
    parser.add_argument(
        "--sign",
        metavar="KEY",
        help="sign every plan with the current version of KEY from the key "
        f"folder (--keys, else ${KEYS_ENV}, else ./keys): <device>.plan.sig",
    )
    add_as(parser)
    parser.add_argument(
        "--meaning",
        choices=MEANINGS,
        help="what your signature means (with --sign; inside the signed bytes, 21 CFR 11.50)",
    )
    parser.add_argument(
        "--db",
        metavar="URL",
        help="with --sign, record each signature in this store's audit log (plan.signed)",
    )
    parser.add_argument("--format", choices=("text", "json"), default="text")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace, pm: pluggy.PluginManager, console: Console) -> int:
    result = compile_or_fail(args, pm)
    # the key is opened before anything is written: a wrong passphrase writes nothing
    signer = _signer(args, pm, result) if args.sign else None
    written = write_plans(args.out, result.plans, result.index(), signer)
    if signer is not None and args.db:
        _record(args.db, result, signer)
    if args.format == "json":
        render_json(result, written)
        return 0
    render(console, result, written)
    if signer is not None:
        render_signer(console, signer)
    return 0


def _signer(args: argparse.Namespace, pm: pluggy.PluginManager, result: Compilation) -> PlanSigner:
    """The plans' signer: the principal ``--as`` names (one of the compilation's principals,
    acting from an account it allows), the meaning, and the key's version valid now."""
    if not args.meaning:
        raise ConvergeError(
            "a signature says what it means: --meaning approved, reviewed or authored"
        )
    principal = principal_of(args)
    found = {p.id: p for p in result.project.principals}.get(principal)
    identity = (
        None
        if found is None
        else Identity(found.id, found.kind, frozenset(found.roles), found.name, found.os_users)
    )
    refusal = refusal_of(principal, identity, os_user())
    if refusal is not None or identity is None:
        raise AccessDenied(refusal or f"principal {principal} is unknown")
    who = Signer(identity.id, identity.printed_name, args.meaning)
    return open_signer(key_store_of(args, pm), args.sign, datetime.now(UTC), who)


def _record(db: str, result: Compilation, signer: PlanSigner) -> None:
    """A ``plan.signed`` entry per plan, by the signer, in the store ``--db`` names."""
    s = signer.signer
    actor = Actor("principal", s.principal, os_user(), socket.gethostname())
    with Store.open(db, actor=actor) as store:
        for plan in result.plans:
            said = {
                "device": plan.device,
                "digest": plan.digest,
                "key": signer.key_name,
                "key_id": signer.version.key_id,
                "signed_at": rfc3339(signer.signed_at),
                "signer": s.principal,
                "name": s.name,
                "meaning": s.meaning,
            }
            store.log("plan.signed", said)


def render_json(result: Compilation, written: list[Path]) -> None:
    """One object per plan on standard output; findings (warnings) on standard error."""
    if result.findings:
        findings_text(Console(stderr=True, soft_wrap=True), result.findings)
    rows = [
        {
            "device": p.device,
            "file": str(path),
            "digest": p.digest,
            "points": p.points,
            "read_groups": p.read_groups,
        }
        for p, path in zip(result.plans, written, strict=True)
    ]
    print(json.dumps(rows, indent=2))


def render(console: Console, result: Compilation, written: list[Path]) -> None:
    """The findings (warnings), then a table of the plans written."""
    if result.findings:
        findings_text(console, result.findings)
    table = Table(title=f"{len(written)} plans", title_justify="left")
    for column in ("device", "points", "read groups", "valid until", "digest"):
        table.add_column(column)
    for plan in result.plans:
        table.add_row(
            plan.device,
            str(plan.points),
            str(plan.read_groups),
            plan.valid_until or "-",
            plan.digest[:19] + "…",
        )
    console.print(table)


def render_signer(console: Console, signer: PlanSigner) -> None:
    version = signer.version
    console.print(
        f"signed with {signer.key_name} v{version.version} (key id "
        f"{version.key_id}) at {rfc3339(signer.signed_at)}",
        highlight=False,
    )
