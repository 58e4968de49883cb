"""``converge simulate``: serve a site's points from real local protocol servers."""

from __future__ import annotations

import argparse
import asyncio
from pathlib import Path

import pluggy
from rich.console import Console

from engine.commands.options import Subparsers, seconds
from engine.simulate import serve


def register(commands: Subparsers) -> None:
    parser = commands.add_parser("simulate", help="serve a site's points from local servers")
    parser.add_argument("site", type=Path, metavar="SITE", help="site.yaml or its folder")
    parser.add_argument("--faults", type=Path, metavar="FILE", help="faults to inject on schedule")
    parser.add_argument(
        "--for",
        type=seconds,
        dest="duration",
        metavar="DURATION",
        help="stop after this long (default: until Ctrl-C)",
    )
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace, pm: pluggy.PluginManager, console: Console) -> int:
    asyncio.run(serve(args.site, args.faults, args.duration, pm, console))
    return 0
