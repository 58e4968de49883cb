"""``converge principals``: bearer tokens for the read API (``converge serve``).

``token`` mints one for a principal of the principals file and prints it once, alone on
its last line; only a salted scrypt hash is kept, with its expiry, in the tokens file
beside the principals file (mode 0600). ``revoke`` forgets one by its id. See
docs/access.md.
"""

from __future__ import annotations

import argparse
from datetime import UTC, datetime, timedelta

import pluggy
from rich.console import Console

from engine.api.tokens import TokenFile, tokens_path
from engine.commands.options import (
    Handler,
    Subparsers,
    add_principals,
    period,
    principals_of,
    principals_path,
)
from engine.errors import ConvergeError

DEFAULT_VALIDITY = timedelta(days=90)


def register(commands: Subparsers) -> None:
    parser = commands.add_parser("principals", help="bearer tokens for the read API")
    actions = parser.add_subparsers(dest="principals_command", required=True, metavar="ACTION")
    token = actions.add_parser("token", help="mint a bearer token for a principal")
    token.add_argument("principal", metavar="PRINCIPAL")
    add_principals(token)
    token.add_argument(
        "--valid-for",
        type=period,
        default=DEFAULT_VALIDITY,
        metavar="DURATION",
        help="how long the token is valid (default: 90d)",
    )
    mint: Handler = run_token
    token.set_defaults(handler=mint)
    revoke = actions.add_parser("revoke", help="forget a bearer token: it is refused from now on")
    revoke.add_argument("token_id", metavar="TOKEN-ID")
    add_principals(revoke)
    forget: Handler = run_revoke
    revoke.set_defaults(handler=forget)


def run_token(args: argparse.Namespace, pm: pluggy.PluginManager, console: Console) -> int:
    path = principals_path(args)
    identity = principals_of(args, pm).resolve(args.principal)
    if identity is None:
        raise ConvergeError(f"principal {args.principal} is not in the principals file {path}")
    tokens = TokenFile(tokens_path(path))
    minted = tokens.mint(identity.id, args.valid_for, datetime.now(UTC))
    print(
        f"token {minted.stored.id} for {identity.id} ({identity.printed_name}),"
        f" valid until {minted.stored.expires}"
    )
    print(f"kept as a salted scrypt hash in {tokens.path}; the token is shown this once:")
    print(minted.text)
    return 0


def run_revoke(args: argparse.Namespace, pm: pluggy.PluginManager, console: Console) -> int:
    tokens = TokenFile(tokens_path(principals_path(args)))
    stored = tokens.revoke(args.token_id)
    print(f"revoked token {stored.id} of {stored.principal}: it is refused from now on")
    return 0
