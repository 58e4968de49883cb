"""Stage report: what a person reads of the evidence, as one static HTML page.

:func:`render` makes the page for an export decision: the points it allows,
over its range. ``converge report`` writes it on its own, and every bundle
``converge export`` writes carries it as ``report.html``. The page fetches
nothing (inline CSS and SVG, no script, a Content-Security-Policy that
forbids every request) and prints. docs/report.md says what it shows and
where each number comes from.

- :mod:`~engine.report.health`: per device, point and period, the slots the
  plan promised and what filled them (also ``converge audit gaps``);
- :mod:`~engine.report.facts`: everything else the page says, from the store,
  and the store's verification;
- :mod:`~engine.report.page`, :mod:`~engine.report.chart`,
  :mod:`~engine.report.html`: the page, its SVG charts, escaping.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from engine.access.guard import Decision
from engine.report.facts import Checking, gather
from engine.report.health import Readings
from engine.report.page import page
from engine.store.store import Store


def render(
    store: Store,
    decision: Decision,
    checking: Checking | None = None,
    controls: Mapping[str, Sequence[str]] | None = None,
    counted: Mapping[int, Readings] | None = None,
) -> bytes:
    """The report page of what ``decision`` allows: verified with ``checking``'s keys when
    given, the policies' controls from ``controls`` (policy id: controls) when given; the
    batches in ``counted`` (by id) by their readings there, not read again."""
    return page(gather(store, decision, checking, controls, counted))


__all__ = ["Checking", "Readings", "render"]
