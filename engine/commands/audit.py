"""``converge audit``: list the audit log, verify the whole evidence store, review it, and count
its slots per day (``gaps``: the completeness view)."""

from __future__ import annotations

import argparse
import contextlib
import csv
import json
import sys
import time
from collections.abc import Iterable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pluggy
from rich.console import Console
from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.table import Table

from engine.access.acting import Refusal, act_as
from engine.access.data import Range
from engine.audit import KINDS, AuditEntry, EntryFilter, actor_label
from engine.central.trust import SiteTrust
from engine.commands.options import (
    Handler,
    Subparsers,
    add_as,
    add_audit_key,
    add_db,
    add_principals,
    add_range,
    add_trust,
    principal_of,
    principals_of,
    verifying_trust_of,
)
from engine.commands.terminal import markup_safe
from engine.errors import AccessDenied, ConvergeError
from engine.report.health import CSV_COLUMNS, Row, health
from engine.sign.leaf import instant
from engine.store import auditlog, data
from engine.store.store import Store
from engine.verify.records import Progress as OnProgress
from engine.verify.report import Report
from engine.verify.trust import Trust
from engine.verify.whole import verify_store

_SUMMARY = ("batch.stored", "batch.sealed", "batch.dropped", "plan.deployed")


def register(commands: Subparsers) -> None:
    parser = commands.add_parser("audit", help="list and verify the evidence store")
    actions = parser.add_subparsers(dest="audit_command", required=True, metavar="ACTION")
    _add_log(actions)
    _add_verify(actions)
    _add_review(actions)
    _add_gaps(actions)
    parser.set_defaults(handler=run)


def _add_log(actions: Subparsers) -> None:
    log = actions.add_parser("log", help="list audit log entries")
    add_db(log)
    log.add_argument(
        "--kind",
        action="extend",
        nargs="+",
        default=[],
        metavar="KIND",
        choices=sorted(KINDS),
        help="only entries of these kinds",
    )
    log.add_argument("--actor", metavar="ID", help="only entries by this principal or job")
    log.add_argument("--device", metavar="ID", help="only entries about this device")
    log.add_argument("--point", metavar="NAME", help="only entries about this point (--device)")
    add_range(log)
    log.add_argument("--format", choices=("text", "json"), default="text")


def _add_verify(actions: Subparsers) -> None:
    verify = actions.add_parser(
        "verify", help="recompute and check every leaf, root, signature, audit entry and checkpoint"
    )
    add_db(verify)
    add_trust(verify)
    verify.add_argument(
        "--witness",
        type=Path,
        metavar="FILE",
        help="checkpoints kept outside the store (converge run --witness): "
        "detects a store restored from an older copy",
    )
    add_audit_key(verify)
    verify.add_argument(
        "--archives",
        type=Path,
        metavar="DIR",
        help="the folder retention runs wrote archives to (converge retention apply --archives):"
        " each archive a deletion receipt relied on must be there, with the SHA-256 signed"
        " when it was written",
    )
    verify.add_argument(
        "--plan-key",
        metavar="KEY",
        help="the key that signs plans (converge plan --sign KEY): every stored plan must be "
        "signed by it (default: a plan's signature, when it has one, may be any trusted key's)",
    )
    verify.add_argument(
        "--site-trust",
        type=Path,
        metavar="DIR",
        help="a central store: one folder per site, named by its site id, of its public key "
        "exports (as converge ingest --trust); a site's plans and batches are judged by its "
        "own keys only",
    )
    verify.add_argument(
        "--cosigned-by",
        type=Path,
        nargs="+",
        metavar="FILE",
        help="a site store's cosignatures must be by this centre witness key (its exports, "
        "converge keys export-public KEY --format json)",
    )
    verify.add_argument("--format", choices=("text", "json"), default="text")


def _add_review(actions: Subparsers) -> None:
    review = actions.add_parser(
        "review", help="record that you reviewed a range of the trail (EU GMP Annex 11 §9)"
    )
    add_db(review)
    add_principals(review)
    add_as(review)
    add_range(review)
    review.add_argument("--note", default="", metavar="TEXT", help="what the review found")


def _add_gaps(actions: Subparsers) -> None:
    gaps = actions.add_parser(
        "gaps", help="per device, point and day: scheduled samples, readings, gaps by reason"
    )
    add_db(gaps)
    gaps.add_argument(
        "--device",
        action="append",
        default=[],
        metavar="ID",
        help="only this device (repeat for more; default: every device)",
    )
    add_range(gaps)
    gaps.add_argument("--format", choices=("table", "csv", "json"), default="table")


def run(args: argparse.Namespace, pm: pluggy.PluginManager, console: Console) -> int:
    return ACTIONS[args.audit_command](args, pm, console)


def run_gaps(args: argparse.Namespace, pm: pluggy.PluginManager, console: Console) -> int:
    """The completeness view: what each point's slots held, per UTC day (docs/report.md)."""
    if args.start and args.end and args.end <= args.start:
        raise ConvergeError("--to must be after --from")
    span = Range(
        instant(args.start) if args.start else None, instant(args.end) if args.end else None
    )
    with Store.open_existing(args.db) as store, store.reading() as conn:
        known = data.devices(conn)
        unknown = [device for device in args.device or () if device not in known]
        if unknown:
            raise ConvergeError(
                f"no device {', '.join(unknown)} in the store (its devices:"
                f" {', '.join(known) or 'none'})"
            )
        rows = health(conn, dict.fromkeys(args.device or known), span).rows()
    render_gaps(console, args.format, rows)
    return 0


def render_gaps(console: Console, form: str, rows: list[Row]) -> None:
    if form == "csv":
        writer = csv.writer(sys.stdout, lineterminator="\n")
        writer.writerow(CSV_COLUMNS)
        writer.writerows(row.as_csv() for row in rows)
    elif form == "json":
        for row in rows:
            sys.stdout.write(json.dumps(row.as_json(), ensure_ascii=False) + "\n")
    elif not rows:
        console.print("no records")
    else:
        table = Table(title_justify="left")
        for column in ("device", "point", "day", "scheduled", "readings", "gaps", "by reason"):
            table.add_column(column, justify="right" if column in _COUNTS else "left")
        table.add_column("unaccounted", justify="right")
        table.add_column("extra", justify="right")
        for row in rows:
            t = row.tally
            reasons = ", ".join(f"{reason} {n:,}" for reason, n in sorted(t.gaps.items()))
            missing = f"[red]{t.unaccounted:,}[/]" if t.unaccounted else "0"
            counts = (f"{t.scheduled:,}", f"{t.readings:,}", f"{t.gap_slots:,}")
            table.add_row(
                markup_safe(row.device),
                markup_safe(row.point),
                markup_safe(row.day),
                *counts,
                markup_safe(reasons),
                missing,
                f"{t.extra:,}",
            )
        console.print(table)


_COUNTS = ("scheduled", "readings", "gaps")


def run_review(args: argparse.Namespace, pm: pluggy.PluginManager, console: Console) -> int:
    """An ``audit.reviewed`` entry by the principal, naming the range and what it held; a
    principal that may not act is refused, and the refusal is an entry too."""
    resolver = principals_of(args, pm)
    start = instant(args.start) if args.start else None
    end = instant(args.end) if args.end else None
    with Store.open_existing(args.db) as store:
        acting = act_as(resolver, principal_of(args), "review")
        if isinstance(acting, Refusal):
            store.log("access.decision", acting.payload, actor=acting.actor)
            raise AccessDenied(acting.reason)
        with store.reading() as conn:
            seen = [
                e for e in auditlog.entries(conn) if EntryFilter(start=start, end=end).matches(e)
            ]
        said = {
            "from": start,
            "to": end,
            "note": args.note,
            "entries": len(seen),
            "last_seq": seen[-1].seq if seen else None,
        }
        seq = store.log("audit.reviewed", said, actor=acting)
    console.print(f"reviewed {len(seen)} entries; recorded as audit entry {seq}", highlight=False)
    return 0


def run_log(args: argparse.Namespace, pm: pluggy.PluginManager, console: Console) -> int:
    if args.point and not args.device:
        raise ConvergeError("--point needs --device: a point is named within its device")
    wanted = EntryFilter(
        tuple(args.kind),
        args.actor,
        instant(args.start) if args.start else None,
        instant(args.end) if args.end else None,
        args.device,
        args.point,
    )
    with Store.open_existing(args.db) as store, store.reading() as conn:
        entries = (e for e in auditlog.entries(conn, args.kind) if wanted.matches(e))
        if args.format == "json":
            for entry in entries:
                print(entry.to_bytes().decode())
        else:
            render_entries(console, entries)
    return 0


def run_verify(args: argparse.Namespace, pm: pluggy.PluginManager, console: Console) -> int:
    with Store.open_existing(args.db) as store:  # a mistyped store is named first
        trust = verifying_trust_of(args, pm)
        if args.site_trust:
            sites = SiteTrust.from_folder(args.site_trust).sites
            trust = Trust(trust.keys, {site: keys.keys for site, keys in sites.items()})
        started = time.perf_counter()
        with progress_of(console, args.format == "text") as progress:
            report = verify_store(
                store,
                trust,
                witness=args.witness,
                progress=progress,
                audit_key=args.audit_key,
                plan_key=args.plan_key,
                cosigned_by=Trust.from_json(args.cosigned_by) if args.cosigned_by else None,
                archives=args.archives,
            )
        where = store.where
    seconds = time.perf_counter() - started
    if args.format == "json":
        print(json.dumps(report_json(report, seconds), indent=2))
    else:
        render_report(console, report, seconds, where)
    return 0 if report.ok else 1


ACTIONS: dict[str, Handler] = {
    "log": run_log,
    "verify": run_verify,
    "review": run_review,
    "gaps": run_gaps,
}


def render_entries(console: Console, entries: Iterable[AuditEntry]) -> None:
    """One line per entry, in sequence order: number, time (RFC 3339), kind, actor, about.

    An entry's time is when what it records happened. One dated before an
    entry that precedes it in the log (a key made before the store existed,
    logged when a collector first starts) was recorded later than it
    happened: its line says so, with the earliest it can have been recorded.
    """
    shown, latest = 0, ""
    for entry in entries:
        late = (
            f"  (happened {entry.time}, recorded after {latest})" if _before(entry, latest) else ""
        )
        console.print(
            f"{entry.seq:>7}  {markup_safe(entry.time)}  [bold]{markup_safe(entry.kind):<17}[/]"
            f"  {markup_safe(actor_label(entry.actor))}  {markup_safe(_about(entry) + late)}",
            highlight=False,
        )
        latest = max(latest, entry.time, key=_instant)
        shown += 1
    if not shown:
        console.print("no entries")


def _before(entry: AuditEntry, latest: str) -> bool:
    return bool(latest) and _instant(entry.time) < _instant(latest)


def _instant(time: str) -> datetime:
    """An entry's RFC 3339 time as an instant (the earliest one when it is not a time)."""
    try:
        return datetime.fromisoformat(time)
    except ValueError:
        return datetime.min.replace(tzinfo=UTC)


def _about(entry: AuditEntry) -> str:
    p = entry.payload
    if entry.kind in _SUMMARY:
        parts = [
            p.get("device"),
            p.get("window_start"),
            p.get("count") and f"{p['count']} records",
            p.get("root") and f"root {p['root'][:16]}…",
            p.get("digest"),
        ]
        return " ".join(str(x) for x in parts if x)
    if entry.kind.startswith("key."):
        return f"{p.get('name')} v{p.get('version')} key id {p.get('key_id')}"
    if entry.kind == "retention.deleted":
        return (
            f"{p.get('device')} {p.get('window_start')} batch {p.get('batch')}: {p.get('count')}"
            f" records deleted, {p.get('remaining')} left"
        )
    if entry.kind == "retention.archived":
        return f"{p.get('file')}: {len(p.get('batches', []))} batches"
    if entry.kind.startswith("hold."):
        scope = ", ".join(p.get("devices") or ["every device"])
        return (
            f"hold {p.get('hold')}"
            + (f" on {scope}" if "devices" in p else "")
            + (f": {p.get('reason')}")
        )
    return " ".join(f"{k}={_short(v)}" for k, v in sorted(p.items()) if v is not None)


def _short(value: object) -> str:
    """A payload member as its line shows it: a string as it is, a list (such as a run's plan
    digests) by its length, anything else as JSON; the JSON form has them whole."""
    if isinstance(value, str):
        return value
    if isinstance(value, list):
        return f"{len(value)} item{'' if len(value) == 1 else 's'}"
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


def render_report(console: Console, report: Report, seconds: float, where: str) -> None:
    """Every problem on its own line, then what was checked and how fast."""
    for problem in report.problems:
        console.print(f"[red]FAIL[/] {markup_safe(str(problem))}", highlight=False)
    for finding in report.findings:
        console.print(f"[yellow]FINDING[/] {markup_safe(str(finding))}", highlight=False)
    for deletion in report.deletions:
        console.print(f"deleted lawfully: {markup_safe(str(deletion))}", highlight=False)
    for note in report.notes:
        console.print(f"note: {markup_safe(note)}", highlight=False)
    counted = ", ".join(counted_as(n, what) for what, n in report.counts.items())
    records = report.counts.get("readings", 0) + report.counts.get("gap records", 0)
    rate = f" ({records / seconds:,.0f} records/s)" if seconds > 0 and records else ""
    count = len(report.problems)
    verdict = (
        "[green]verified[/]" if report.ok else f"[red]{count} problem{'s' if count > 1 else ''}[/]"
    )
    console.print(
        f"{verdict}: {markup_safe(where)}: {counted} in {seconds:.2f} s{rate}", highlight=False
    )


_ONE = {
    "audit entries": "audit entry",
    "batches": "batch",
    "site logs witnessed": "site log witnessed",
}
"""The counts whose singular is not the plural without its ``s``."""


def counted_as(n: int, what: str) -> str:
    """``1 checkpoint``, ``2 checkpoints``: a count of the report, named in the plural."""
    return f"1 {_ONE.get(what, what.removesuffix('s'))}" if n == 1 else f"{n:,} {what}"


def report_json(report: Report, seconds: float) -> dict[str, Any]:
    return {
        "ok": report.ok,
        "seconds": round(seconds, 3),
        "counts": report.counts,
        "problems": [{"item": p.item, "message": p.message} for p in report.problems],
        "findings": [{"item": p.item, "message": p.message} for p in report.findings],
        "deletions": [{"item": p.item, "message": p.message} for p in report.deletions],
        "notes": report.notes,
    }


@contextlib.contextmanager
def progress_of(console: Console, show: bool) -> Iterator[OnProgress | None]:
    """A progress callback drawing a live count on a terminal; ``None`` elsewhere."""
    if not (show and console.is_terminal):
        yield None
        return
    columns = (
        SpinnerColumn(),
        TextColumn("verifying: {task.completed:,} records"),
        TimeElapsedColumn(),
    )
    with Progress(*columns, console=console, transient=True) as bar:
        task = bar.add_task("verify", total=None)
        yield lambda done: bar.update(task, completed=done)
