"""The ``converge`` command: parse arguments, call the stages, render the result.

Nothing here decides anything: every command is a few lines that call an
engine function and hand its result to a renderer. Errors meant for users
(:class:`~engine.errors.ConvergeError`) print one line and exit 2; findings
print one line each and exit 1 when any is an error.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import multiprocessing
import os
import socket
import sys
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from importlib.metadata import version
from pathlib import Path
from typing import Any, Literal

import pluggy
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from engine import audit, simulate
from engine.collect import CollectConfig, JsonLinesSink, Summary, run_plans
from engine.collect.status import JsonLogReporter, LiveReporter, Reporter, summary_table
from engine.commands.audit import progress_of, render_entries, render_report, report_json
from engine.commands.coverage import coverage, render_coverage
from engine.commands.diff import diff, diff_json, render_diff
from engine.commands.explain import explain, render_explain
from engine.commands.findings import findings_json, findings_sarif, findings_text
from engine.commands.keys import export_public, render_keys
from engine.commands.options import (
    KEYS_ENV,
    PIPE_WIDTH,
    Handler,
    add_db,
    add_inputs,
    compile_key_store,
    compile_or_fail,
    inputs_of,
    key_store_of,
    period,
    seconds,
    size,
)
from engine.commands.test import junit_xml, run_tests
from engine.compile import Compilation, Inputs, compile_project
from engine.compile.validate.jsonschema import json_schema
from engine.errors import ConvergeError, FindingsError
from engine.evidence.sink import EvidenceConfig, EvidenceTarget, open_evidence
from engine.keys import KeyStore, KeyVersion
from engine.plans.folder import load_plans, write_plans
from engine.plans.signature import open_signer, plan_verifier, rfc3339
from engine.plugin_manager import make_plugin_manager
from engine.store import auditlog
from engine.store.spool import DEFAULT_MAX_BYTES
from engine.store.store import Store
from engine.verify import Trust, verify_store


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    # protocol libraries log warnings for conditions Converge reports itself (as gap records)
    logging.basicConfig(level=logging.ERROR, format="%(name)s: %(message)s")
    on_terminal = sys.stdout.isatty()
    console = Console(
        highlight=False, soft_wrap=not on_terminal, width=None if on_terminal else PIPE_WIDTH
    )
    try:
        pm = make_plugin_manager(trace=args.trace_hooks)
        handler: Handler = args.handler
        return handler(args, pm, console)
    except FindingsError as exc:
        findings_text(Console(stderr=True, soft_wrap=True), exc.findings)
        return 1
    except ConvergeError as exc:
        Console(stderr=True, highlight=False, soft_wrap=True).print(
            f"converge: error: {exc}", markup=False
        )
        return 2
    except BrokenPipeError:
        # the reader (`| head`) has gone: stop quietly, as Unix tools do
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="converge",
        description="Compile compliance policies for OT data into per-device collection plans.",
    )
    parser.add_argument("--version", action="version", version=f"converge {version('converge')}")
    parser.add_argument(
        "--trace-hooks", action="store_true", help="print every plugin hook call to standard error"
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for register in COMMANDS:
        register(commands)
    return parser


# --- converge check ----------------------------------------------------------------------


def register_check(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = commands.add_parser("check", help="report every error and warning in the inputs")
    add_inputs(parser)
    parser.add_argument("--format", choices=("text", "json", "sarif"), default="text")
    parser.set_defaults(handler=run_check)


def run_check(args: argparse.Namespace, pm: pluggy.PluginManager, console: Console) -> int:
    result = compile_project(inputs_of(args, pm), pm)
    if args.format == "json":
        print(findings_json(result.findings))
    elif args.format == "sarif":
        print(findings_sarif(result.findings, version("converge")))
    else:
        findings_text(console, result.findings)
    return 0 if result.ok else 1


# --- converge plan -----------------------------------------------------------------------


def register_plan(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = commands.add_parser("plan", help="compile one canonical plan per device")
    add_inputs(parser)
    parser.add_argument(
        "-o",
        "--out",
        type=Path,
        required=True,
        metavar="DIR",
        help="folder for <device>.plan.json files and index.json",
    )
    parser.add_argument(
        "--sign",
        metavar="KEY",
        help="sign every plan with the current version of KEY from the key "
        f"folder (--keys, else ${KEYS_ENV}, else ./keys): <device>.plan.sig",
    )
    parser.add_argument("--format", choices=("text", "json"), default="text")
    parser.set_defaults(handler=run_plan)


def run_plan(args: argparse.Namespace, pm: pluggy.PluginManager, console: Console) -> int:
    result = compile_or_fail(args, pm)
    # the key is opened before anything is written: a wrong passphrase writes nothing
    signer = (
        open_signer(key_store_of(args, pm), args.sign, datetime.now(UTC)) if args.sign else None
    )
    written = write_plans(args.out, result.plans, result.index(), signer)
    render_plans(console, result, written, args.format)
    if signer is not None and args.format == "text":
        version = signer.version
        console.print(
            f"signed with {signer.key_name} v{version.version} (key id "
            f"{version.key_id}) at {rfc3339(signer.signed_at)}",
            highlight=False,
        )
    return 0


# --- converge schema ---------------------------------------------------------------------


def register_schema(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = commands.add_parser("schema", help="print the JSON Schema of a file kind")
    parser.add_argument("kind", choices=("policy", "site", "principals"))
    parser.set_defaults(handler=run_schema)


def run_schema(args: argparse.Namespace, pm: pluggy.PluginManager, console: Console) -> int:
    print(json.dumps(json_schema(args.kind, pm), indent=2, sort_keys=True))
    return 0


# --- converge explain --------------------------------------------------------------------


def register_explain(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = commands.add_parser("explain", help="why a point gets what it gets")
    parser.add_argument("ref", metavar="DEVICE[/POINT]")
    add_inputs(parser)
    parser.add_argument("--format", choices=("text", "json"), default="text")
    parser.set_defaults(handler=run_explain)


def run_explain(args: argparse.Namespace, pm: pluggy.PluginManager, console: Console) -> int:
    entries = explain(compile_or_fail(args, pm), args.ref)
    if args.format == "json":
        print(json.dumps(entries, indent=2))
    else:
        render_explain(console, entries)
    return 0


# --- converge coverage -------------------------------------------------------------------


def register_coverage(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = commands.add_parser("coverage", help="governed and ungoverned points, exceptions")
    add_inputs(parser)
    parser.add_argument("--format", choices=("text", "json"), default="text")
    parser.set_defaults(handler=run_coverage)


def run_coverage(args: argparse.Namespace, pm: pluggy.PluginManager, console: Console) -> int:
    report = coverage(compile_or_fail(args, pm))
    if args.format == "json":
        print(json.dumps(report, indent=2))
    else:
        render_coverage(console, report)
    return 0


# --- converge diff -----------------------------------------------------------------------


def register_diff(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = commands.add_parser(
        "diff", help="what a policy change does to each point: -p OLD -p NEW -s SITE"
    )
    add_inputs(parser)
    parser.add_argument("--format", choices=("text", "json"), default="text")
    parser.set_defaults(handler=run_diff)


def run_diff(args: argparse.Namespace, pm: pluggy.PluginManager, console: Console) -> int:
    if len(args.policies) != 2:
        raise ConvergeError("diff takes exactly two policy sets: -p OLD -p NEW")
    store = compile_key_store(args, pm)
    old, new = (
        compile_project(Inputs([p], args.sites, args.principals, args.at, store), pm)
        for p in args.policies
    )
    for result in (old, new):
        if not result.ok:  # exit 2, so that CI tells broken inputs from changes (exit 1)
            findings_text(Console(stderr=True, soft_wrap=True), result.findings)
            return 2
    changes = diff(old, new)
    if args.format == "json":
        print(json.dumps(diff_json(changes), indent=2))
    else:
        render_diff(console, changes)
    return 1 if changes else 0


# --- converge test -----------------------------------------------------------------------


def register_test(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = commands.add_parser("test", help="run policy unit tests written in YAML")
    parser.add_argument("tests", nargs="+", type=Path, metavar="TESTS")
    parser.add_argument("--junit", type=Path, metavar="FILE", help="also write JUnit XML")
    parser.add_argument("--format", choices=("text", "json"), default="text")
    parser.set_defaults(handler=run_test)


def run_test(args: argparse.Namespace, pm: pluggy.PluginManager, console: Console) -> int:
    results = run_tests(args.tests, pm)
    failed = sum(not r.passed for r in results)
    if args.format == "json":
        print(
            json.dumps(
                [
                    {
                        "name": r.name,
                        "at": str(r.location),
                        "passed": r.passed,
                        "failures": r.failures,
                    }
                    for r in results
                ],
                indent=2,
            )
        )
    else:
        for r in results:
            mark = "[green]PASS[/]" if r.passed else "[bold red]FAIL[/]"
            console.print(f"{mark} {r.location}: {r.name}", highlight=False)
            for failure in r.failures:
                console.print(f"     {failure}", highlight=False, markup=False)
        console.print(f"{len(results) - failed} passed, {failed} failed", highlight=False)
    if args.junit:
        try:
            args.junit.write_bytes(junit_xml(results))
        except OSError as exc:
            raise ConvergeError(f"cannot write {args.junit}: {exc.strerror}") from exc
    return 1 if failed else 0


# --- converge run ------------------------------------------------------------------------


def register_run(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
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
    evidence = parser.add_argument_group("evidence (with --db)")
    add_db(evidence, required=False)
    evidence.add_argument(
        "--audit-key",
        default="audit-log",
        metavar="KEY",
        help="the key that signs audit log checkpoints (default: audit-log)",
    )
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
    parser.set_defaults(handler=run_run)


def run_run(args: argparse.Namespace, pm: pluggy.PluginManager, console: Console) -> int:
    if args.keys and not (args.require_signed or args.db):
        raise ConvergeError(
            "--keys is for --require-signed KEY or --db: name the key that "
            "must sign, or the store to sign into"
        )
    if args.db and args.out:
        raise ConvergeError("--out and --db are alternatives: records go to one of them")
    keys = key_store_of(args, pm) if args.require_signed or args.db else None
    # every plan and its signature checked before anything is connected
    plans = load_plans(
        args.plans, time.time(), plan_verifier(args.trust, keys, args.require_signed)
    )
    status = Console(stderr=True, width=None if sys.stderr.isatty() else PIPE_WIDTH)
    live = status.is_terminal and (args.out is not None or args.db or not sys.stdout.isatty())
    reporter: Reporter = LiveReporter(status) if live else JsonLogReporter()
    summary, stored = asyncio.run(_collect(args, pm, plans, keys, reporter, status=status))
    status.print(summary_table(summary))
    if stored is not None:
        status.print(stored, highlight=False)
    return 0


async def _collect(
    args: argparse.Namespace,
    pm: pluggy.PluginManager,
    plans: list[Any],
    keys: KeyStore | None,
    reporter: Reporter,
    *,
    status: Console,
) -> tuple[Summary, str | None]:
    """Run the collection into JSON Lines, or (``--db``) into the signed store."""
    if not args.db or keys is None:
        sink = JsonLinesSink(args.out if args.out else sys.stdout.buffer)
        return await run_plans(
            plans, pm, duration=args.duration, sink=sink, reporter=reporter, handle_signals=True
        ), None
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
    summary = await run_plans(
        plans,
        pm,
        duration=args.duration,
        sink=evidence,
        reporter=reporter,
        config=config,
        handle_signals=True,
    )
    return summary, evidence.summary()


def _writer() -> Literal["thread", "process"]:
    """The evidence sink's sealer process where ``fork`` exists (Linux, other Unixes)."""
    return "process" if "fork" in multiprocessing.get_all_start_methods() else "thread"


# --- converge simulate -------------------------------------------------------------------


def register_simulate(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
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
    parser.set_defaults(handler=run_simulate)


def run_simulate(args: argparse.Namespace, pm: pluggy.PluginManager, console: Console) -> int:
    asyncio.run(simulate.serve(args.site, args.faults, args.duration, pm, console))
    return 0


# --- converge keys -----------------------------------------------------------------------


def register_keys(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = commands.add_parser("keys", help="generate, list, export and rotate signing keys")
    actions = parser.add_subparsers(dest="keys_command", required=True, metavar="ACTION")
    store = argparse.ArgumentParser(add_help=False)
    store.add_argument(
        "--keys", type=Path, metavar="DIR", help=f"key folder (default: ${KEYS_ENV}, else ./keys)"
    )
    generate = actions.add_parser("generate", parents=[store], help="make a new key")
    generate.add_argument("name", metavar="NAME", help="kebab-case id, as signing.keys names it")
    generate.add_argument(
        "--valid-for",
        type=period,
        metavar="DURATION",
        help="validity of each version (default: until rotated)",
    )
    add_db(generate, required=False)
    generate.set_defaults(handler=run_keys_generate)
    listing = actions.add_parser("list", parents=[store], help="every key version and its validity")
    listing.add_argument("--format", choices=("text", "json"), default="text")
    listing.set_defaults(handler=run_keys_list)
    export = actions.add_parser(
        "export-public", parents=[store], help="print the public keys of every version of a key"
    )
    export.add_argument("name", metavar="NAME")
    export.add_argument("--format", choices=("signed-note", "pem", "json"), default="signed-note")
    export.set_defaults(handler=run_keys_export)
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
    rotate.set_defaults(handler=run_keys_rotate)


def run_keys_generate(args: argparse.Namespace, pm: pluggy.PluginManager, console: Console) -> int:
    keys = key_store_of(args, pm)
    made = keys.generate(args.name, args.valid_for)
    render_keys(console, [made], datetime.now(UTC), title=f"generated {made.name}")
    log_key_versions(args.db, keys.versions(args.name))
    return 0


def run_keys_rotate(args: argparse.Namespace, pm: pluggy.PluginManager, console: Console) -> int:
    keys = key_store_of(args, pm)
    keys.rotate(args.name, args.valid_for)
    render_keys(console, keys.versions(args.name), datetime.now(UTC), title=f"rotated {args.name}")
    log_key_versions(args.db, keys.versions(args.name))
    return 0


def log_key_versions(db: str | None, versions: list[KeyVersion]) -> None:
    """With ``--db``, the key event is an audit entry now, not at the next collector start."""
    if db:
        with Store.open(db, actor=f"converge-keys@{socket.gethostname()}") as store:
            store.record_keys(versions)


def run_keys_list(args: argparse.Namespace, pm: pluggy.PluginManager, console: Console) -> int:
    store = key_store_of(args, pm)
    versions = [v for name in store.names() for v in store.versions(name)]
    if args.format == "json":
        print(json.dumps([v.as_dict() for v in versions], indent=2))
    else:
        render_keys(console, versions, datetime.now(UTC))
    return 0


def run_keys_export(args: argparse.Namespace, pm: pluggy.PluginManager, console: Console) -> int:
    sys.stdout.write(export_public(key_store_of(args, pm).versions(args.name), args.format))
    return 0


# --- converge audit ----------------------------------------------------------------------


def register_audit(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = commands.add_parser("audit", help="list and verify the evidence store")
    actions = parser.add_subparsers(dest="audit_command", required=True, metavar="ACTION")
    log = actions.add_parser("log", help="list audit log entries")
    add_db(log)
    log.add_argument(
        "--kind",
        action="extend",
        nargs="+",
        default=[],
        metavar="KIND",
        choices=sorted(audit.KINDS),
        help="only entries of these kinds",
    )
    log.add_argument("--format", choices=("text", "json"), default="text")
    log.set_defaults(handler=run_audit_log)
    check = actions.add_parser(
        "verify", help="recompute and check every leaf, root, signature, audit entry and checkpoint"
    )
    add_db(check)
    trust = check.add_mutually_exclusive_group()
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
    check.add_argument(
        "--witness",
        type=Path,
        metavar="FILE",
        help="checkpoints kept outside the store (converge run --witness): "
        "detects a store restored from an older copy",
    )
    check.add_argument("--format", choices=("text", "json"), default="text")
    check.set_defaults(handler=run_audit_verify)


def run_audit_log(args: argparse.Namespace, pm: pluggy.PluginManager, console: Console) -> int:
    with Store.open_existing(args.db) as store, store.reading() as conn:
        if args.format == "json":
            for entry in auditlog.entries(conn, args.kind):
                print(entry.to_bytes().decode())
        else:
            render_entries(console, auditlog.entries(conn, args.kind))
    return 0


def run_audit_verify(args: argparse.Namespace, pm: pluggy.PluginManager, console: Console) -> int:
    trust = (
        Trust.from_json(args.public_keys)
        if args.public_keys
        else Trust.from_key_store(key_store_of(args, pm))
    )
    started = time.perf_counter()
    with (
        Store.open_existing(args.db) as store,
        progress_of(console, args.format == "text") as progress,
    ):
        report = verify_store(store, trust, args.witness, progress)
        where = store.where
    seconds = time.perf_counter() - started
    if args.format == "json":
        print(json.dumps(report_json(report, seconds), indent=2))
    else:
        render_report(console, report, seconds, where)
    return 0 if report.ok else 1


def render_plans(console: Console, result: Compilation, written: list[Path], fmt: str) -> None:
    if fmt == "json":
        if result.findings:
            findings_text(Console(stderr=True, soft_wrap=True), result.findings)
        rows = [
            {
                "device": p.device,
                "file": str(path),
                "digest": p.digest,
                "points": p.points,
                "read_groups": p.read_groups,
            }
            for p, path in zip(result.plans, written, strict=True)
        ]
        print(json.dumps(rows, indent=2))
        return
    if result.findings:
        findings_text(console, result.findings)
    table = Table(title=f"{len(written)} plans", title_justify="left")
    for column in ("device", "points", "read groups", "valid until", "digest"):
        table.add_column(column)
    for plan in result.plans:
        table.add_row(
            plan.device,
            str(plan.points),
            str(plan.read_groups),
            plan.valid_until or "-",
            plan.digest[:19] + "…",
        )
    console.print(table)


COMMANDS = [
    register_check,
    register_plan,
    register_explain,
    register_coverage,
    register_diff,
    register_test,
    register_schema,
    register_run,
    register_simulate,
    register_keys,
    register_audit,
]


if __name__ == "__main__":
    sys.exit(main())
