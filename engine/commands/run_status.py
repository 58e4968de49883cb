"""What ``converge run`` shows on a terminal: a live table while it runs, a summary after."""

from __future__ import annotations

import time
from contextlib import AbstractContextManager
from typing import Any

from rich.console import Console
from rich.live import Live
from rich.table import Table

from engine.collect.status import DeviceStats, Summary


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f}"


def _gaps(stats: DeviceStats) -> str:
    return ", ".join(f"{reason} {n}" for reason, n in sorted(stats.gaps.items())) or "0"


def _counts(stats: DeviceStats) -> list[str]:
    """Slots, the readings (held ones said) and gap records filling them, extra readings."""
    totals = stats.totals()
    held = f" ({totals['held']} held)" if totals["held"] else ""
    return [
        str(totals["slots"]),
        f"{totals['readings']}{held}",
        _gaps(stats),
        str(totals["extra"]),
    ]


def summary_table(summary: Summary, title: str = "collection summary") -> Table:
    """Per device: slots = readings + gaps; extra readings (on change, delivered) apart."""
    table = Table(title=title, title_justify="left")
    table.add_column("device", no_wrap=True)
    for column in (
        "state",
        "slots",
        "readings",
        "gaps",
        "extra",
        "late p50 ms",
        "late p99 ms",
        "errors",
    ):
        table.add_column(column)
    for s in summary.devices.values():
        table.add_row(
            s.device,
            s.state,
            *_counts(s),
            _ms(s.percentile(0.5)),
            _ms(s.percentile(0.99)),
            str(s.errors),
        )
    return table


class LiveReporter:
    """A live table on a terminal: per device its state, last read, lateness, gaps, errors."""

    def __init__(self, console: Console) -> None:
        self.console = console

    def event(self, device: str, kind: str, **fields: Any) -> None:
        pass  # the table shows the state the event changed

    def showing(self, summary: Summary) -> AbstractContextManager[object]:
        return Live(
            get_renderable=lambda: live_table(summary),
            console=self.console,
            refresh_per_second=4,
            transient=True,
        )


def live_table(summary: Summary) -> Table:
    table = Table(title="converge run", title_justify="left")
    table.add_column("device", no_wrap=True)
    for column in (
        "state",
        "last read",
        "slots",
        "readings",
        "gaps",
        "extra",
        "lateness p50 ms",
        "errors",
    ):
        table.add_column(column)
    now = time.time()
    for s in summary.devices.values():
        last = "-" if s.last_read is None else f"{now - s.last_read:.1f}s ago"
        table.add_row(s.device, s.state, last, *_counts(s), _ms(s.percentile(0.5)), str(s.errors))
    return table
