"""``converge plan``: compile one canonical plan per device into a folder, signed if asked."""

from __future__ import annotations

import argparse
import json
from datetime import UTC, datetime
from pathlib import Path

import pluggy
from rich.console import Console
from rich.table import Table

from engine.commands.findings import findings_text
from engine.commands.options import KEYS_ENV, Subparsers, add_inputs, compile_or_fail, key_store_of
from engine.compile import Compilation
from engine.plans.folder import write_plans
from engine.plans.signature import PlanSigner, open_signer, rfc3339


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
    parser.add_argument("--format", choices=("text", "json"), default="text")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace, pm: pluggy.PluginManager, console: Console) -> int:
    result = compile_or_fail(args, pm)
    # the key is opened before anything is written: a wrong passphrase writes nothing
    signer = (
        open_signer(key_store_of(args, pm), args.sign, datetime.now(UTC)) if args.sign else None
    )
    written = write_plans(args.out, result.plans, result.index(), signer)
    if args.format == "json":
        render_json(result, written)
        return 0
    render(console, result, written)
    if signer is not None:
        render_signer(console, signer)
    return 0


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
