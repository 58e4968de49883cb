"""``converge ingest``: take the sites' batches from the broker into the central store."""

from __future__ import annotations

import argparse
import contextlib
import logging
import signal
import threading
from collections.abc import Iterator
from pathlib import Path
from types import FrameType

import pluggy
from rich.console import Console

from engine.audit import Actor
from engine.central.ingester import IngestConfig, Ingester
from engine.central.trust import SiteTrust
from engine.commands.options import (
    KEYS_ENV,
    Subparsers,
    add_audit_key,
    add_broker,
    add_db,
    broker_options,
    key_store_of,
    seconds,
    size,
)
from engine.store.central import CentralStore
from engine.transport import BrokerOptions, open_transport


def register(commands: Subparsers) -> None:
    parser = commands.add_parser(
        "ingest", help="take the sites' batches from the broker into the central store"
    )
    parser.add_argument(
        "--broker", required=True, metavar="URL", help="the broker: mqtt://host[:port] or mqtts://"
    )
    add_db(parser)
    parser.add_argument(
        "--trust",
        type=Path,
        required=True,
        metavar="DIR",
        help="one folder per site, named by its site id, holding its public key exports "
        "(converge keys export-public NAME --format json)",
    )
    parser.add_argument(
        "--group",
        default="converge",
        metavar="NAME",
        help="the ingesters that share the work: each message goes to one of the group "
        "(default: converge)",
    )
    parser.add_argument(
        "--keys",
        type=Path,
        metavar="DIR",
        help=f"the centre's key folder: the audit key and the witness key (default: "
        f"${KEYS_ENV}, else ./keys)",
    )
    add_audit_key(parser)
    parser.add_argument(
        "--witness-key",
        default="witness",
        metavar="KEY",
        help="the key that cosigns the sites' checkpoints (default: witness)",
    )
    parser.add_argument(
        "--witness",
        type=Path,
        metavar="FILE",
        help="append every checkpoint of the central log here too",
    )
    parser.add_argument(
        "--max-message",
        type=size,
        default=BrokerOptions.max_message,
        metavar="SIZE",
        help="refuse (quarantine) larger messages (default: 64MiB)",
    )
    parser.add_argument(
        "--for",
        type=seconds,
        dest="duration",
        metavar="DURATION",
        help="stop after this long (default: until Ctrl-C or SIGTERM)",
    )
    add_broker(parser)
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace, pm: pluggy.PluginManager, console: Console) -> int:
    logging.getLogger("engine.central").setLevel(logging.WARNING)
    sites = SiteTrust.from_folder(args.trust)
    transport = open_transport(pm, args.broker, broker_options(args, args.max_message))
    config = IngestConfig(
        group=args.group,
        audit_key=args.audit_key,
        witness_key=args.witness_key,
        max_message=args.max_message,
    )
    store = CentralStore.attach(args.db, Actor.job("ingest"), args.witness, args.audit_key)
    ingester = Ingester(store, sites, key_store_of(args, pm), config)
    stop = threading.Event()
    with _stopping(stop, args.duration):
        if ingester.start(transport, stop):
            console.print(
                f"ingesting for {len(sites.sites)} sites into {store.where} (group {args.group})",
                highlight=False,
            )
            ingester.serve(stop)
    ingester.finish()
    counts = ", ".join(f"{n} {status}" for status, n in sorted(ingester.stats.items()))
    console.print(f"ingest: {counts or 'no messages'}", highlight=False)
    return 0


@contextlib.contextmanager
def _stopping(stop: threading.Event, duration: float | None) -> Iterator[None]:
    """``stop`` is set by SIGINT, SIGTERM or the end of ``duration``."""

    def handler(signum: int, frame: FrameType | None) -> None:
        stop.set()

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}
    timer = threading.Timer(duration, stop.set) if duration is not None else None
    if timer is not None:
        timer.daemon = True
        timer.start()
    try:
        yield
    finally:
        if timer is not None:
            timer.cancel()
        for sig, old in previous.items():
            signal.signal(sig, old)
