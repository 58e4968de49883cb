"""An export's workers read their batches on connections of their own: a worker that cannot
connect (the server refusing new connections, the file gone from its path) leaves its batch
to the export's transaction, which still reads the store; the bundle is the one an export
alone writes."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
from collections.abc import Sequence
from contextlib import closing
from pathlib import Path
from typing import Any

import forger
import pytest
import sqlalchemy as sa
from evidence_kit import Site, fill
from test_export import (
    AUDITOR,
    DEVICE,
    PRINCIPALS,
    export,
    export_by_workers,
    same_evidence,
    trust_file,
)

from engine.access.data import Range
from engine.cli import main
from engine.export import bundle as writing
from engine.export import verifier
from engine.store import reads
from engine.store.data import StoredBatch


def _refusing(backend: str, tmp_path: Path, *, directory: bool = True):
    """Make the store refuse a new connection (the export's own is open), and undo it: a
    SQLite file moved away (``directory``: a directory put at its path)."""
    if "://" in backend:  # from another database: a session may not refuse its own
        name = sa.make_url(backend).database
        admin = forger.database(str(sa.make_url(backend).set(database="postgres")))

        def allowing(allowed: bool) -> None:
            with admin.execution_options(isolation_level="AUTOCOMMIT").connect() as conn:
                conn.execute(sa.text(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS {allowed}'))

        return lambda: allowing(False), lambda: allowing(True)
    away = tmp_path / "away"
    away.mkdir()

    def refuse_file() -> None:
        for suffix in ("", "-wal", "-shm"):
            os.rename(backend + suffix, away / f"db{suffix}")
        if directory:  # sqlite3 cannot open a directory
            os.mkdir(backend)

    def allow_file() -> None:
        if directory:
            os.rmdir(backend)
        assert not os.path.exists(backend)  # no worker made a new, empty store there
        for suffix in ("", "-wal", "-shm"):
            os.rename(away / f"db{suffix}", backend + suffix)

    return refuse_file, allow_file


def test_a_worker_that_cannot_connect_leaves_its_batch_to_the_export(
    evidence_site: Site, backend: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    _exported_while_refused(evidence_site, backend, tmp_path, monkeypatch, directory=True)


def test_a_worker_never_makes_a_sqlite_file_where_the_store_has_gone(
    evidence_site: Site, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    db = str(tmp_path / "evidence.db")
    _exported_while_refused(evidence_site, db, tmp_path, monkeypatch, directory=False)


def _exported_while_refused(
    evidence_site: Site,
    backend: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    *,
    directory: bool,
) -> None:
    """The store refuses the workers once the export's transaction has read its batches: every
    batch is read in the transaction, and the bundle's evidence is the one an export alone
    writes; it verifies."""
    fill(evidence_site, backend, tmp_path, seconds=70).close()
    keys = evidence_site.keys_dir
    before = tmp_path / "before.zip"
    assert export(backend, keys, before, "--device", DEVICE) == 0
    refuse, allow = _refusing(backend, tmp_path, directory=directory)
    carried_ids: list[int] = []

    def refusing(carried: Sequence[StoredBatch]) -> None:
        carried_ids.extend(batch.id for batch in carried)
        refuse()

    during = tmp_path / "during.zip"
    try:
        code, read_again = export_by_workers(backend, keys, during, monkeypatch, meanwhile=refusing)
    finally:
        allow()
    assert code == 0
    assert read_again == carried_ids  # every batch, read in the transaction
    same_evidence(before, during, trust_file(backend, keys, tmp_path / "t.json"))


def test_a_worker_killed_leaves_its_batches_to_the_export(
    evidence_site: Site, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    """A worker killed mid-export (out of memory, by hand) breaks the pool: the batches not
    done, and every one after, are read in the export's transaction, and the bundle's
    evidence is the one an export alone writes."""
    db = str(tmp_path / "evidence.db")
    fill(evidence_site, db, tmp_path, seconds=70).close()
    keys = evidence_site.keys_dir
    before = tmp_path / "before.zip"
    assert export(db, keys, before, "--device", DEVICE) == 0
    parent, read_apart = os.getpid(), writing._read_apart
    carried_ids: list[int] = []

    def dying(job: Any) -> Any:
        if os.getpid() != parent:
            os.kill(os.getpid(), signal.SIGKILL)
        return read_apart(job)

    monkeypatch.setattr(writing, "_read_apart", dying)
    during = tmp_path / "during.zip"
    code, read_again = export_by_workers(
        db,
        keys,
        during,
        monkeypatch,
        meanwhile=lambda carried: carried_ids.extend(b.id for b in carried),
    )
    assert code == 0
    assert read_again == carried_ids  # every batch, read in the transaction
    same_evidence(before, during, trust_file(db, keys, tmp_path / "t.json"))


# --- a record edited through SQL: named, nothing written -------------------------------------

_BATCH = "(SELECT min(id) FROM batches WHERE device = 'reactor-1-plc')"
_RECORD = (
    f"batch_id = {_BATCH}"
    f" AND position = (SELECT min(position) FROM readings WHERE batch_id = {_BATCH})"
)


@pytest.mark.parametrize(
    "edit",
    [
        f"UPDATE readings SET leaf = X'' WHERE {_RECORD}",  # no JSON at all
        f"UPDATE readings SET leaf = X'00000035' WHERE {_RECORD}",  # NUL bytes
        f"UPDATE readings SET leaf = X'35' WHERE {_RECORD}",  # JSON, not an object
        f"UPDATE readings SET position = 'x' WHERE {_RECORD}",  # a position that is text
        f"UPDATE readings SET leaf = 1.5 WHERE {_RECORD}",  # a leaf that is a number
    ],
    ids=["empty-leaf", "nul-leaf", "number-leaf", "text-position", "real-leaf"],
)
@pytest.mark.parametrize("workers", [0, 2])
def test_a_record_edited_through_sql_is_named_and_nothing_is_written(
    evidence_site: Site, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, edit: str, workers: int
):
    """Whoever can write the database can write a leaf that is not a record, or a position
    that is not a number (SQLite keeps what it is given): the export names the store, not a
    traceback, with workers and without, and writes no bundle."""
    db = str(tmp_path / "evidence.db")
    fill(evidence_site, db, tmp_path, seconds=70).close()
    with forger.database(db).begin() as conn:
        assert conn.execute(sa.text(edit)).rowcount == 1
    monkeypatch.setattr(verifier, "worker_count", lambda amount, least: workers)
    out = tmp_path / "out.zip"
    assert export(db, evidence_site.keys_dir, out, "--device", DEVICE) == 2
    assert not out.exists()


def test_a_reading_without_its_members_is_named_by_the_report(
    evidence_site: Site, tmp_path: Path, capsys: pytest.CaptureFixture[str]
):
    """A leaf edited through SQL into a reading that lacks its members (a device, a point, a
    time) is named by the report (the batch and position), not a traceback; no page is
    written."""
    db = str(tmp_path / "evidence.db")
    fill(evidence_site, db, tmp_path, seconds=70).close()
    with forger.database(db).begin() as conn:
        stored = conn.execute(sa.text(f"SELECT leaf FROM readings WHERE {_RECORD}")).one()[0]
        leaf = json.loads(stored)
        bare = json.dumps({k: leaf[k] for k in ("device", "point", "type")}).encode()
        edit = f"UPDATE readings SET leaf = :leaf WHERE {_RECORD}"
        assert conn.execute(sa.text(edit), {"leaf": bare}).rowcount == 1
    out = tmp_path / "report.html"
    asked = ["report", "--db", db, "--principals", str(PRINCIPALS), "--as", AUDITOR]
    keys = ["--keys", str(evidence_site.keys_dir)]
    assert main([*asked, *keys, "--device", DEVICE, "-o", str(out)]) == 2
    assert "its leaf is not a record" in capsys.readouterr().err
    assert not out.exists()


def test_a_worker_s_connection_lost_leaves_that_batch_to_the_export_and_the_next_opens_anew(
    evidence_site: Site, tmp_path: Path
):
    """A worker keeps one connection for its jobs; one a read fails on (the link lost) leaves
    its batch to the export's transaction and is dropped, so the worker's next batch is read
    on a new connection, not refused for ever."""
    db = str(tmp_path / "evidence.db")
    fill(evidence_site, db, tmp_path, seconds=70).close()
    source = reads.Source(False, db)
    with closing(sqlite3.connect(db)) as conn:
        (count,) = conn.execute('SELECT "count" FROM batches WHERE id = 1').fetchone()
    as_a_worker = {"made_by": -1, "source": source}
    job = writing.Job(1, count, {"P1"}, Range(None, None), **as_a_worker)  # type: ignore[arg-type]
    assert writing._read_apart(job) is not None  # read on the worker's kept connection
    lost = reads.kept_driver(source, autocommit=True)
    lost.close()
    assert writing._read_apart(job) is None  # the export's transaction reads it
    again = reads.kept_driver(source, autocommit=True)
    assert again is not lost and writing._read_apart(job) is not None
    reads.drop_kept(source, autocommit=True)
