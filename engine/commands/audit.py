"""How the evidence commands print: audit entries, verification reports and their progress."""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

from engine.audit import AuditEntry
from engine.verify import Progress as OnProgress
from engine.verify import Report

_SUMMARY = ("batch.stored", "batch.dropped", "plan.deployed")


def render_entries(console: Console, entries: Iterable[AuditEntry]) -> None:
    """One line per entry: sequence number, time, kind, actor and what it is about."""
    shown = 0
    for entry in entries:
        console.print(
            f"{entry.seq:>7}  {entry.time}  [bold]{entry.kind:<17}[/]"
            f"  {escape(entry.actor)}  {escape(_about(entry))}",
            highlight=False,
        )
        shown += 1
    if not shown:
        console.print("no entries")


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
    return " ".join(f"{k}={_short(v)}" for k, v in sorted(p.items()))


def _short(value: object) -> object:
    """Lists (such as a run's plan digests) by their length; the JSON form has them whole."""
    return f"{len(value)} items" if isinstance(value, list) else value


def render_report(console: Console, report: Report, seconds: float, where: str) -> None:
    """Every problem on its own line, then what was checked and how fast."""
    for problem in report.problems:
        console.print(f"[red]FAIL[/] {escape(str(problem))}", highlight=False)
    for note in report.notes:
        console.print(f"note: {escape(note)}", highlight=False)
    counted = ", ".join(f"{n:,} {what}" for what, n in report.counts.items())
    records = report.counts.get("readings", 0) + report.counts.get("gap records", 0)
    rate = f" ({records / seconds:,.0f} records/s)" if seconds > 0 and records else ""
    count = len(report.problems)
    verdict = (
        "[green]verified[/]" if report.ok else f"[red]{count} problem{'s' if count > 1 else ''}[/]"
    )
    console.print(
        f"{verdict}: {escape(where)}: {counted} in {seconds:.2f} s{rate}", highlight=False
    )


def report_json(report: Report, seconds: float) -> dict[str, Any]:
    return {
        "ok": report.ok,
        "seconds": round(seconds, 3),
        "counts": report.counts,
        "problems": [{"item": p.item, "message": p.message} for p in report.problems],
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
