"""The evidence sink's sealer process (writer="process"): the same evidence, on another core."""

from __future__ import annotations

import asyncio
import hashlib
import random
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from evidence_kit import T0, Site, collect, open_store, records, verify

from engine.evidence.batcher import Window, batch_spec
from engine.evidence.config import EvidenceConfig
from engine.evidence.sealer import SealerError, cut, seal
from engine.evidence.sink import EvidenceSink
from engine.records import Gap, GapReason, Reading
from engine.sign.batch import ZERO_ROOT, make_batch, sign_batch
from engine.sign.leaf import leaf_bytes
from engine.sign.merkle import LEAF_PREFIX
from engine.store.sealed import SealedBatch
from engine.store.spool import Spool

PROCESS = EvidenceConfig(writer="process")


def _counts(
    site: Site, target: str, tmp_path: Path, config: EvidenceConfig | None, seconds: int = 150
) -> dict[str, int]:
    store = open_store(site, target)
    spool = Spool(tmp_path / f"spool-{config and config.writer}.db")
    items = list(records(site, seconds))
    sink = asyncio.run(collect(site, store, spool, items, config))
    report = verify(site, store)
    assert report.ok, report.problems
    counts = store.counts()
    assert counts["readings"] + counts["gap_records"] == len(items)
    assert sink.stats["stored"] == counts["batches"] and len(spool) == 0
    spool.close()
    store.close()
    return counts


def test_the_sealer_stores_every_record_in_batches_that_verify(evidence_site, backend, tmp_path):
    counts = _counts(evidence_site, backend, tmp_path, PROCESS)
    assert counts["batches"] > 0 and counts["gap_records"] > 0


def test_thread_and_process_make_the_same_batches(evidence_site, tmp_path):
    thread = _counts(evidence_site, str(tmp_path / "thread.db"), tmp_path, None)
    process = _counts(evidence_site, str(tmp_path / "process.db"), tmp_path, PROCESS)
    for table in ("batches", "readings", "gap_records"):
        assert thread[table] == process[table]


def test_a_restarted_sealer_continues_every_chain(evidence_site, backend, tmp_path):
    store = open_store(evidence_site, backend)
    spool = Spool(tmp_path / "spool.db")
    first = list(records(evidence_site, 90))
    later = list(records(evidence_site, 90, start=T0 + timedelta(seconds=90)))
    asyncio.run(collect(evidence_site, store, spool, first, PROCESS))
    asyncio.run(collect(evidence_site, store, spool, later, PROCESS))
    report = verify(evidence_site, store)
    assert report.ok, report.problems
    counts = store.counts()
    assert counts["readings"] + counts["gap_records"] == len(first) + len(later)
    spool.close()
    store.close()


@pytest.mark.parametrize("hashed", [False, True], ids=["sealer-hashes", "collector-hashes"])
def test_a_cut_seals_to_the_very_bytes_of_a_batch(evidence_site, hashed: bool):
    """Shuffled records, late duplicates (ties of time, point and type) and gaps; hashed by
    the sealer, or by the collector when the sealer lags."""
    plan = batch_spec(evidence_site.plans[0])
    points = sorted(plan.points)[:5]
    rng = random.Random(7)
    items = [
        Reading(
            plan.device,
            p,
            T0 + timedelta(seconds=s),
            float(s),
            scheduled_at=T0 + timedelta(seconds=s),
        )
        for s in range(4)
        for p in points
    ]
    items += [Gap(plan.device, points[0], T0, GapReason.TIMEOUT, "no answer")] * 3
    items += items[:4]  # the same readings again: equal keys, different salts
    rng.shuffle(items)
    window = Window()
    for record in items:
        salt = rng.randbytes(16)
        window.records.append(record)
        window.leaves.append(leaf_bytes(record, salt))
        window.salts.append(salt)
    keys, now = evidence_site.key_store(), datetime.now(UTC)
    index = T0.timestamp() * 1000 // plan.window_ms
    piece = cut(plan, int(index), window, now, hashed=hashed)
    assert (piece.root is not None) == hashed
    got = seal(plan, piece, ZERO_ROOT, keys)
    window.hashes = [hashlib.sha256(LEAF_PREFIX + leaf).digest() for leaf in window.leaves]
    batch = make_batch(plan, int(index), window.entries(), ZERO_ROOT)
    signers = {k: keys.signer(k, now) for k in batch.keys}
    assert got == SealedBatch.of(batch, sign_batch(batch, signers))


def test_a_dead_sealer_is_an_error_at_close(evidence_site, tmp_path):
    store = open_store(evidence_site, str(tmp_path / "evidence.db"))
    spool = Spool(tmp_path / "spool.db")

    async def run() -> None:
        sink = EvidenceSink(
            evidence_site.plans, store, evidence_site.key_store(), spool, config=PROCESS
        )
        assert sink.sealer is not None
        sink.sealer.process.kill()
        sink.sealer.process.join()
        for record in records(evidence_site, 70):
            await sink.put(record)
        await sink.close()

    with pytest.raises(SealerError, match="sealer process failed"):
        asyncio.run(run())
    spool.close()
    store.close()
