"""Stage report: what a person reads of the evidence, as one static HTML page.

:func:`render` makes a printable page with no network access and no external
asset (inline CSS): the store, the export's principal and range, and what the
store holds. ``converge report`` writes it, and every bundle carries it.
"""

from __future__ import annotations

import html

from engine.access.guard import Decision
from engine.store.store import Store

STYLE = (
    "body{font:14px system-ui,sans-serif;margin:2em;color:#111}"
    "table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:2px 8px;text-align:left}"
)


def render(store: Store, decision: Decision | None) -> bytes:
    """The report page of ``store`` (for ``decision``'s export, when given)."""
    counts = store.counts()
    rows = "".join(f"<tr><th>{html.escape(k)}</th><td>{v:,}</td></tr>" for k, v in counts.items())
    who = (
        ""
        if decision is None
        else (
            f"<p>Exported for {html.escape(decision.request.principal)} "
            f"(decision {html.escape(decision.id)}).</p>"
        )
    )
    page = (
        f"<!doctype html><html lang=en><meta charset=utf-8><title>Converge evidence report"
        f"</title><style>{STYLE}</style><h1>Converge evidence report</h1>{who}"
        f"<p>Store {html.escape(store.where)}</p><table>{rows}</table></html>"
    )
    return page.encode()
