"""Worker processes verifying a store's records find exactly what one process finds.

``verify_store`` splits the record check of a large store by batch-id ranges
across worker processes; here ``workers=2`` forces that on a small store, on
SQLite and on PostgreSQL, and the report must equal that of ``workers=1``:
the same counts, the same problems in the same order.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from evidence_kit import Site, agree, fill, public_keys, target_of

import engine.verify.records
from engine.canonical import canonical_json
from engine.store import reads
from engine.store.store import Store
from engine.verify.report import Report
from engine.verify.whole import verify_store

SECONDS = 90
"""Two windows of the plant's records: enough batches for several ranges per worker."""


@pytest.fixture
def ranges(monkeypatch: pytest.MonkeyPatch) -> list[tuple[Any, ...]]:
    """The batch-id ranges given to worker processes (none if the records were read here)."""
    submitted: list[tuple[Any, ...]] = []

    class Spied(engine.verify.records.ProcessPoolExecutor):
        def submit(self, fn: Any, /, *args: Any, **kwargs: Any) -> Any:
            submitted.append(args)
            return super().submit(fn, *args, **kwargs)

    monkeypatch.setattr(engine.verify.records, "ProcessPoolExecutor", Spied)
    return submitted


def both(site: Site, store: Store) -> tuple[Report, Report]:
    """The reports of one process and of two workers (the first checked by the docs verifier)."""
    one = verify_store(store, site.trust(), workers=1)
    agree(one, target_of(store), public_keys(site.keys_dir))
    return one, verify_store(store, site.trust(), workers=2)


def tampering(target: str) -> sa.Engine:
    """The store's database, opened beside Converge to change it in plain SQL."""
    url = target if "://" in target else f"sqlite:///{target}"
    return sa.create_engine(url, poolclass=sa.NullPool)


def test_workers_verify_an_untampered_store_as_one_process_does(
    evidence_site, backend, tmp_path, ranges
):
    store = fill(evidence_site, backend, tmp_path, SECONDS)
    one, two = both(evidence_site, store)
    store.close()
    assert one.ok, one.problems
    assert two.ok, two.problems
    assert two.counts == one.counts
    assert one.counts["readings"] and one.counts["gap records"]
    assert len(ranges) > 2  # the records were read by the workers, in several ranges


def test_workers_name_a_changed_reading_and_a_deleted_gap_as_one_process_does(
    evidence_site, backend, tmp_path, ranges
):
    store = fill(evidence_site, backend, tmp_path, SECONDS)
    with tampering(backend).begin() as conn:
        reading = conn.execute(sa.text("SELECT id, leaf FROM readings ORDER BY id DESC")).first()
        assert reading is not None
        leaf = canonical_json({**json.loads(bytes(reading.leaf)), "value": -1.0})
        conn.execute(
            sa.text("UPDATE readings SET leaf = :leaf WHERE id = :id"),
            {"leaf": leaf, "id": reading.id},
        )
        conn.execute(
            sa.text("DELETE FROM gap_records WHERE id = (SELECT min(id) FROM gap_records)")
        )
    one, two = both(evidence_site, store)
    store.close()
    messages = [p.message for p in one.problems]
    assert any("do not hash to its signed root" in m for m in messages), messages
    assert any("records deleted or inserted" in m for m in messages), messages
    assert two.problems == one.problems
    assert two.counts == one.counts
    assert ranges


def test_workers_name_records_of_batches_not_stored_as_one_process_does(
    evidence_site, tmp_path, ranges
):
    """Records of the first and last batches, their batch rows deleted (SQLite only: on
    PostgreSQL a foreign key keeps them out): the last are read past the workers' ranges."""
    target = str(tmp_path / "evidence.db")
    store = fill(evidence_site, target, tmp_path, SECONDS)
    with tampering(target).begin() as conn:
        for table in ("batch_signatures", "batches"):
            column = "id" if table == "batches" else "batch_id"
            conn.execute(
                sa.text(
                    f"DELETE FROM {table} WHERE {column} IN "
                    "((SELECT min(id) FROM batches), (SELECT max(id) FROM batches))"
                )
            )
    one, two = both(evidence_site, store)
    store.close()
    forged = [p for p in one.problems if "of a batch that is not stored" in p.message]
    assert len(forged) == 2, one.problems
    assert two.problems == one.problems
    assert two.counts == one.counts
    assert ranges


def test_a_small_store_is_verified_in_this_process(evidence_site, tmp_path: Path, ranges):
    store = fill(evidence_site, str(tmp_path / "evidence.db"), tmp_path, SECONDS)
    report = verify_store(store, evidence_site.trust())
    agree(report, target_of(store), public_keys(evidence_site.keys_dir))
    store.close()
    assert report.ok, report.problems
    assert not ranges


def test_a_worker_killed_leaves_its_ranges_to_the_verifying_process(
    evidence_site, backend, tmp_path, monkeypatch
):
    """A worker killed mid-verification (out of memory, by hand) breaks the pool: each range
    it left is checked by the verifying process, and the report is one process's."""
    store = fill(evidence_site, backend, tmp_path, SECONDS)
    one = verify_store(store, evidence_site.trust(), workers=1)
    parent, read_checks = os.getpid(), engine.verify.records._read_checks

    def dying(*args: Any) -> Any:
        if os.getpid() != parent:
            os.kill(os.getpid(), signal.SIGKILL)
        return read_checks(*args)

    monkeypatch.setattr(engine.verify.records, "_read_checks", dying)
    two = verify_store(store, evidence_site.trust(), workers=2)
    store.close()
    assert one.ok, one.problems
    assert (two.ok, two.counts, two.problems) == (one.ok, one.counts, one.problems)


def test_a_worker_s_kept_connection_a_read_failed_on_is_dropped_and_the_next_range_opens_anew(
    tmp_path,
):
    """A worker keeps one connection for all its ranges; one a read failed on (a server that
    went away) is closed and forgotten, so the worker's next range opens a new one instead of
    failing on the lost one."""
    path = tmp_path / "store.db"
    sqlite3.connect(path).close()
    source = reads.Source(False, str(path))
    as_a_worker = engine.verify.records._Reading(frozenset(), False, verifier=-1)
    with engine.verify.records._range_records(source, as_a_worker):
        pass
    kept = reads.kept_driver(source)
    with (
        pytest.raises(sqlite3.OperationalError, match="lost"),
        engine.verify.records._range_records(source, as_a_worker),
    ):
        raise sqlite3.OperationalError("lost")
    with pytest.raises(sqlite3.ProgrammingError):  # closed
        kept.execute("SELECT 1")
    again = reads.kept_driver(source)
    assert again is not None and again is not kept and again.execute("SELECT 1").fetchone() == (1,)
    reads.drop_kept(source)
