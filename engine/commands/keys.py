"""``converge keys``: generate, list, export and rotate signing keys."""

from __future__ import annotations

import argparse
import json
import sys
from datetime import UTC, datetime
from pathlib import Path

import pluggy
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from rich.console import Console
from rich.markup import escape

from engine.audit import Actor, seal_with
from engine.commands.options import (
    KEYS_ENV,
    Handler,
    Subparsers,
    add_audit_key,
    add_db,
    key_store_of,
    period,
)
from engine.errors import KeyStoreError
from engine.keys import KeyStore, KeyVersion
from engine.store.store import Store


def register(commands: Subparsers) -> None:
    parser = commands.add_parser("keys", help="generate, list, export and rotate signing keys")
    actions = parser.add_subparsers(dest="keys_command", required=True, metavar="ACTION")
    store = argparse.ArgumentParser(add_help=False)
    store.add_argument(
        "--keys", type=Path, metavar="DIR", help=f"key folder (default: ${KEYS_ENV}, else ./keys)"
    )
    for add in (_add_generate, _add_list, _add_export, _add_rotate):
        add(actions, store)
    parser.set_defaults(handler=run)


def _add_generate(actions: Subparsers, store: argparse.ArgumentParser) -> None:
    generate = actions.add_parser("generate", parents=[store], help="make a new key")
    generate.add_argument("name", metavar="NAME", help="kebab-case id, as signing.keys names it")
    generate.add_argument(
        "--valid-for",
        type=period,
        metavar="DURATION",
        help="validity of each version (default: until rotated)",
    )
    add_db(generate, required=False)
    add_audit_key(generate)


def _add_list(actions: Subparsers, store: argparse.ArgumentParser) -> None:
    listing = actions.add_parser("list", parents=[store], help="every key version and its validity")
    listing.add_argument("--format", choices=("text", "json"), default="text")


def _add_export(actions: Subparsers, store: argparse.ArgumentParser) -> None:
    export = actions.add_parser(
        "export-public", parents=[store], help="print the public keys of every version of a key"
    )
    export.add_argument("name", metavar="NAME")
    export.add_argument("--format", choices=("signed-note", "pem", "json"), default="signed-note")


def _add_rotate(actions: Subparsers, store: argparse.ArgumentParser) -> None:
    rotate = actions.add_parser(
        "rotate", parents=[store], help="retire the current version now and make the next one"
    )
    rotate.add_argument("name", metavar="NAME")
    rotate.add_argument(
        "--valid-for",
        type=period,
        metavar="DURATION",
        help="validity of the new version (default: the key's period)",
    )
    add_db(rotate, required=False)
    add_audit_key(rotate)


def run(args: argparse.Namespace, pm: pluggy.PluginManager, console: Console) -> int:
    return ACTIONS[args.keys_command](args, pm, console)


def run_generate(args: argparse.Namespace, pm: pluggy.PluginManager, console: Console) -> int:
    keys = key_store_of(args, pm)
    made = keys.generate(args.name, args.valid_for)
    render(console, [made], datetime.now(UTC), title=f"generated {made.name}")
    log_key_versions(args, keys, keys.versions(args.name))
    return 0


def run_rotate(args: argparse.Namespace, pm: pluggy.PluginManager, console: Console) -> int:
    keys = key_store_of(args, pm)
    keys.rotate(args.name, args.valid_for)
    render(console, keys.versions(args.name), datetime.now(UTC), title=f"rotated {args.name}")
    log_key_versions(args, keys, keys.versions(args.name))
    return 0


def log_key_versions(args: argparse.Namespace, keys: KeyStore, versions: list[KeyVersion]) -> None:
    """With ``--db``, the key event is an audit entry now, not at the next collector start,
    with a checkpoint after it when the audit key is in the same key folder."""
    if not args.db:
        return
    actor = Actor.job("keys")
    seal = (
        seal_with(keys, args.audit_key, datetime.now(UTC))
        if args.audit_key in keys.names()
        else None
    )
    with Store.open(args.db, actor=actor, audit_key=args.audit_key) as store:
        store.record_keys(versions, seal)


def run_list(args: argparse.Namespace, pm: pluggy.PluginManager, console: Console) -> int:
    store = key_store_of(args, pm)
    versions = [v for name in store.names() for v in store.versions(name)]
    if args.format == "json":
        print(json.dumps([v.as_dict() for v in versions], indent=2))
    else:
        render(console, versions, datetime.now(UTC))
    return 0


def run_export(args: argparse.Namespace, pm: pluggy.PluginManager, console: Console) -> int:
    sys.stdout.write(export_public(key_store_of(args, pm).versions(args.name), args.format))
    return 0


ACTIONS: dict[str, Handler] = {
    "generate": run_generate,
    "list": run_list,
    "export-public": run_export,
    "rotate": run_rotate,
}


def status(version: KeyVersion, now: datetime) -> str:
    """``current``, ``retired`` (ended by rotation or expiry) or ``not yet valid``, at ``now``."""
    if version.valid_at(now):
        return "current"
    return "not yet valid" if now < version.not_before else "retired"


def render(
    console: Console, versions: list[KeyVersion], now: datetime, title: str | None = None
) -> None:
    """Two lines per version: name, version, status and validity; then both fingerprints,
    whole (a shortened fingerprint invites comparing only its first digits)."""
    if title:
        console.print(f"[bold]{escape(title)}[/]")
    if not versions:
        console.print("no keys")
    colour = {"current": "green", "retired": "yellow", "not yet valid": "cyan"}
    for v in versions:
        state = status(v, now)
        until = _moment(v.not_after) if v.not_after else "until rotated"
        console.print(
            f"{v.name} v{v.version}  [{colour[state]}]{state}[/]  valid"
            f" {_moment(v.not_before)} .. {until}",
            highlight=False,
        )
        console.print(f"  key id {v.key_id}  sha256 {v.sha256}", highlight=False)


def _moment(at: datetime) -> str:
    return at.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%SZ")


def export_public(versions: list[KeyVersion], form: str) -> str:
    """Every version's public key as ``signed-note`` verifier keys, ``pem`` or ``json``.

    Old versions are included on purpose: what they signed while valid must
    still verify, so a verifier needs them all.
    """
    if form == "json":
        return json.dumps([v.as_dict() for v in versions], indent=2) + "\n"
    if form == "pem":
        return "".join(
            v.key.public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo).decode()
            for v in versions
        )
    if form == "signed-note":
        return "".join(f"{v.verifier_key}\n" for v in versions)
    raise KeyStoreError(f"unknown public key format {form!r}: signed-note, pem or json")
