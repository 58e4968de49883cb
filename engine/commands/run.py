"""``converge run``: collect from devices as their plans say, into JSON Lines or the store."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import multiprocessing
import sys
import time
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal

import pluggy
from rich.console import Console
from rich.markup import escape

from engine.audit import Actor
from engine.collect import CollectConfig, JsonLinesSink, Summary, run_plans
from engine.collect.metrics import Metrics
from engine.collect.sinks import Sink
from engine.collect.status import JsonLogReporter, Reporter
from engine.commands.options import (
    KEYS_ENV,
    PIPE_WIDTH,
    Subparsers,
    add_audit_key,
    add_db,
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
from engine.store.spool import DEFAULT_MAX_BYTES
from engine.store.store import Store
from engine.verify import Trust


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
    parser.set_defaults(handler=run)


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
    if args.keys and not (args.require_signed or args.db):
        raise ConvergeError(
            "--keys is for --require-signed KEY or --db: name the key that "
            "must sign, or the store to sign into"
        )
    if args.db and args.out:
        raise ConvergeError("--out and --db are alternatives: records go to one of them")
    if args.retention_every <= 0:
        raise ConvergeError("--retention-every must be longer than 0s")
    keys = key_store_of(args, pm) if args.require_signed or args.db else None
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
    if not args.db or keys is None:
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
    target = EvidenceTarget(args.db, args.spool, args.witness, args.spool_max)
    evidence = open_evidence(
        plans, args.plans, target, keys, EvidenceConfig(audit_key=args.audit_key, writer=_writer())
    )
    if evidence.store_error:
        status.print(
            f"[yellow]warning:[/] {escape(evidence.store_error)}; collecting into the "
            f"spool {escape(str(args.spool))} until the store answers",
            soft_wrap=True,
        )
    await evidence.backfill(plans, datetime.now(UTC), config.fallback_every_ms)
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
            )
    finally:
        stop.set()
        await retention  # a run under way finishes: each batch is whole either way
    return summary, evidence.summary()


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
    in a thread (verifying in this process: a collector does not fork workers)."""
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
