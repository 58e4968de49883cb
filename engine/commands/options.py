"""Argument pieces several commands share: inputs, key folders, the store, argparse types."""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable
from datetime import date, timedelta
from pathlib import Path
from typing import TypeAlias

import pluggy
from rich.console import Console

from engine.audit import DEFAULT_AUDIT_KEY
from engine.compile import Compilation, Inputs, compile_project
from engine.durations import parse_duration
from engine.errors import FindingsError
from engine.keys import KeyStore, open_key_store

Subparsers: TypeAlias = "argparse._SubParsersAction[argparse.ArgumentParser]"
Handler: TypeAlias = Callable[[argparse.Namespace, pluggy.PluginManager, Console], int]

PIPE_WIDTH = 120
"""Columns for tables when output goes to a file or a pipe (rich would assume 80)."""

KEYS_ENV = "CONVERGE_KEYS"
"""Environment variable naming the key folder when --keys is not given."""


def add_inputs(parser: argparse.ArgumentParser) -> None:
    """The arguments every compiling command takes."""
    parser.add_argument(
        "-p",
        "--policies",
        action="extend",
        nargs="+",
        type=Path,
        default=[],
        metavar="PATH",
        help="policy files or folders (searched for *.yaml)",
    )
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
    folder = args.keys or Path(os.environ.get(KEYS_ENV) or "keys")
    return open_key_store(pm, {"kind": "file", "path": folder})


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
