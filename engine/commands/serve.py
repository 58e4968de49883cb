"""``converge serve``: the read API for IT systems, every request through the access guard.

FastAPI and uvicorn come with the ``server`` extra and are imported only here. The store
must exist (it is read, and each decision is appended to its audit log); the principals
file and its tokens are read again whenever they change. See docs/access.md.
"""

from __future__ import annotations

import argparse
import logging
import signal
import ssl
from pathlib import Path

import pluggy
from rich.console import Console

from engine.api.auth import Principals
from engine.api.metrics import ApiMetrics
from engine.api.service import LOG, Service
from engine.commands.options import (
    Handler,
    Subparsers,
    add_db,
    add_principals,
    add_trust,
    principals_path,
    verifying_trust_of,
)
from engine.errors import ConvergeError
from engine.store.store import Store

DEFAULT_PORT = 8750


def register(commands: Subparsers) -> None:
    parser = commands.add_parser("serve", help="the read API for IT systems, through the guard")
    add_db(parser)
    add_principals(parser)
    parser.add_argument(
        "--host", default="127.0.0.1", help="the address to listen on (default: 127.0.0.1)"
    )
    parser.add_argument(
        "--port", type=int, default=DEFAULT_PORT, help=f"the TCP port (default: {DEFAULT_PORT})"
    )
    parser.add_argument("--tls-cert", type=Path, metavar="FILE", help="serve HTTPS: certificate")
    parser.add_argument("--tls-key", type=Path, metavar="FILE", help="serve HTTPS: private key")
    parser.add_argument(
        "--client-ca",
        type=Path,
        metavar="FILE",
        help="accept TLS client certificates issued by this CA (principals list their"
        " fingerprints under certificates)",
    )
    parser.add_argument(
        "--metrics",
        metavar="ADDR:PORT",
        help="serve Prometheus metrics on this address (:PORT for every address): requests"
        " refused as not authenticated, which the audit log does not hold",
    )
    add_trust(parser)
    handler: Handler = run
    parser.set_defaults(handler=handler)


def run(args: argparse.Namespace, pm: pluggy.PluginManager, console: Console) -> int:
    if (args.tls_cert is None) != (args.tls_key is None):
        raise ConvergeError("--tls-cert and --tls-key go together")
    if args.client_ca is not None and args.tls_cert is None:
        raise ConvergeError("--client-ca needs --tls-cert and --tls-key")
    try:
        from engine.api.app import make_app  # noqa: PLC0415 -- the server extra, only here
        from engine.api.server import Tls, bind, make_server  # noqa: PLC0415
    except ImportError as exc:
        raise ConvergeError(
            f"converge serve needs the server extra: pip install 'converge[server]' ({exc})"
        ) from exc
    principals = Principals(pm, principals_path(args))
    principals.current()  # a principals file that does not load stops the server here
    trust = verifying_trust_of(args, pm)  # and so does a key folder that names no key
    tls = Tls(args.tls_cert, args.tls_key, args.client_ca) if args.tls_cert else None
    metrics = ApiMetrics()
    if args.metrics:
        metrics.serve(args.metrics)
    store = Store.open_existing(args.db)
    server = make_server(make_app(Service(store, principals, trust, metrics)), tls)
    try:
        server.config.load()
        sock = bind(args.host, args.port)
    except (OSError, ssl.SSLError) as exc:
        store.close()
        raise ConvergeError(f"cannot serve on {args.host}:{args.port}: {exc}") from exc
    LOG.setLevel(logging.WARNING)  # requests refused before the guard: the server's log
    host, port = sock.getsockname()[:2]
    scheme = "https" if tls else "http"
    console.print(
        f"serving {scheme}://{host}:{port}/v1/points (store {store.where}; principals"
        f" {principals.path}{'; client certificates' if args.client_ca else ''})",
        markup=False,
    )
    console.file.flush()
    # uvicorn stops on SIGINT or SIGTERM, then raises the signal again: end quietly, exit 0
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        server.run(sockets=[sock])
    except KeyboardInterrupt:
        console.print("stopped")
    finally:
        store.close()
    return 0
