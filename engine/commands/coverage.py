"""``converge coverage``: what is governed, what is collected, and which waivers are in force.

Compliance teams read it before an audit: points no policy governs (they are
not collected), points governed but not captured (a policy such as
``applies: {}`` with retention only governs every point without collecting
any; a waived capture does the same), how many points each policy governs,
and every exception with its status: in force, expiring within 30 days, or
expired.
"""

from __future__ import annotations

import argparse
import json
from collections import Counter
from datetime import date, timedelta
from typing import Any

import pluggy
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from engine.commands.findings import one_line
from engine.commands.options import Subparsers, add_inputs, compile_or_fail
from engine.compile import Compilation

EXPIRING_WITHIN = timedelta(days=30)
COVERAGE_CODES = (
    "policy-governs-nothing",
    "exception-waives-nothing",
    "exception-expired",
    "selector-matches-nothing",
    "point-not-captured",
)


def register(commands: Subparsers) -> None:
    parser = commands.add_parser("coverage", help="governed and ungoverned points, exceptions")
    add_inputs(parser)
    parser.add_argument("--format", choices=("text", "json"), default="text")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace, pm: pluggy.PluginManager, console: Console) -> int:
    report = coverage(compile_or_fail(args, pm))
    if args.format == "json":
        print(json.dumps(report, indent=2))
    else:
        render(console, report)
    return 0


def coverage(result: Compilation) -> dict[str, Any]:
    points = result.merged.points
    governed = Counter(p.id for mp in points for p in mp.policies)
    return {
        "points": len(points),
        "governed": sum(mp.governed for mp in points),
        "collected": sum(mp.collected for mp in points),
        "ungoverned": [mp.target.ref for mp in points if not mp.governed],
        "not_captured": [mp.target.ref for mp in points if mp.governed and not mp.collected],
        "policies": [
            {
                "policy": p.id,
                "points": governed.get(p.id, 0),
                "controls": list(p.controls),
                "at": str(p.location),
            }
            for p in sorted(result.project.policies, key=lambda p: p.id)
        ],
        "exceptions": _exceptions(result),
        "findings": [f.as_dict() for f in result.findings if f.code in COVERAGE_CODES],
    }


def _exceptions(result: Compilation) -> list[dict[str, Any]]:
    waived = Counter(id(w.exception) for mp in result.merged.points for w in mp.waived)
    today = min(result.as_of.values(), default=date.today())
    rows = []
    for policy in sorted(result.project.policies, key=lambda p: p.id):
        for exc in policy.exceptions:
            rows.append(
                {
                    "policy": policy.id,
                    "at": str(exc.location),
                    "waive": sorted(exc.waive),
                    "reason": exc.reason,
                    "approved_by": exc.approved_by,
                    "expires": exc.expires.isoformat(),
                    "status": _status(exc.expires, today),
                    "points": waived.get(id(exc), 0),
                }
            )
    return rows


def _status(expires: date, today: date) -> str:
    if expires < today:
        return "expired"
    return "expiring" if expires - today <= EXPIRING_WITHIN else "in force"


def render(console: Console, report: dict[str, Any]) -> None:
    console.print(
        f"[bold]{report['governed']} of {report['points']} points governed,"
        f" {report['collected']} of them collected[/]"
    )
    policies = Table("policy", "points", "controls", title="Policies", title_justify="left")
    for row in report["policies"]:
        style = "yellow" if row["points"] == 0 else ""
        policies.add_row(
            row["policy"], str(row["points"]), escape("; ".join(row["controls"])), style=style
        )
    console.print(policies)
    _render_exceptions(console, report["exceptions"])
    if report["ungoverned"]:
        console.print(f"[bold]Ungoverned (not collected): {len(report['ungoverned'])}[/]")
        console.print("  " + ", ".join(report["ungoverned"]), highlight=False, markup=False)
    if report["not_captured"]:
        count = len(report["not_captured"])
        console.print(f"[bold]Governed but not collected (no capture in force): {count}[/]")
        console.print("  " + ", ".join(report["not_captured"]), highlight=False, markup=False)
    for finding in report["findings"]:
        console.print(
            f"{one_line(_place(finding))}: {finding['severity']}[{finding['code']}]: "
            f"{one_line(finding['message'])}",
            highlight=False,
            markup=False,
        )


def _render_exceptions(console: Console, rows: list[dict[str, Any]]) -> None:
    colour = {"expired": "red", "expiring": "yellow", "in force": "green"}
    if rows:
        console.print("[bold]Exceptions[/]")
    for row in rows:
        console.print(
            f"  [{colour[row['status']]}]{row['status']}[/] until {row['expires']}: "
            f"{', '.join(row['waive'])} of {row['policy']} waived on {row['points']} points "
            f"({escape(row['at'])})\n"
            f"      {escape(row['reason'])} (approved by {escape(row['approved_by'])})",
            highlight=False,
        )


def _place(finding: dict[str, Any]) -> str:
    return f"{finding['path']}:{finding['line']}:{finding['col']}"
