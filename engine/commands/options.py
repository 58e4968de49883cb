"""Argument pieces several commands share: inputs, key folders, the store, argparse types."""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import TypeAlias

import pluggy
from rich.console import Console

from engine.audit import DEFAULT_AUDIT_KEY
from engine.compile import Compilation, Inputs, compile_project
from engine.durations import parse_duration
from engine.errors import ConvergeError, FindingsError
from engine.keys import KeyStore, open_key_store
from engine.principals import PrincipalResolver, open_principals
from engine.transport import BrokerOptions
from engine.verify.trust import Trust

Subparsers: TypeAlias = "argparse._SubParsersAction[argparse.ArgumentParser]"
Handler: TypeAlias = Callable[[argparse.Namespace, pluggy.PluginManager, Console], int]

PIPE_WIDTH = 120
"""Columns for tables when output goes to a file or a pipe (rich would assume 80)."""

KEYS_ENV = "CONVERGE_KEYS"
"""Environment variable naming the key folder when --keys is not given."""


def add_inputs(parser: argparse.ArgumentParser) -> None:
    """The arguments every compiling command takes."""
    add_policies(parser, "policy files or folders (searched for *.yaml)")
    parser.add_argument(
        "-s",
        "--site",
        action="extend",
        nargs="+",
        type=Path,
        default=[],
        metavar="PATH",
        dest="sites",
        help="site.yaml files or site folders (principals.yaml beside is read)",
    )
    parser.add_argument(
        "--principals",
        action="extend",
        nargs="+",
        type=Path,
        default=[],
        metavar="FILE",
        help="more principals files",
    )
    parser.add_argument(
        "--at",
        type=date.fromisoformat,
        metavar="YYYY-MM-DD",
        help="the date exceptions are judged at (default: today, site time)",
    )
    parser.add_argument(
        "--keys",
        type=Path,
        metavar="DIR",
        help=f"check signing.keys against this key folder "
        f"(default: ${KEYS_ENV} when set; otherwise not checked)",
    )


def add_policies(parser: argparse.ArgumentParser, help: str) -> None:
    """``-p PATH…``: policy files or folders."""
    parser.add_argument(
        "-p",
        "--policies",
        action="extend",
        nargs="+",
        type=Path,
        default=[],
        metavar="PATH",
        help=help,
    )


def inputs_of(args: argparse.Namespace, pm: pluggy.PluginManager) -> Inputs:
    return Inputs(args.policies, args.sites, args.principals, args.at, compile_key_store(args, pm))


def compile_key_store(args: argparse.Namespace, pm: pluggy.PluginManager) -> KeyStore | None:
    """The key store whose names ``signing.keys`` is checked against, when one is given."""
    folder = args.keys or (Path(os.environ[KEYS_ENV]) if os.environ.get(KEYS_ENV) else None)
    return open_key_store(pm, {"kind": "file", "path": folder}) if folder else None


def compile_or_fail(args: argparse.Namespace, pm: pluggy.PluginManager) -> Compilation:
    """Compile; raise :class:`FindingsError` (printed with every finding) on any error."""
    result = compile_project(inputs_of(args, pm), pm)
    if not result.ok:
        raise FindingsError(result.findings)
    return result


def key_store_of(args: argparse.Namespace, pm: pluggy.PluginManager) -> KeyStore:
    """The key folder of ``--keys``, else ``$CONVERGE_KEYS``, else ``./keys``."""
    return open_key_store(pm, {"kind": "file", "path": key_folder(args)})


def key_folder(args: argparse.Namespace) -> Path:
    """The folder ``--keys`` names, else ``$CONVERGE_KEYS``, else ``./keys``."""
    return Path(args.keys or os.environ.get(KEYS_ENV) or "keys")


def add_db(
    parser: argparse.ArgumentParser | argparse._ArgumentGroup, required: bool = True
) -> None:
    parser.add_argument(
        "--db",
        required=required,
        metavar="URL",
        help="the evidence store: a SQLite file path, or a database URL such "
        "as postgresql://user@host/db",
    )


def add_audit_key(parser: argparse.ArgumentParser | argparse._ArgumentGroup) -> None:
    parser.add_argument(
        "--audit-key",
        default=DEFAULT_AUDIT_KEY,
        metavar="KEY",
        help=f"the key that signs the audit log's checkpoints; one log has one key, named "
        f"in the log when it is made (default: {DEFAULT_AUDIT_KEY})",
    )


def add_signing(parser: argparse.ArgumentParser, what: str) -> None:
    """``--keys``, ``--audit-key`` and ``--witness`` of a command that signs the checkpoint of
    what it writes (``what``: what the log's key signs, said in ``--keys``' help)."""
    parser.add_argument(
        "--keys",
        type=Path,
        metavar="DIR",
        help=f"the key folder: the log's key signs {what} (default: ${KEYS_ENV}, else ./keys)",
    )
    add_audit_key(parser)
    parser.add_argument(
        "--witness",
        type=Path,
        metavar="FILE",
        help="append the checkpoints it signs here too (as converge run --witness)",
    )


def seconds(text: str) -> float:
    """An argparse type: a duration (``30s``, ``2m``) in seconds."""
    try:
        return parse_duration(text) / 1000
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc


def period(text: str) -> timedelta:
    """An argparse type: a positive duration (``90d``, ``2y``) as a timedelta."""
    try:
        ms = parse_duration(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc
    if ms == 0:
        raise argparse.ArgumentTypeError("a validity period must be longer than 0")
    return timedelta(milliseconds=ms)


_UNITS = {"": 1, "B": 1, "KIB": 1 << 10, "MIB": 1 << 20, "GIB": 1 << 30, "TIB": 1 << 40}


def size(text: str) -> int:
    """An argparse type: a size in bytes, such as ``512MiB`` or ``2GiB``."""
    number = text.rstrip("BbKkMmGgTtIi")
    unit = text[len(number) :].upper()
    if not number.isdigit() or unit not in _UNITS or int(number) == 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a size such as 512MiB or 2GiB")
    return int(number) * _UNITS[unit]


# --- who acts ---------------------------------------------------------------------------

PRINCIPALS_ENV = "CONVERGE_PRINCIPALS"
"""Environment variable naming the principals file when --principals is not given."""
AS_ENV = "CONVERGE_AS"
"""Environment variable naming the principal to act as when --as is not given."""


def add_principals(parser: argparse.ArgumentParser | argparse._ArgumentGroup) -> None:
    parser.add_argument(
        "--principals",
        type=Path,
        metavar="FILE",
        help=f"the principals file: who holds which roles (default: ${PRINCIPALS_ENV})",
    )


def add_as(parser: argparse.ArgumentParser | argparse._ArgumentGroup) -> None:
    parser.add_argument(
        "--as",
        dest="principal",
        metavar="PRINCIPAL",
        help=f"the principal acting (default: ${AS_ENV}); its entry's os_users, when it lists "
        "any, are the only operating-system accounts that may act as it",
    )


def principals_of(args: argparse.Namespace, pm: pluggy.PluginManager) -> PrincipalResolver:
    """The principals of ``--principals`` (or the environment); a refusal when none is named."""
    return open_principals(pm, {"kind": "file", "path": principals_path(args)})


def principals_path(args: argparse.Namespace) -> Path:
    """The principals file ``--principals`` (or the environment) names; a refusal when none is
    named."""
    path: Path | None = args.principals or (
        Path(os.environ[PRINCIPALS_ENV]) if os.environ.get(PRINCIPALS_ENV) else None
    )
    if path is None:
        raise ConvergeError(f"name the principals file: --principals FILE (or ${PRINCIPALS_ENV})")
    return path


def principal_of(args: argparse.Namespace) -> str:
    """The principal of ``--as`` (or the environment); a refusal when none is named."""
    name = args.principal or os.environ.get(AS_ENV)
    if not name:
        raise ConvergeError(f"say who acts: --as PRINCIPAL (or ${AS_ENV})")
    return str(name)


# --- trusted public keys ----------------------------------------------------------------


def add_trust(parser: argparse.ArgumentParser) -> None:
    trust = parser.add_mutually_exclusive_group()
    trust.add_argument(
        "--keys",
        type=Path,
        metavar="DIR",
        help=f"trust the public keys of this key folder (default: ${KEYS_ENV}, else ./keys)",
    )
    trust.add_argument(
        "--public-keys",
        type=Path,
        nargs="+",
        metavar="FILE",
        help="trust these exports of converge keys export-public --format json",
    )


def trust_of(args: argparse.Namespace, pm: pluggy.PluginManager) -> Trust:
    """The public keys ``--keys`` or ``--public-keys`` name (default: the key folder)."""
    if args.public_keys:
        return Trust.from_json(args.public_keys)
    return Trust.from_key_store(key_store_of(args, pm))


def verifying_trust_of(args: argparse.Namespace, pm: pluggy.PluginManager) -> Trust:
    """:func:`trust_of` for a command whose verdict rests on it: a key folder that is not
    there, or holds no key, is an error, since trusting no key would fail every signature of
    a sound store as if it had been forged."""
    trust = trust_of(args, pm)
    if any(trust.keys.values()):
        return trust
    if args.public_keys:
        raise ConvergeError(
            f"{', '.join(map(str, args.public_keys))}: no public key to trust in it: give"
            " exports of converge keys export-public --format json"
        )
    folder = key_folder(args)
    said = "is not there" if not folder.is_dir() else "holds no key"
    raise ConvergeError(
        f"the key folder {folder} {said}: name the keys to trust with --keys DIR (or"
        f" ${KEYS_ENV}) or --public-keys FILE"
    )


def moment(text: str) -> datetime:
    """An argparse type: an RFC 3339 instant (``2026-06-01T12:00:00Z``) or a date (its
    midnight, UTC)."""
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a time such as 2026-06-01T12:00:00Z or 2026-06-01"
        ) from None
    if len(text) == 10:
        return parsed.replace(tzinfo=UTC)
    if parsed.tzinfo is None:
        raise argparse.ArgumentTypeError(f"{text!r} has no time zone: add Z or +01:00")
    return parsed.astimezone(UTC)


def add_range(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--from",
        dest="start",
        type=moment,
        metavar="TIME",
        help="from this instant (included): 2026-06-01T12:00:00Z or 2026-06-01",
    )
    parser.add_argument(
        "--to", dest="end", type=moment, metavar="TIME", help="to this instant (excluded)"
    )


# --- the broker between sites and the centre (scale-out) ------------------------------

BROKER_PASSWORD_ENV = "CONVERGE_BROKER_PASSWORD"
"""Environment variable holding the broker password (never on the command line)."""


def add_broker(parser: argparse.ArgumentParser | argparse._ArgumentGroup) -> None:
    """How to reach the broker beyond its URL: its CA, the user name (the password comes from
    the environment)."""
    parser.add_argument(
        "--broker-ca",
        metavar="FILE",
        help="the CA certificate that signs an mqtts:// broker's certificate (default: the "
        "system's)",
    )
    parser.add_argument(
        "--broker-user",
        metavar="NAME",
        help=f"the broker user name (or in the URL); the password comes from "
        f"${BROKER_PASSWORD_ENV}",
    )


def broker_options(args: argparse.Namespace, max_message: int | None = None) -> BrokerOptions:
    return BrokerOptions(
        args.broker_ca,
        args.broker_user,
        os.environ.get(BROKER_PASSWORD_ENV) or None,
        max_message or BrokerOptions.max_message,
    )
