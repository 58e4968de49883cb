"""A device's readings and gaps over time as an inline SVG bar chart (no script, no asset).

One bar per period: readings that fill slots at the bottom, then each gap
reason's slots, then the slots nothing accounts for, then extra readings (on
change, subscription deliveries), stacked; every device's chart spans the
same periods, and its axis says their first and last instant and the
largest bar.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime

from engine.records import GapReason
from engine.report.health import Tally
from engine.report.html import Safe, el, join

WIDTH, HEIGHT, LEFT, BOTTOM, TOP = 720, 150, 48, 22, 8
READINGS_COLOUR = "#2e7d32"
EXTRA_COLOUR = "#a5d6a7"
UNACCOUNTED_COLOUR = "#9e9e9e"
COLOURS: dict[str, str] = {
    GapReason.TIMEOUT: "#ef6c00",
    GapReason.REFUSED: "#c62828",
    GapReason.EXCEPTION: "#6a1b9a",
    GapReason.BAD_QUALITY: "#ad1457",
    GapReason.MALFORMED: "#4527a0",
    GapReason.NO_DATA: "#f9a825",
    GapReason.RATE_LIMITED: "#00838f",
    GapReason.PLAN_EXPIRED: "#5d4037",
    GapReason.SHUTDOWN: "#37474f",
}
"""A colour per gap reason (the legend names them too: colour is never the only cue)."""


def colour(reason: str) -> str:
    return COLOURS.get(reason, "#000000")


def moment(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%d %H:%M:%S")


def chart(
    device: str, timeline: Sequence[tuple[int, Tally]], bucket_ms: int, extent: tuple[int, int]
) -> Safe:
    """The SVG of ``timeline`` (period start, tally), periods of ``bucket_ms`` from the first
    to the last of ``extent`` (period starts)."""
    first, last = extent[0], extent[1] + bucket_ms
    periods = max(1, (last - first) // bucket_ms)
    tallest = max((_height(t) for _, t in timeline), default=0) or 1
    width = (WIDTH - LEFT) / periods
    bars = [
        _bar(LEFT + (start - first) // bucket_ms * width, width, tally, tallest)
        for start, tally in timeline
    ]
    label = f"Readings and gaps of {device}, per {_period(bucket_ms)}"
    return el(
        "svg",
        el("title", label),
        *bars,
        *_axes(first, last, tallest),
        xmlns="http://www.w3.org/2000/svg",
        viewBox=f"0 0 {WIDTH} {HEIGHT}",
        role="img",
        aria_label=label,
        class_="chart",
    )


def _height(tally: Tally) -> int:
    return max(tally.scheduled, tally.readings + tally.gap_slots) + tally.extra


def _bar(x: float, width: float, tally: Tally, tallest: int) -> Safe:
    """One period's stack: readings, each reason's gaps, unaccounted slots, extra readings."""
    parts = [(tally.readings, READINGS_COLOUR)]
    parts += [(n, colour(reason)) for reason, n in sorted(tally.gaps.items())]
    parts += [(max(0, tally.unaccounted), UNACCOUNTED_COLOUR), (tally.extra, EXTRA_COLOUR)]
    scale = (HEIGHT - BOTTOM - TOP) / tallest
    y, rects = float(HEIGHT - BOTTOM), []
    for n, fill in parts:
        if n <= 0:
            continue
        h = n * scale
        y -= h
        rects.append(
            el(
                "rect",
                x=f"{x:.2f}",
                y=f"{y:.2f}",
                width=f"{max(width - 1, 0.5):.2f}",
                height=f"{h:.2f}",
                fill=fill,
            )
        )
    return join(rects)


def _axes(first: int, last: int, tallest: int) -> list[Safe]:
    base = HEIGHT - BOTTOM
    return [
        el("line", x1=LEFT, y1=base, x2=WIDTH, y2=base, stroke="#333"),
        el("line", x1=LEFT, y1=TOP, x2=LEFT, y2=base, stroke="#333"),
        el("text", f"{tallest:,}", x=LEFT - 4, y=TOP + 8, text_anchor="end"),
        el("text", "0", x=LEFT - 4, y=base, text_anchor="end"),
        el("text", moment(first), x=LEFT, y=HEIGHT - 6),
        el("text", moment(last), x=WIDTH, y=HEIGHT - 6, text_anchor="end"),
    ]


PERIODS_MS = [
    s * 1000
    for s in (1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 10800, 21600, 43200)
]
"""Chart periods shorter than a day: each divides a day, so days are sums of them."""
BARS = 96
"""At most this many bars (periods) a chart."""


def period_for(span_ms: int) -> int:
    """The shortest period that shows ``span_ms`` in at most :data:`BARS` bars: one of
    :data:`PERIODS_MS`, or a whole number of days."""
    for period in PERIODS_MS:
        if span_ms <= period * BARS:
            return period
    days = -(-span_ms // (86_400_000 * BARS))
    return days * 86_400_000


def _period(bucket_ms: int) -> str:
    for unit, ms in (("day", 86_400_000), ("hour", 3_600_000), ("minute", 60_000)):
        if bucket_ms % ms == 0:
            n = bucket_ms // ms
            return unit if n == 1 else f"{n} {unit}s"
    return f"{bucket_ms // 1000} s"


def legend(reasons: Sequence[str]) -> Safe:
    """The colours of a chart, named."""
    keys = [("readings", READINGS_COLOUR), *((r, colour(r)) for r in reasons)]
    keys += [("unaccounted", UNACCOUNTED_COLOUR), ("extra readings", EXTRA_COLOUR)]
    return el(
        "p",
        *(
            el("span", el("i", "", style=f"background:{fill}"), name, class_="key")
            for name, fill in keys
        ),
        class_="legend",
    )
