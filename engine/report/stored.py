"""The store reads only the report and ``converge audit gaps`` need, beside engine.store.data's."""

from __future__ import annotations

from collections.abc import Collection, Iterator

from sqlalchemy import Connection, func, select

from engine.store.reads import as_bytes
from engine.store.tables import BATCHES, GAPS

RUN_MEMBER = b'"last_scheduled_at":'
"""What the leaf of a gap record of a run of slots holds (docs/records.md)."""


def batch_before(conn: Connection, device: str, moment: str | None) -> bool:
    """Whether ``device`` has a batch whose window starts before ``moment``."""
    if moment is None:
        return False
    query = select(BATCHES.c.id).where(BATCHES.c.device == device, BATCHES.c.window_start < moment)
    return conn.execute(query.limit(1)).first() is not None


def batch_after(conn: Connection, device: str, moment: str | None) -> bool:
    """Whether ``device`` has a batch whose window ends after ``moment``."""
    if moment is None:
        return False
    query = select(BATCHES.c.id).where(BATCHES.c.device == device, BATCHES.c.window_end > moment)
    return conn.execute(query.limit(1)).first() is not None


def gap_runs_into(conn: Connection, device: str, moment: str) -> Iterator[tuple[str, bytes]]:
    """(plan digest, leaf) of each gap record of a run of slots of ``device`` in a batch whose
    window ends by ``moment`` (a run is in the window of its first slot, so one of these may
    still fill slots of a range starting then; later batches are read with the range's)."""
    query = (
        select(BATCHES.c.plan_digest, GAPS.c.leaf)
        .join(BATCHES, BATCHES.c.id == GAPS.c.batch_id)
        .where(BATCHES.c.device == device, BATCHES.c.window_end <= moment)
    )
    for digest, stored in conn.execute(query):
        leaf = as_bytes(stored)
        if RUN_MEMBER in leaf:
            yield str(digest), leaf


def extent(conn: Connection, devices: Collection[str]) -> tuple[str | None, str | None]:
    """The first window start and the last window end of the devices' batches."""
    if not devices:
        return None, None
    query = select(func.min(BATCHES.c.window_start), func.max(BATCHES.c.window_end)).where(
        BATCHES.c.device.in_(sorted(devices))
    )
    first, last = conn.execute(query).one()
    return first, last
