"""``converge explain``: why a point gets what it gets.

For each facet of a point: the merged value, the policies that produced it
(with ``path:line:col``), every losing candidate and the rule that made it
lose, and every demand an exception waived; for a governed point that will
not be collected, why (no governing policy sets capture, or a waiver removed
it). The JSON form is the same data.
"""

from __future__ import annotations

import argparse
import json
from difflib import get_close_matches
from typing import Any

import pluggy
from rich.console import Console
from rich.markup import escape

from engine.commands.options import Subparsers, add_inputs, compile_or_fail
from engine.compile import Compilation
from engine.compile.merge import MergedPoint, describe
from engine.errors import ConvergeError
from engine.model import facet_group


def register(commands: Subparsers) -> None:
    parser = commands.add_parser("explain", help="why a point gets what it gets")
    parser.add_argument("ref", metavar="DEVICE[/POINT]")
    add_inputs(parser)
    parser.add_argument("--format", choices=("text", "json"), default="text")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace, pm: pluggy.PluginManager, console: Console) -> int:
    entries = explain(compile_or_fail(args, pm), args.ref)
    if args.format == "json":
        print(json.dumps(entries, indent=2))
    else:
        render(console, entries)
    return 0


def explain(result: Compilation, ref: str) -> list[dict[str, Any]]:
    """Explanations of ``DEVICE`` (all its points) or ``DEVICE/POINT``."""
    device, _, point = ref.partition("/")
    chosen = [
        mp
        for mp in result.merged.points
        if mp.target.device.id == device and (not point or mp.target.point.name == point)
    ]
    if not chosen:
        near = nearest_ref(result, device, point)
        hint = f" (did you mean '{near}'?)" if near else ""
        raise ConvergeError(f"no point matches '{ref}' in the compiled sites{hint}")
    return [explain_point(mp) for mp in chosen]


def nearest_ref(result: Compilation, device: str, point: str) -> str | None:
    """The existing ``DEVICE[/POINT]`` nearest to a mistyped one: the device, then its point."""
    points: dict[str, list[str]] = {}
    for mp in result.merged.points:
        points.setdefault(mp.target.device.id, []).append(mp.target.point.name)
    if device not in points:
        close = get_close_matches(device, sorted(points), n=1)
        if not close:
            return None
        device = close[0]
        if not point or point in points[device]:
            return f"{device}/{point}" if point else device
    close = get_close_matches(point, points[device], n=1)
    return f"{device}/{close[0]}" if close else None


def explain_point(mp: MergedPoint) -> dict[str, Any]:
    point = mp.target.point
    return {
        "point": mp.target.ref,
        "signal": point.signal,
        "unit": point.unit,
        "at": str(point.location),
        "governed": mp.governed,
        "collected": mp.collected,
        "not_collected": mp.not_collected(),
        "policies": sorted(p.id for p in mp.policies),
        "facets": {facet: _facet(mp, facet) for facet in mp.facets},
        "waived": _waived(mp),
    }


def _facet(mp: MergedPoint, facet: str) -> dict[str, Any]:
    merged = mp.facets[facet]
    shown = describe(facet, merged.value)
    return {
        "value": shown,
        "rule": merged.rule.why,
        "won": [{"policy": c.policy, "at": str(c.location)} for c in merged.winners],
        "lost": [
            {
                "policy": c.policy,
                "at": str(c.location),
                "value": describe(facet, c.value),
                "why": f"{merged.rule.why} ({shown})",
            }
            for c in merged.candidates
            if not c.won
        ],
    }


def _waived(mp: MergedPoint) -> list[dict[str, Any]]:
    """Each waiver with the demands it removed from its own policy."""
    policies = {p.id: p for p in mp.policies}
    entries = []
    for waiver in mp.waived:
        exc = waiver.exception
        removed = {
            facet: describe(facet, demand.value)
            for facet, demand in policies[waiver.policy].demands.items()
            if facet_group(facet) in exc.waive
        }
        entries.append(
            {
                "policy": waiver.policy,
                "at": str(exc.location),
                "facets": sorted(exc.waive),
                "removed": removed,
                "reason": exc.reason,
                "approved_by": exc.approved_by,
                "expires": exc.expires.isoformat(),
            }
        )
    return entries


def render(console: Console, entries: list[dict[str, Any]]) -> None:
    for entry in entries:
        console.print(_heading(entry), highlight=False)
        if not entry["governed"]:
            console.print("  ungoverned: no policy selects this point, so it is not collected")
            continue
        if entry["not_collected"]:
            console.print(f"  [yellow]not collected[/]: {escape(entry['not_collected'])}")
        for facet, info in entry["facets"].items():
            _render_facet(console, facet, info)
        for waiver in entry["waived"]:
            console.print(
                f"  [yellow]waived[/] {', '.join(waiver['facets'])} of {waiver['policy']} "
                f"until {waiver['expires']}: {escape(waiver['reason'])} "
                f"(approved by {escape(waiver['approved_by'])}, {escape(waiver['at'])})",
                highlight=False,
            )
        console.print()


def _render_facet(console: Console, facet: str, info: dict[str, Any]) -> None:
    spelled = facet.removesuffix("_ms")
    console.print(
        f"  [bold]{spelled}[/] = [cyan]{escape(info['value'])}[/]  [dim]({info['rule']})[/]",
        highlight=False,
    )
    for won in info["won"]:
        console.print(f"      from {won['policy']} @ {escape(won['at'])}", highlight=False)
    for lost in info["lost"]:
        console.print(
            f"      [dim]lost {escape(lost['value'])} of {lost['policy']} @ "
            f"{escape(lost['at'])}[/]",
            highlight=False,
        )


def _heading(entry: dict[str, Any]) -> str:
    kind = ", ".join(x for x in (entry["signal"], entry["unit"]) if x)
    governed = ", ".join(entry["policies"]) or "nothing"
    return f"[bold]{entry['point']}[/] ({kind}) at {escape(entry['at'])}\n  governed by {governed}"
