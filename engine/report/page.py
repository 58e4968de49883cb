"""The report page: one static HTML file, inline CSS and SVG, no script, nothing fetched.

A Content-Security-Policy in the page itself forbids every fetch (scripts,
images, fonts, frames, connections), so a value that slipped through
escaping still could not reach the network. The print stylesheet keeps
headings with what follows them, table rows and charts whole, and repeats
table headers on each page.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime

from engine.audit import AuditEntry, actor_label
from engine.durations import format_duration
from engine.plans.body import PlanBody, PlanPoint
from engine.report import facts as f
from engine.report.chart import chart, legend
from engine.report.health import DAY_MS, Tally
from engine.report.html import Safe, count, el, esc, join, table

TITLE = "Converge evidence report"
SHOWN_REFUSALS = 20
POLICY = (
    "default-src 'none'; style-src 'unsafe-inline'; img-src data:; "
    "base-uri 'none'; form-action 'none'"
)
STYLE = """
body{font:13px/1.4 system-ui,-apple-system,"Segoe UI",sans-serif;margin:2em auto;max-width:62em;
color:#111;padding:0 1em}
h1{font-size:1.6em;margin:0 0 .3em}h2{font-size:1.25em;margin:1.6em 0 .4em;
border-bottom:2px solid #333}h3{font-size:1.05em;margin:1.2em 0 .3em}
table{border-collapse:collapse;margin:.3em 0 .8em;width:100%}
td,th{border:1px solid #bbb;padding:2px 6px;text-align:left;vertical-align:top}
th{background:#eee}.n{text-align:right;font-variant-numeric:tabular-nums}
code,.id{font-family:ui-monospace,monospace;font-size:.92em;word-break:break-all}
.verdict{font-size:1.15em;font-weight:bold;padding:.5em .8em;border:2px solid}
.ok{color:#1b5e20;border-color:#1b5e20;background:#e8f5e9}
.bad{color:#b71c1c;border-color:#b71c1c;background:#ffebee}
.warn{color:#e65100}.none{color:#555;font-style:italic}
.chart{width:100%;height:auto;max-height:12em;font-size:10px}
.legend .key{margin-right:1em;white-space:nowrap}
.legend i{display:inline-block;width:.9em;height:.9em;margin-right:.3em;vertical-align:-.1em}
dl{display:grid;grid-template-columns:max-content auto;gap:.1em 1em}dt{font-weight:bold}dd{margin:0}
@page{size:A4;margin:14mm}
@media print{body{margin:0;max-width:none;font-size:10pt}
h2,h3{break-after:avoid}tr,.chart,.verdict,dl{break-inside:avoid}thead{display:table-header-group}
section.major{break-before:page}*{print-color-adjust:exact;-webkit-print-color-adjust:exact}}
"""


def page(facts: f.Facts) -> bytes:
    """The whole report."""
    body = [
        el("h1", TITLE),
        _about(facts),
        _glance(facts),
        _verification(facts),
        _policies(facts),
        _coverage(facts),
        _exceptions(facts),
        _health(facts),
        _retention(facts),
        _decisions(facts),
        _checkpoints(facts),
    ]
    head = join(
        [
            Safe('<meta charset="utf-8">'),
            Safe(f'<meta http-equiv="Content-Security-Policy" content="{esc(POLICY)}">'),
            Safe('<meta name="viewport" content="width=device-width, initial-scale=1">'),
            el("title", TITLE),
            el("style", Safe(STYLE)),
        ]
    )
    document = f'<!doctype html>\n<html lang="en">\n<head>{head}</head>\n'
    return f"{document}<body>{join(body)}</body>\n</html>\n".encode()


def section(ident: str, title: str, *parts: object, major: bool = False) -> Safe:
    return el("section", el("h2", title), *parts, id=ident, class_="major" if major else None)


def _about(facts: f.Facts) -> Safe:
    r = facts.decision.request
    who = r.principal if r.identity is None else f"{r.identity.printed_name} ({r.principal})"
    roles = ", ".join(sorted(r.identity.roles)) if r.identity else "none"
    span = facts.scope.span
    refused = [f"{p.device}/{p.point}: {p.reason}" for p in facts.decision.denied]
    if len(refused) > SHOWN_REFUSALS:
        more = len(refused) - SHOWN_REFUSALS
        refused = [*refused[:SHOWN_REFUSALS], f"and {more} more (the decision's entry lists all)"]
    rows = [
        ("Made", f"{_instant(facts.made_at.isoformat())} (UTC)"),
        ("For", f"{who}; roles {roles}"),
        ("Guard decision", el("span", facts.decision.id, class_="id")),
        ("Range", f"{span.start or 'the beginning'} to {span.end or 'now'}"),
        ("Devices", ", ".join(facts.scope.points) or "none"),
        ("Store", facts.where),
        ("Audit log", el("span", facts.origin or "unknown", class_="id")),
    ]
    if refused:
        rows.append(("Refused", join(el("div", line) for line in refused)))
    return el("dl", *(join([el("dt", k), el("dd", v)]) for k, v in rows))


def _glance(facts: f.Facts) -> Safe:
    total = Tally()
    for row in facts.health.rows():
        total.add(row.tally)
    today = facts.made_at.date()
    live = [e for e in facts.exceptions if e.status(today) != "expired"]
    lines = [
        _verdict_line(facts.verdict),
        el(
            "p",
            f"{count(total.scheduled)} scheduled samples: {count(total.readings)} readings, "
            f"{count(total.gap_slots)} gaps, {count(total.unaccounted)} unaccounted; "
            f"{count(total.extra)} extra readings. {_many(len(facts.policies), 'policy')}, "
            f"{_many(len(live), 'exception')} in force.",
        ),
    ]
    return el("section", *lines, id="glance")


def _verdict_line(verdict: f.Verdict | None) -> Safe:
    if verdict is None:
        return el("p", "The store was not verified for this report.", class_="verdict bad")
    report = verdict.report
    when = _instant(verdict.at.isoformat())
    if report.ok:
        return el(
            "p", f"Verified: the whole store verifies (checked {when} UTC).", class_="verdict ok"
        )
    n = len(report.problems)
    said = f"NOT verified: {n} problem{'s' if n > 1 else ''} found (checked {when} UTC)."
    return el("p", said, class_="verdict bad")


def _verification(facts: f.Facts) -> Safe:
    verdict = facts.verdict
    if verdict is None:
        return section("verification", "Verification", el("p", "Not verified.", class_="none"))
    report = verdict.report
    checked = ", ".join(f"{count(n)} {what}" for what, n in report.counts.items())
    keys = table(
        ("key", "version", "key ID", "SHA-256 of the public key", "valid from", "valid until"),
        (
            (
                v.name,
                v.version,
                v.key_id,
                el("span", v.sha256, class_="id"),
                _instant(v.not_before.isoformat()),
                "open" if v.not_after is None else _instant(v.not_after.isoformat()),
            )
            for v in verdict.keys
        ),
        numeric={1},
        empty="No key was trusted: nothing can verify.",
    )
    problems = table(("item", "problem"), ((p.item, p.message) for p in report.problems[:100]))
    return section(
        "verification",
        "Verification",
        el(
            "p",
            f"converge audit verify ran over the whole store when this report was made, "
            f"{_instant(verdict.at.isoformat())} UTC, in {verdict.seconds:.2f} s: {checked}. "
            f"It trusted only the keys of {verdict.checking.source} (the audit log's key: "
            f"{verdict.checking.audit_key}); a verdict is only as good as the keys it trusted. "
            "An audit bundle is checked on its own, with the auditor's keys: python verify.py "
            "BUNDLE.zip --trust KEYS.json.",
        ),
        el("h3", "Keys trusted"),
        keys,
        el("h3", f"Problems ({len(report.problems)})"),
        problems,
        *(el("p", "Note: ", note) for note in report.notes),
    )


def _policies(facts: f.Facts) -> Safe:
    rows = [
        (
            use.id,
            "not given: its policy file was not read (converge report --policies; a bundle"
            " carries only the files its plans name with the bytes they name)"
            if use.controls is None
            else "; ".join(use.controls) or "none",
            len(use.points),
            ", ".join(sorted(use.files)),
        )
        for use in facts.policies
    ]
    return section(
        "policies",
        "Policies and the controls they cite",
        table(("policy", "controls", "points", "written in"), rows, numeric={2}),
        major=True,
    )


def _coverage(facts: f.Facts) -> Safe:
    parts: list[object] = [
        el(
            "p",
            "What the plans in force demand of each point in scope: the plan each batch "
            "names, or the device's latest plan where the range holds no batch.",
        ),
    ]
    points: dict[str, list[f.ScopedPoint]] = {}
    for sp in facts.points:
        points.setdefault(sp.device, []).append(sp)
    for device, plans in facts.plans.items():
        parts.append(el("h3", device))
        parts.append(
            table(
                ("plan", "compiled as of", "valid until", "points"),
                (_plan_row(p) for p in plans),
                numeric={3},
            )
        )
        parts.append(
            table(
                ("point", "signal", "capture", "signing", "retention", "access", "policies"),
                (_point_row(sp.point) for sp in points.get(device, ())),
            )
        )
    return section("coverage", "Coverage", *parts)


def _plan_row(plan: PlanBody) -> Sequence[object]:
    return (
        el("span", plan.digest, class_="id"),
        plan.as_of,
        plan.valid_until or "–",
        len(plan.points),
    )


def _point_row(point: PlanPoint) -> Sequence[object]:
    c, s, r, a = point.capture, point.signing, point.retention, point.access
    capture = [f"every {format_duration(c.every_ms)}" if c.every_ms else "", *c.cron]
    if c.deadband is not None:
        capture.append(f"on change (deadband {c.deadband:g})")
    signing = f"required: {', '.join(s.keys)}" if s.required else "not required"
    keep = []
    if r.keep_at_least_ms:
        keep.append(f"≥ {format_duration(r.keep_at_least_ms)}")
    if r.keep_at_most_ms:
        keep.append(f"≤ {format_duration(r.keep_at_most_ms)}")
    if r.on_expiry:
        keep.append(f"then {r.on_expiry}")
    access = [
        f"{what} {', '.join(roles)}"
        for what, roles in (
            ("read", a.read),
            ("export", a.export),
            ("hold", a.hold),
            ("deny", a.deny),
        )
        if roles
    ]
    signal = " ".join(x for x in (point.signal, point.unit and f"[{point.unit}]") if x)
    return (
        point.name,
        signal,
        "; ".join(x for x in capture if x),
        signing,
        " ".join(keep),
        "; ".join(access),
        ", ".join(point.policies),
    )


def _exceptions(facts: f.Facts) -> Safe:
    today = facts.made_at.date()
    rows = [
        (
            use.waiver.policy,
            ", ".join(use.waiver.facets),
            use.waiver.reason,
            use.waiver.approved_by,
            use.waiver.expires,
            _status(use.status(today)),
            ", ".join(sorted(use.points)),
            use.waiver.at,
        )
        for use in facts.exceptions
    ]
    valid = sorted(
        {p.valid_until for plans in facts.plans.values() for p in plans if p.valid_until}
    )
    return section(
        "exceptions",
        "Exceptions and their expiry",
        el(
            "p",
            f"Judged on {today.isoformat()}. A plan that relies on an exception must not "
            f"run from its valid until on: " + (", ".join(valid) or "no plan relies on one") + ".",
        ),
        table(
            (
                "policy",
                "waives",
                "reason",
                "approved by",
                "expires",
                "status",
                "points",
                "written at",
            ),
            rows,
            empty="No exception is in force for these points.",
        ),
    )


def _status(status: str) -> Safe:
    return el("span", status, class_="warn" if status != "in force" else None)


def _health(facts: f.Facts) -> Safe:
    health = facts.health
    parts: list[object] = [
        el(
            "p",
            "Per device and UTC day: the slots its plan scheduled from its first slot on "
            "record to its last, the readings and gap records that fill them, and the slots "
            "nothing on record accounts for (docs/report.md). Extra readings are on-change "
            "readings and subscription deliveries beyond the slots.",
        ),
    ]
    timelines = {d: health.timeline(d, facts.period_ms) for d in facts.scope.points}
    starts = [start for timeline in timelines.values() for start, _ in timeline]
    for device, timeline in timelines.items():
        parts.append(el("h3", device))
        if not timeline:
            parts.append(el("p", "No records in the range.", class_="none"))
            continue
        reasons = sorted({r for _, t in timeline for r in t.gaps})
        extent = (min(starts), max(starts))
        parts += [chart(device, timeline, facts.period_ms, extent), legend(reasons)]
        parts.append(
            _tally_table(
                "day",
                (
                    (datetime.fromtimestamp(start / 1000, UTC).date().isoformat(), t)
                    for start, t in health.timeline(device, DAY_MS)
                ),
            )
        )
        parts.append(_tally_table("point", sorted(health.totals(device).items())))
        parts.append(_runs(facts, device))
        parts += [_entry_list(e) for e in facts.dropped if e.payload.get("device") == device]
    return section("health", "Collection health", *parts, major=True)


def _tally_table(first: str, rows: Iterable[tuple[str, Tally]]) -> Safe:
    return table(
        (first, "scheduled", "readings", "gaps", "gaps by reason", "unaccounted", "extra"),
        (
            (
                key,
                count(t.scheduled),
                count(t.readings),
                count(t.gap_slots),
                _reasons(t.gaps),
                _unaccounted(t.unaccounted),
                count(t.extra),
            )
            for key, t in rows
        ),
        numeric={1, 2, 3, 5, 6},
    )


def _reasons(gaps: Counter[str]) -> str:
    return ", ".join(f"{reason} {count(n)}" for reason, n in sorted(gaps.items()))


def _unaccounted(n: int) -> object:
    return el("span", count(n), class_="warn") if n else Safe("0")


def _runs(facts: f.Facts, device: str) -> Safe:
    rows = [
        (
            run.started.time,
            run.stopped.time if run.stopped else "no clean stop",
            actor_label(run.started.actor),
        )
        for run in facts.runs
        if device in run.devices
    ]
    return join(
        [
            el("p", "Collector runs:"),
            table(("started", "stopped", "by"), rows, empty="No collector run recorded."),
        ]
    )


def _entry_list(entry: AuditEntry) -> Safe:
    return el("p", f"{entry.time} {entry.kind}: {f.summary(entry.payload)}", class_="warn")


def _retention(facts: f.Facts) -> Safe:
    kinds = ", ".join(f.RETENTION_KINDS)
    return section(
        "retention",
        "Retention runs and legal holds",
        el("p", f"Audit entries of the kinds {kinds}."),
        _entries(facts.retention, "No retention run or legal hold is recorded for these devices."),
    )


def _entries(entries: Sequence[AuditEntry], empty: str) -> Safe:
    return table(
        ("entry", "time", "kind", "by", "what"),
        ((e.seq, e.time, e.kind, actor_label(e.actor), f.summary(e.payload)) for e in entries),
        numeric={0},
        empty=empty,
    )


def _decisions(facts: f.Facts) -> Safe:
    rows = []
    for e in facts.decisions:
        p = e.payload
        points = [x for x in p.get("points", ()) if isinstance(x, dict)]
        allowed = sum(1 for x in points if x.get("allowed"))
        rows.append(
            (
                e.seq,
                e.time,
                p.get("principal"),
                ", ".join(p.get("roles") or ()),
                p.get("action"),
                p.get("outcome"),
                f"{allowed} of {len(points)}",
                p.get("refusal") or "",
                el("span", p.get("decision"), class_="id"),
            )
        )
    return section(
        "decisions",
        "Access decisions",
        el(
            "p",
            f"Every access.decision entry about these devices (the latest "
            f"{f.SHOWN_DECISIONS} at most), this report's own included.",
        ),
        table(
            (
                "entry",
                "time",
                "principal",
                "roles",
                "action",
                "outcome",
                "points allowed",
                "refusal",
                "decision",
            ),
            rows,
            numeric={0},
        ),
    )


def _checkpoints(facts: f.Facts) -> Safe:
    names = f.signers(facts.origin, facts.verdict.keys if facts.verdict else ())
    shown = facts.checkpoints[-f.SHOWN_CHECKPOINTS :]
    rows = [
        (
            c.id,
            count(c.size),
            c.signed_at or "–",
            el("span", c.root, class_="id"),
            ", ".join(names.get(k, f"key ID {k}") for k in c.key_ids),
        )
        for c in reversed(shown)
    ]
    return section(
        "checkpoints",
        "Checkpoint history",
        el(
            "p",
            f"{len(facts.checkpoints)} signed checkpoints of the audit log, newest first "
            f"({len(shown)} shown).",
        ),
        table(("id", "size", "signed at", "root", "signed by"), rows, numeric={0, 1}),
        major=True,
    )


def _many(n: int, thing: str) -> str:
    plural = thing[:-1] + "ies" if thing.endswith("y") else thing + "s"
    return f"{n} {thing if n == 1 else plural}"


def _instant(text: str) -> str:
    """An ISO time as ``2026-06-01 12:00:05`` (UTC)."""
    return text.replace("T", " ")[:19]


__all__ = ["page"]
