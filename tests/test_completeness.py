"""Every slot accounted for: across a kill before the first batch, and a long outage.

A collector that starts again writes a ``shutdown`` gap record for every slot
no sealed record accounts for, of every point (polled or subscribed) of every
device of its plans, whether or not the device had a batch yet: from the end
of its last sealed batch, or from the first recorded start of a run that was to
collect it. A run of missed slots of one point is one record, so a long outage
costs at most one batch per device per window. Tests run on a SQLite file and
on a fresh PostgreSQL database.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from datetime import UTC, datetime, timedelta

import pytest
from evidence_kit import (
    T0,
    Site,
    collect,
    missed_slots,
    open_store,
    records,
    shutdown_gaps,
    stored_leaves,
    verify,
)
from sqlalchemy import func, select

from engine.evidence import EvidenceConfig, EvidenceSink, EvidenceTarget, open_evidence
from engine.store.spool import Spool
from engine.store.store import Store
from engine.store.tables import BATCHES

MS = timedelta(milliseconds=1)
PAST = EvidenceConfig(grace_ms=86_400_000)
"""Records of an hour ago are put as if live: no window is closed by the clock meanwhile."""


def batch_windows(store: Store, after_id: int) -> Counter[tuple[str, str]]:
    """How many batches stored after batch ``after_id`` each (device, window) has."""
    query = select(BATCHES.c.device, BATCHES.c.window_start).where(BATCHES.c.id > after_id)
    with store.reading() as conn:
        return Counter((device, start) for device, start in conn.execute(query))


def last_batch_id(store: Store) -> int:
    with store.reading() as conn:
        return int(conn.execute(select(func.coalesce(func.max(BATCHES.c.id), 0))).scalar_one())


# --- a long outage ------------------------------------------------------------------------


@pytest.mark.parametrize("outage", [timedelta(hours=6), timedelta(days=3)], ids=["hours", "days"])
def test_a_long_outage_restarts_into_one_batch_per_device_per_window(
    evidence_site, backend, tmp_path, outage
):
    start = T0 - outage - timedelta(seconds=150)
    store = open_store(evidence_site, backend)
    spool = Spool(tmp_path / "spool.db")
    asyncio.run(collect(evidence_site, store, spool, list(records(evidence_site, 150, start))))
    before, last = last_batch_id(store), start + timedelta(seconds=149)

    async def restart() -> int:
        keys = evidence_site.key_store()
        sink = EvidenceSink(evidence_site.plans, store, keys, spool, config=PAST)
        put = await sink.backfill(evidence_site.plans, T0, fallback_every_ms=1000)
        for record in records(evidence_site, 120, T0):  # collecting again (an hour ago)
            await sink.put(record)
        await sink.close()
        return put

    put = asyncio.run(restart())
    windows = batch_windows(store, before)
    assert windows and max(windows.values()) == 1, windows.most_common(3)
    # the outage's gap records are in one or two windows per device, then 2 minutes of data
    assert len(windows) <= len(evidence_site.plans) * 5
    expected = missed_slots(evidence_site.plans, last, T0)
    assert shutdown_gaps(store) == expected
    assert put == sum(map(len, expected.values()))
    runs = [r for r in stored_leaves(store) if r.get("slots")]
    assert len(runs) == len(expected)  # one record per point, whatever the outage's length
    report = verify(evidence_site, store)
    assert report.ok, report.problems
    spool.close()


# --- a first run killed before its first batch ----------------------------------------------


def first_run_killed(site: Site, target: EvidenceTarget) -> datetime:
    """Start a run (its start recorded), put 20 s of records, none sealed, and die: the
    records in memory are lost. When it started."""

    async def run() -> None:
        sink = open_evidence(site.plans, site.plans_dir, target, site.key_store(), EvidenceConfig())
        this_minute = datetime.now(UTC).replace(second=0, microsecond=0)  # one open window
        for record in records(site, 20, this_minute):
            await sink.put(record)
        assert sink.stats["stored"] == sink.stats["spooled"] == 0
        sink.sealer = None  # no close: everything in memory dies with the run

    started = datetime.now(UTC)
    asyncio.run(run())
    with Store.open_existing(target.db).reading() as conn:
        assert conn.execute(select(func.count()).select_from(BATCHES)).scalar_one() == 0
    return started


@pytest.mark.parametrize("restart", ["store-up", "store-away", "spool-lost"])
def test_a_first_run_killed_before_its_first_batch_is_accounted_for(
    evidence_site, backend, tmp_path, restart
):
    open_store(evidence_site, backend).close()
    target = EvidenceTarget(backend, tmp_path / "spool.db", tmp_path / "witness.jsonl")
    started = first_run_killed(evidence_site, target)
    until = started + timedelta(hours=1)  # the badge gateway is sampled every 15 min
    keys = evidence_site.key_store()

    async def again() -> int:
        if restart == "store-away":  # only the spool knows where the devices stand
            store = Store.attach(backend, "converge-test")
            spool = Spool(target.spool)
            sink = EvidenceSink(evidence_site.plans, store, keys, spool, store_error="away")
        else:
            spool_path = tmp_path / "new-spool.db" if restart == "spool-lost" else target.spool
            again = EvidenceTarget(backend, spool_path, target.witness)
            sink = open_evidence(
                evidence_site.plans, evidence_site.plans_dir, again, keys, EvidenceConfig()
            )
        put = await sink.backfill(evidence_site.plans, until, fallback_every_ms=1000)
        await sink.close()
        return put

    put = asyncio.run(again())
    with Store.open_existing(backend) as store:
        found = shutdown_gaps(store)
        report = verify(evidence_site, store)
    expected = missed_slots(evidence_site.plans, started - MS, until)
    assert {device for device, _ in expected} == {p.device.id for p in evidence_site.plans}
    assert found == expected
    assert put == sum(map(len, expected.values()))
    assert report.ok, report.problems
