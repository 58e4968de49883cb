"""``converge diff``: what a policy change does to every point, marked stricter or looser.

The review view of a policy pull request. Both policy sets are compiled
against the same sites at the same date; each point's merged facets are
compared. A change is *stricter* when it demands more of the data's
handling (a shorter interval, longer minimum retention, a shorter maximum
retention, more keys, more denials, fewer grants), *looser* when it demands
less, and *changed* when it is neither (a cron set replaced by another).
"""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict, dataclass
from typing import Any

import pluggy
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from engine.commands.findings import findings_text
from engine.commands.options import Subparsers, add_inputs, compile_key_store
from engine.compile import Compilation, Inputs, compile_project
from engine.compile.merge import RULES, MergedPoint, describe
from engine.errors import ConvergeError
from engine.model import FACETS, FacetValue

GRANTS = frozenset({"access.read", "access.export", "access.hold"})
"""Facets where *more* is looser: a grant lets more people see the data."""


@dataclass(frozen=True)
class Change:
    point: str
    facet: str
    old: str | None
    new: str | None
    change: str  # stricter | looser | changed | governed | ungoverned


def register(commands: Subparsers) -> None:
    parser = commands.add_parser(
        "diff", help="what a policy change does to each point: -p OLD -p NEW -s SITE"
    )
    add_inputs(parser)
    parser.add_argument("--format", choices=("text", "json"), default="text")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace, pm: pluggy.PluginManager, console: Console) -> int:
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
        render(console, changes)
    return 1 if changes else 0


def diff(old: Compilation, new: Compilation) -> list[Change]:
    before = {mp.target.ref: mp for mp in old.merged.points}
    changes: list[Change] = []
    for mp in new.merged.points:
        was = before.get(mp.target.ref)
        if was is not None:
            changes += diff_point(was, mp)
    return changes


def diff_point(old: MergedPoint, new: MergedPoint) -> list[Change]:
    ref = new.target.ref
    if old.governed != new.governed:
        state = "governed" if new.governed else "ungoverned"
        return [Change(ref, "*", None, None, state)]
    changes = []
    for facet in FACETS:
        a, b = old.facets.get(facet), new.facets.get(facet)
        before = a.value if a else None
        after = b.value if b else None
        if before != after:
            changes.append(
                Change(
                    ref,
                    facet.removesuffix("_ms"),
                    _shown(facet, before),
                    _shown(facet, after),
                    direction(facet, before, after),
                )
            )
    return changes


def _shown(facet: str, value: FacetValue | None) -> str | None:
    return None if value is None else describe(facet, value)


def direction(facet: str, old: FacetValue | None, new: FacetValue | None) -> str:
    """``stricter``, ``looser`` or ``changed`` for one facet going from ``old`` to ``new``.

    An absent facet demands nothing, so adding one is stricter and removing
    one looser, except for grants, where it is the other way round.
    """
    more_is_looser = facet in GRANTS
    if old is None or new is None:
        added = old is None
        return "stricter" if added != more_is_looser else "looser"
    rule = RULES[facet]
    if rule.kind == "union":
        a, b = set(old), set(new)  # type: ignore[arg-type]
        if a < b or b < a:
            grew = a < b
            return "stricter" if grew != more_is_looser else "looser"
        return "changed"
    before, after = rule.order(old), rule.order(new)
    new_wins = after < before if rule.kind == "min" else after > before  # type: ignore[operator]
    return "stricter" if new_wins else "looser"


def diff_json(changes: list[Change]) -> list[dict[str, Any]]:
    return [asdict(c) for c in changes]


def render(console: Console, changes: list[Change]) -> None:
    if not changes:
        console.print("no point changes")
        return
    colour = {
        "stricter": "green",
        "looser": "red",
        "changed": "yellow",
        "governed": "green",
        "ungoverned": "red",
    }
    table = Table(
        "point",
        "facet",
        "old",
        "new",
        "change",
        title=f"{len(changes)} changes",
        title_justify="left",
    )
    for c in changes:
        table.add_row(
            c.point,
            c.facet,
            escape(c.old or "-"),
            escape(c.new or "-"),
            f"[{colour[c.change]}]{c.change}[/]",
        )
    console.print(table)
