"""``converge run``: collect from devices as their plans say, into JSON Lines or the store."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import multiprocessing
import sys
import threading
import time
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal

import pluggy
from rich.console import Console
from rich.markup import escape

from engine.audit import Actor
from engine.central.publisher import PublishConfig, Publisher, collector_id
from engine.collect import CollectConfig, JsonLinesSink, Summary, run_plans
from engine.collect.metrics import Metrics
from engine.collect.sinks import Sink
from engine.collect.status import JsonLogReporter, Reporter
from engine.commands.options import (
    KEYS_ENV,
    PIPE_WIDTH,
    Subparsers,
    add_audit_key,
    add_broker,
    add_db,
    broker_options,
    key_store_of,
    seconds,
    size,
)
from engine.commands.run_status import LiveReporter, summary_table
from engine.errors import ConvergeError
from engine.evidence import EvidenceConfig, EvidenceTarget, open_evidence
from engine.keys import KeyStore
from engine.plans.body import PlanBody
from engine.plans.folder import load_plans
from engine.plans.signature import plan_verifier
from engine.retention import Job, Outcome, apply
from engine.store.database import database_url
from engine.store.site import Publishing, SiteStore
from engine.store.spool import DEFAULT_MAX_BYTES
from engine.store.store import Store
from engine.store.wire import MalformedMessage, check_name
from engine.transport import open_transport
from engine.verify.trust import Trust


def register(commands: Subparsers) -> None:
    parser = commands.add_parser("run", help="collect devices as their plans say")
    parser.add_argument(
        "--plans",
        type=Path,
        required=True,
        metavar="DIR",
        help="plan folder written by converge plan (index.json and plans)",
    )
    parser.add_argument(
        "--for",
        type=seconds,
        dest="duration",
        metavar="DURATION",
        help="stop after this long (default: until Ctrl-C or SIGTERM)",
    )
    parser.add_argument(
        "--out",
        type=Path,
        metavar="FILE.jsonl",
        help="append records as JSON Lines here (default: standard output)",
    )
    parser.add_argument(
        "--trust",
        type=Path,
        metavar="FILE",
        help="refuse any plan not signed by one of the signed-note verifier keys "
        "in FILE (one a line, as converge keys export-public prints)",
    )
    parser.add_argument(
        "--require-signed",
        metavar="KEY",
        help="refuse any plan not signed by a version of KEY that was valid at "
        "the signing time (versions from the key folder)",
    )
    parser.add_argument(
        "--keys",
        type=Path,
        metavar="DIR",
        help=f"key folder for --require-signed and for signing with --db "
        f"(default: ${KEYS_ENV}, else ./keys)",
    )
    parser.add_argument(
        "--metrics",
        metavar="ADDR:PORT",
        help="serve Prometheus metrics at http://ADDR:PORT/metrics (:PORT for every address)",
    )
    _add_evidence(parser.add_argument_group("evidence (with --db)"))
    _add_publish(parser.add_argument_group("to a central store (with --publish)"))
    parser.set_defaults(handler=run)


def _add_publish(central: argparse._ArgumentGroup) -> None:
    central.add_argument(
        "--publish",
        metavar="URL",
        help="send every sealed batch and checkpoint to the centre through this broker "
        "(mqtt://host[:port] or mqtts://...); a batch leaves the outbox once the centre "
        "committed it",
    )
    central.add_argument(
        "--site-id",
        metavar="ID",
        help="this site's name at the centre (default: the site the plans name)",
    )
    central.add_argument(
        "--log",
        type=Path,
        default=Path("converge-log.db"),
        metavar="FILE",
        help="without --db: the site's own audit log, outbox and cosignatures "
        "(default: ./converge-log.db); with --db they are in that store",
    )
    central.add_argument(
        "--resend-after",
        type=seconds,
        default=PublishConfig.resend_s,
        metavar="DURATION",
        help="send a batch again when the centre has not answered it by then (default: 30s)",
    )
    central.add_argument(
        "--drain",
        type=seconds,
        default=PublishConfig.drain_s,
        metavar="DURATION",
        help="at the end, wait this long for the centre to take what the outbox holds "
        "(default: 10s); what it does not take is sent by the next run",
    )
    add_broker(central)


def _add_evidence(evidence: argparse._ArgumentGroup) -> None:
    add_db(evidence, required=False)
    add_audit_key(evidence)
    evidence.add_argument(
        "--spool",
        type=Path,
        default=Path("converge-spool.db"),
        metavar="FILE",
        help="store-and-forward file used while the store is unreachable "
        "(default: ./converge-spool.db)",
    )
    evidence.add_argument(
        "--spool-max",
        type=size,
        default=DEFAULT_MAX_BYTES,
        metavar="SIZE",
        help="bound of the spool, such as 512MiB (default: 1GiB); beyond it "
        "batches are dropped and audited",
    )
    evidence.add_argument(
        "--witness",
        type=Path,
        default=Path("converge-checkpoints.jsonl"),
        metavar="FILE",
        help="append every signed checkpoint here too; keep it "
        "off the database's host (default: ./converge-checkpoints.jsonl)",
    )
    evidence.add_argument(
        "--retention-every",
        type=seconds,
        default=3600.0,
        metavar="DURATION",
        help="apply the plans' retention this often, as the job 'retention' (the first run one "
        "DURATION after the start; default: 1h); see converge retention apply",
    )
    evidence.add_argument(
        "--archives",
        type=Path,
        default=Path("archives"),
        metavar="DIR",
        help="where retention writes archives (on_expiry: archive) (default: ./archives)",
    )


def run(args: argparse.Namespace, pm: pluggy.PluginManager, console: Console) -> int:
    if args.keys and not (args.require_signed or args.db or args.publish):
        raise ConvergeError(
            "--keys is for --require-signed KEY or --db: name the key that "
            "must sign, or the store to sign into"
        )
    if args.db and args.out:
        raise ConvergeError("--out and --db are alternatives: records go to one of them")
    if args.publish and args.out:
        raise ConvergeError("--out and --publish are alternatives: records go to one of them")
    if args.retention_every <= 0:
        raise ConvergeError("--retention-every must be longer than 0s")
    keys = key_store_of(args, pm) if args.require_signed or args.db or args.publish else None
    # every plan and its signature checked before anything is connected
    plans = load_plans(
        args.plans, time.time(), plan_verifier(args.trust, keys, args.require_signed)
    )
    status = Console(stderr=True, width=None if sys.stderr.isatty() else PIPE_WIDTH)
    live = status.is_terminal and (args.out is not None or args.db or not sys.stdout.isatty())
    reporter: Reporter = LiveReporter(status) if live else JsonLogReporter()
    metrics = Metrics() if args.metrics else None
    if metrics is not None:
        metrics.serve(args.metrics)  # a port in use ends the run before anything connects
        reporter = metrics.reporter(reporter)
    try:
        summary, stored = asyncio.run(
            _collect(args, pm, plans, keys, reporter, status=status, metrics=metrics)
        )
    finally:
        if metrics is not None:
            metrics.close()
    status.print(summary_table(summary))
    if stored is not None:
        status.print(stored, highlight=False)
    return 0


async def _collect(
    args: argparse.Namespace,
    pm: pluggy.PluginManager,
    plans: list[PlanBody],
    keys: KeyStore | None,
    reporter: Reporter,
    *,
    status: Console,
    metrics: Metrics | None = None,
) -> tuple[Summary, str | None]:
    """Run the collection into JSON Lines, or (``--db``) into the signed store."""
    if not (args.db or args.publish) or keys is None:
        sink: Sink = JsonLinesSink(args.out if args.out else sys.stdout.buffer)
        async with _metered(metrics):
            summary = await run_plans(
                plans,
                pm,
                duration=args.duration,
                sink=metrics.sink(sink) if metrics else sink,
                reporter=reporter,
                handle_signals=True,
            )
        return summary, None
    config = CollectConfig()
    target = _target(args, plans)
    evidence = open_evidence(
        plans, args.plans, target, keys, EvidenceConfig(audit_key=args.audit_key, writer=_writer())
    )
    if evidence.store_error:
        status.print(
            f"[yellow]warning:[/] {escape(evidence.store_error)}; collecting into the "
            f"spool {escape(str(args.spool))} until the store answers",
            soft_wrap=True,
        )
    publishing = _publishing(args, pm, target, keys)  # after the sealer process forked
    until = datetime.now(UTC)  # the backfill's slots end here, the collection's begin
    await evidence.backfill(plans, until, config.fallback_every_ms)
    stop = asyncio.Event()
    retention = asyncio.create_task(_retention(args, keys, status, stop))
    spool = evidence.writer.spool
    try:
        async with _metered(metrics, lambda: len(spool), evidence.queue.qsize):
            summary = await run_plans(
                plans,
                pm,
                duration=args.duration,
                sink=metrics.sink(evidence) if metrics else evidence,
                reporter=reporter,
                config=config,
                handle_signals=True,
                since=until.timestamp(),
            )
    finally:
        stop.set()
        await retention  # a run under way finishes: each batch is whole either way
        if publishing is not None:
            publishing[1].set()  # the outbox is complete: drain it, then stop
            await asyncio.to_thread(publishing[2].join)
    said = evidence.summary()
    if publishing is not None:
        said += "\n" + publishing[0].summary()
    return summary, said


def _target(args: argparse.Namespace, plans: list[PlanBody]) -> EvidenceTarget:
    """Where the run's evidence goes: the store; with ``--publish`` the site store (``--db``,
    else the ``--log`` file) with its outbox, and who the site is at the centre."""
    if not args.publish:
        return EvidenceTarget(args.db, args.spool, args.witness, args.spool_max)
    sites = sorted({plan.site for plan in plans})
    site = args.site_id or (sites[0] if len(sites) == 1 else None)
    if site is None:
        raise ConvergeError(
            f"the plans are of several sites ({', '.join(sites)}): name one with --site-id"
        )
    try:
        check_name(site, "--site-id")
    except MalformedMessage as exc:
        raise ConvergeError(str(exc)) from None
    db = args.db or str(args.log)
    publishing = Publishing(site, collector_id(database_url(db)), keep_records=bool(args.db))
    return EvidenceTarget(db, args.spool, args.witness, args.spool_max, publishing)


def _publishing(
    args: argparse.Namespace, pm: pluggy.PluginManager, target: EvidenceTarget, keys: KeyStore
) -> tuple[Publisher, threading.Event, threading.Thread] | None:
    """The publisher of a ``--publish`` run, started in a thread of its own."""
    if target.publishing is None:
        return None
    logging.getLogger("engine.central").setLevel(logging.WARNING)
    transport = open_transport(pm, args.publish, broker_options(args))
    store = SiteStore.attach_site(
        target.db, Actor.job("publisher"), target.publishing, audit_key=args.audit_key
    )
    config = PublishConfig(resend_s=args.resend_after, drain_s=args.drain)
    publisher = Publisher(store, transport, keys, config)
    stop = threading.Event()
    return publisher, stop, publisher.start(stop)


@contextlib.asynccontextmanager
async def _metered(
    metrics: Metrics | None,
    spool_depth: Callable[[], int] | None = None,
    sealer_backlog: Callable[[], int] | None = None,
) -> AsyncIterator[None]:
    """Keep the metrics' gauges fresh while the block runs (nothing without metrics)."""
    if metrics is None:
        yield
        return
    refresher = asyncio.create_task(metrics.refresh(spool_depth, sealer_backlog))
    try:
        yield
    finally:
        refresher.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await refresher
        metrics.refresh_states()


async def _retention(
    args: argparse.Namespace, keys: KeyStore, status: Console, stop: asyncio.Event
) -> None:
    """Every ``--retention-every`` until ``stop``: a retention run by the job ``retention``,
    in a thread (verifying in this process: a collector does not fork workers). A site that
    publishes without ``--db`` keeps no records of its own: nothing to expire."""
    if not args.db:
        return
    trust = Trust.from_key_store(keys)
    job = Job(Actor.job("retention"), keys, trust, workers=1, archives=args.archives)
    while True:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), args.retention_every)
        if stop.is_set():
            return
        try:
            outcome = await asyncio.to_thread(_apply_retention, args, job)
        except ConvergeError as exc:
            status.print(f"[yellow]warning:[/] retention: {escape(str(exc))}", soft_wrap=True)
            continue
        if outcome.records or outcome.held_past:
            held = sum(outcome.held_past.values())
            status.print(
                f"retention: deleted {outcome.records:,} records of {outcome.batches:,} batches"
                f" with their receipts{f'; {held:,} held past keep_at_most' if held else ''}",
                highlight=False,
            )


def _apply_retention(args: argparse.Namespace, job: Job) -> Outcome:
    with Store.attach(args.db, job.actor, args.witness, args.audit_key) as store:
        return apply(store, job)


def _writer() -> Literal["thread", "process"]:
    """The evidence sink's sealer process where ``fork`` exists (Linux, other Unixes)."""
    return "process" if "fork" in multiprocessing.get_all_start_methods() else "thread"
