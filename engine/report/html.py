"""HTML from data with everything escaped: a value becomes markup only through :func:`esc`.

Point names, gap details, principal names and policy reasons come from
devices, sites and people; a ``<script>`` in any of them must show as text.
:class:`Safe` marks markup these helpers made; anything else is escaped.
"""

from __future__ import annotations

import html
from collections.abc import Collection, Iterable, Sequence


class Safe(str):
    """Markup made by these helpers (escaped already)."""

    __slots__ = ()


def esc(value: object) -> Safe:
    """``value`` as text in HTML (markup made here passes as it is; an integer's digits need
    no escaping)."""
    if isinstance(value, Safe):
        return value
    if type(value) is int:
        return Safe(value)
    return Safe(html.escape("" if value is None else str(value), quote=True))


def el(tag: str, *children: object, **attrs: object) -> Safe:
    """``<tag attrs>children</tag>``; ``class_`` names the class attribute."""
    said = "".join(
        f' {name.rstrip("_").replace("_", "-")}="{esc(value)}"'
        for name, value in attrs.items()
        if value is not None
    )
    return Safe(f"<{tag}{said}>{join(children)}</{tag}>")


def join(parts: Iterable[object]) -> Safe:
    return Safe("".join(esc(part) for part in parts))


def table(
    head: Sequence[str],
    rows: Iterable[Sequence[object]],
    numeric: Collection[int] = (),
    empty: str = "none",
) -> Safe:
    """A table, or ``empty`` in a paragraph when there is no row; columns in ``numeric`` align
    right; every row has a cell per ``head``. A report's tables run to thousands of rows:
    each row is one format of its escaped cells, not an :func:`el` per cell."""

    def tr(tag: str) -> str:
        opens = (f'<{tag} class="n">' if i in numeric else f"<{tag}>" for i in range(len(head)))
        return "<tr>" + "".join(f"{start}{{}}</{tag}>" for start in opens) + "</tr>"

    def row(cells: Sequence[object]) -> str:
        if len(cells) != len(head):
            raise ValueError(f"a row of {len(cells)} cells in a table of {len(head)} columns")
        return cells_of(*map(esc, cells))

    cells_of = tr("td").format
    body = "".join(map(row, rows))
    if not body:
        return el("p", empty, class_="none")
    head_row = tr("th").format(*map(esc, head))
    return Safe(f"<table><thead>{head_row}</thead><tbody>{body}</tbody></table>")


def count(n: int) -> Safe:
    """``n`` with thousands separated (digits and commas: markup as it is)."""
    return Safe(f"{n:,}")
