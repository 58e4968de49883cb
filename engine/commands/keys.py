"""``converge keys``: generate, list, export and rotate signing keys; write a trust file."""

from __future__ import annotations

import argparse
import json
import os
import sys
from datetime import UTC, datetime
from pathlib import Path

import pluggy
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from rich.console import Console
from rich.markup import escape

from engine.access.acting import Refusal, act_as
from engine.audit import ORIGIN_KEY, Actor, origin_key, seal_with
from engine.commands.options import (
    AS_ENV,
    KEYS_ENV,
    Handler,
    Subparsers,
    add_as,
    add_audit_key,
    add_db,
    add_principals,
    key_store_of,
    period,
    principal_of,
    principals_of,
)
from engine.errors import AccessDenied, KeyStoreError
from engine.export.bundle import trust_file
from engine.keys import KeyStore, KeyVersion
from engine.store import reads
from engine.store.store import Store


def register(commands: Subparsers) -> None:
    parser = commands.add_parser(
        "keys", help="generate, list, export and rotate signing keys; write a trust file"
    )
    actions = parser.add_subparsers(dest="keys_command", required=True, metavar="ACTION")
    store = argparse.ArgumentParser(add_help=False)
    store.add_argument(
        "--keys", type=Path, metavar="DIR", help=f"key folder (default: ${KEYS_ENV}, else ./keys)"
    )
    for add in (_add_generate, _add_list, _add_export, _add_rotate, _add_trust):
        add(actions, store)
    parser.set_defaults(handler=run)


def _maker() -> argparse.ArgumentParser:
    """Who makes a version: ``--as PRINCIPAL`` (with ``--principals``), else this account."""
    maker = argparse.ArgumentParser(add_help=False)
    add_principals(maker)
    add_as(maker)
    return maker


def _add_generate(actions: Subparsers, store: argparse.ArgumentParser) -> None:
    generate = actions.add_parser("generate", parents=[store, _maker()], help="make a new key")
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
        "rotate",
        parents=[store, _maker()],
        help="retire the current version now and make the next one",
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


def _add_trust(actions: Subparsers, store: argparse.ArgumentParser) -> None:
    trust = actions.add_parser(
        "trust",
        parents=[store],
        help="a trust file for converge verify: public keys, the store's log and its key",
    )
    add_db(trust)
    trust.add_argument(
        "--plan-key",
        action="append",
        default=[],
        metavar="KEY",
        help="a key that signs plans: the verifier then requires every plan signed by one",
    )
    trust.add_argument(
        "--key",
        action="append",
        default=[],
        metavar="NAME",
        help="only this key's versions, and the log's (repeat; default: every key)",
    )
    trust.add_argument("-o", "--out", type=Path, metavar="FILE", help="default: standard output")


def run(args: argparse.Namespace, pm: pluggy.PluginManager, console: Console) -> int:
    return ACTIONS[args.keys_command](args, pm, console)


def run_generate(args: argparse.Namespace, pm: pluggy.PluginManager, console: Console) -> int:
    keys, maker = key_store_of(args, pm), _made_by(args, pm)
    made = keys.generate(args.name, args.valid_for, maker.as_json())
    render(console, [made], datetime.now(UTC), title=f"generated {made.name}")
    log_key_versions(args, keys, keys.versions(args.name))
    return 0


def run_rotate(args: argparse.Namespace, pm: pluggy.PluginManager, console: Console) -> int:
    keys, maker = key_store_of(args, pm), _made_by(args, pm)
    keys.rotate(args.name, args.valid_for, maker.as_json())
    render(console, keys.versions(args.name), datetime.now(UTC), title=f"rotated {args.name}")
    log_key_versions(args, keys, keys.versions(args.name))
    return 0


def _made_by(args: argparse.Namespace, pm: pluggy.PluginManager) -> Actor:
    """Who the new version is attributed to: the principal ``--as`` names (checked), else a
    job of this account; the key store remembers it, and the audit log names it."""
    if not (args.principal or os.environ.get(AS_ENV)):
        return Actor.job("keys")
    acting = act_as(principals_of(args, pm), principal_of(args), "keys")
    if isinstance(acting, Refusal):
        raise AccessDenied(acting.reason)
    return acting


def log_key_versions(args: argparse.Namespace, keys: KeyStore, versions: list[KeyVersion]) -> None:
    """With ``--db``, the key event is an audit entry now, not at the next collector start,
    with a checkpoint after it when the audit key is in the same key folder."""
    if not args.db:
        return
    actor = Actor.job("keys")  # each entry names its version's maker (Store.record_keys)
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


def run_trust(args: argparse.Namespace, pm: pluggy.PluginManager, console: Console) -> int:
    """The trust file an auditor gives ``converge verify --trust``: the log's origin and key
    come from the store (its first entry named them), the public keys from the key folder."""
    keys = key_store_of(args, pm)
    with Store.open_existing(args.db) as store, store.reading() as conn:
        origin = reads.meta(conn, ORIGIN_KEY)
    log_key = origin_key(origin or "")
    if origin is None or log_key is None:
        raise KeyStoreError(f"{args.db} has no audit log that names its key")
    names = sorted({*(args.key or keys.names()), log_key, *args.plan_key})
    missing = [name for name in names if name not in keys.names()]
    if missing:
        raise KeyStoreError(f"no key {', '.join(missing)} in the key folder")
    text = trust_file(
        [v for name in names for v in keys.versions(name)], {origin: log_key}, args.plan_key
    )
    if args.out is None:
        sys.stdout.write(text.decode() + "\n")
    else:
        args.out.write_bytes(text + b"\n")
    return 0


ACTIONS: dict[str, Handler] = {
    "generate": run_generate,
    "list": run_list,
    "export-public": run_export,
    "rotate": run_rotate,
    "trust": run_trust,
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
