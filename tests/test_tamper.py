"""Tampering with a store behind Converge's back: verify_store catches it and names it.

Every tamper here is plain SQL on the store's own database (a SQLite file or
a PostgreSQL database), as anyone with write access to it could do, and the
report must not only fail but name what was touched: the device and batch
for records, signatures and statements, the entry for the audit log, the
checkpoint (or the witness file) for a log cut short, forked or restored.
A property test then changes any single byte of any evidence column.
"""

from __future__ import annotations

import asyncio
import json
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa
from evidence_kit import T0, Site, collect, fill, records, verify
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from engine.audit import ORIGIN_KEY, STATE_KEY, Actor, now_instant, signing_second, time_line
from engine.canonical import canonical_json
from engine.sign import note
from engine.sign.merkle import MerkleLog
from engine.store.spool import Spool
from engine.store.store import Store
from engine.store.tables import METADATA
from engine.verify.report import Report

SECONDS = 90
"""Records per tampered store: two windows, so each device has a batch that follows another."""


# --- what a report must name -------------------------------------------------------------


@dataclass(frozen=True)
class Named:
    """A problem the report must hold: exactly this item, with ``message`` in its message."""

    item: str
    message: str = ""


def assert_named(report: Report, expected: list[Named]) -> None:
    assert not report.ok
    for want in expected:
        assert any(p.item == want.item and want.message in p.message for p in report.problems), (
            f"{want} not among {report.problems}"
        )


# --- plain SQL on the store ----------------------------------------------------------------


def database(target: str) -> sa.Engine:
    """The store's database, opened beside Converge for tampering with it in plain SQL."""
    url = target if "://" in target else f"sqlite:///{target}"
    return sa.create_engine(url, poolclass=sa.NullPool)


def run(conn: sa.Connection, query: str, **params: object) -> None:
    conn.execute(sa.text(query), params)


def one(conn: sa.Connection, query: str, **params: object) -> sa.Row:
    return conn.execute(sa.text(query), params).one()


def batch_label(conn: sa.Connection, batch_id: int) -> str:
    row = one(conn, "SELECT device, window_start FROM batches WHERE id = :id", id=batch_id)
    return f"batch {batch_id} ({row.device} {row.window_start})"


def newest_checkpoint(conn: sa.Connection) -> sa.Row:
    return one(conn, "SELECT id, size, note, created_at FROM checkpoints ORDER BY id DESC LIMIT 1")


def checkpoint_label(row: sa.Row) -> str:
    return f"checkpoint {row.id} (size {row.size})"


def newest_witness_line(conn: sa.Connection) -> str:
    """The witness file's line of the newest checkpoint: one line was written per checkpoint."""
    return f"witness witness.jsonl:{one(conn, 'SELECT count(*) AS n FROM checkpoints').n}"


def delete_batches(conn: sa.Connection, where: str, **params: object) -> None:
    """Delete the batches ``where`` selects, with their records and signatures."""
    chosen = f"SELECT id FROM batches WHERE {where}"
    for table in ("readings", "gap_records", "batch_signatures"):
        run(conn, f"DELETE FROM {table} WHERE batch_id IN ({chosen})", **params)
    run(conn, f"DELETE FROM batches WHERE {where}", **params)


def cut_log(conn: sa.Connection, size: int) -> None:
    """Keep the first ``size`` audit entries and what they record, with a saved log state
    that matches them, as a careful tamperer (or an older copy of the store) would have."""
    delete_batches(conn, "audit_seq >= :size", size=size)
    run(conn, "DELETE FROM audit_entries WHERE seq >= :size", size=size)
    log = MerkleLog()
    for (entry,) in conn.execute(sa.text("SELECT entry FROM audit_entries ORDER BY seq")):
        log.append(bytes(entry))
    state = json.dumps({"size": log.size, "hashes": [h.hex() for h in log.hashes]})
    run(conn, "UPDATE meta SET value = :state WHERE key = :key", state=state, key=STATE_KEY)


# --- the tampers ---------------------------------------------------------------------------


Tamper = Callable[[sa.Connection], list[Named]]
"""Tampers with the store in ``conn``'s transaction; returns what the report must name."""


def edit_reading(**change: object) -> Tamper:
    """Rewrite a reading's leaf as valid canonical JSON with ``change`` made to it."""

    def tamper(conn: sa.Connection) -> list[Named]:
        row = one(conn, "SELECT id, batch_id, leaf FROM readings ORDER BY id LIMIT 1")
        leaf = canonical_json({**json.loads(bytes(row.leaf)), **change})
        run(conn, "UPDATE readings SET leaf = :leaf WHERE id = :id", leaf=leaf, id=row.id)
        return [Named(batch_label(conn, row.batch_id), "records do not hash to its signed root")]

    return tamper


def delete_record(table: str) -> Tamper:
    def tamper(conn: sa.Connection) -> list[Named]:
        row = one(conn, f"SELECT id, batch_id FROM {table} ORDER BY id LIMIT 1")
        run(conn, f"DELETE FROM {table} WHERE id = :id", id=row.id)
        return [Named(batch_label(conn, row.batch_id), "records deleted or inserted")]

    return tamper


def delete_batch(conn: sa.Connection) -> list[Named]:
    """Delete a whole batch that another batch of its device follows."""
    gone = one(
        conn,
        "SELECT b.id, b.device, b.window_start, b.audit_seq, n.id AS next_id "
        "FROM batches b JOIN batches n ON n.device = b.device "
        "AND n.previous_root = b.root ORDER BY b.id LIMIT 1",
    )
    delete_batches(conn, "id = :id", id=gone.id)
    return [
        Named(
            f"batch of {gone.device} {gone.window_start}",
            f"deleted: audit entry {gone.audit_seq} records it",
        ),
        Named(batch_label(conn, gone.next_id), "chain broken"),
    ]


def forge_reading(conn: sa.Connection) -> list[Named]:
    """Add a reading to a batch, after its last record: a copy of one with another salt."""
    row = one(
        conn,
        "SELECT r.batch_id, r.leaf, b.count FROM readings r "
        "JOIN batches b ON b.id = r.batch_id ORDER BY r.id LIMIT 1",
    )
    leaf = canonical_json({**json.loads(bytes(row.leaf)), "salt": "f" * 32})
    run(
        conn,
        "INSERT INTO readings (batch_id, position, leaf) VALUES (:batch, :position, :leaf)",
        batch=row.batch_id,
        position=row.count,
        leaf=leaf,
    )
    return [Named(batch_label(conn, row.batch_id), "records deleted or inserted")]


def swap_records(conn: sa.Connection) -> list[Named]:
    """Swap the positions of a batch's first two readings (through a free position)."""
    a, b = conn.execute(
        sa.text(
            "SELECT id, batch_id, position FROM readings "
            "WHERE batch_id = (SELECT min(batch_id) FROM readings) ORDER BY position LIMIT 2"
        )
    ).all()
    for record, position in ((a, -1), (b, a.position), (a, b.position)):
        run(conn, "UPDATE readings SET position = :p WHERE id = :id", p=position, id=record.id)
    return [Named(batch_label(conn, a.batch_id), "records do not hash to its signed root")]


def swap_signatures(conn: sa.Connection) -> list[Named]:
    """Swap the signatures of two batches by the same key."""
    a, b = conn.execute(
        sa.text(
            "SELECT batch_id, key, signature FROM batch_signatures WHERE key = "
            "(SELECT min(key) FROM batch_signatures) ORDER BY batch_id LIMIT 2"
        )
    ).all()
    for this, other in ((a, b), (b, a)):
        run(
            conn,
            "UPDATE batch_signatures SET signature = :signature "
            "WHERE batch_id = :id AND key = :key",
            signature=bytes(other.signature),
            id=this.batch_id,
            key=this.key,
        )
    return [
        Named(batch_label(conn, s.batch_id), f"signature of key {s.key!r} does not verify")
        for s in (a, b)
    ]


def strip_signature(conn: sa.Connection) -> list[Named]:
    row = one(conn, "SELECT batch_id, key FROM batch_signatures ORDER BY batch_id, key LIMIT 1")
    run(
        conn,
        "DELETE FROM batch_signatures WHERE batch_id = :id AND key = :key",
        id=row.batch_id,
        key=row.key,
    )
    return [Named(batch_label(conn, row.batch_id), f"signature of key {row.key!r} is missing")]


def delete_audit_entry(conn: sa.Connection) -> list[Named]:
    """Delete an entry from the middle of the log."""
    seq = one(conn, "SELECT count(*) / 2 AS seq FROM audit_entries").seq
    run(conn, "DELETE FROM audit_entries WHERE seq = :seq", seq=seq)
    return [
        Named(f"audit entry {seq}", "deleted: the log has a hole here"),
        Named(checkpoint_label(newest_checkpoint(conn))),
    ]


def truncate_log(conn: sa.Connection) -> list[Named]:
    """Delete the last three audit entries and what they record."""
    checkpoint = newest_checkpoint(conn)
    cut_log(conn, checkpoint.size - 3)
    return [
        Named(checkpoint_label(checkpoint), "the log was truncated"),
        Named(newest_witness_line(conn), "older than the witnessed log"),
    ]


def edit_statement(conn: sa.Connection) -> list[Named]:
    """Raise the count a batch's statement states, keeping it a canonical statement."""
    row = one(conn, "SELECT id, statement FROM batches ORDER BY id LIMIT 1")
    head = json.loads(bytes(row.statement))
    statement = canonical_json({**head, "count": head["count"] + 1})
    run(conn, "UPDATE batches SET statement = :s WHERE id = :id", s=statement, id=row.id)
    label = batch_label(conn, row.id)
    return [
        Named(label, "its columns disagree with its signed statement"),
        Named(label, "does not verify"),
    ]


def edit_plan(conn: sa.Connection) -> list[Named]:
    """Make a stored plan's first point sampled ten times less often."""
    row = one(conn, "SELECT digest, device, body FROM plans ORDER BY digest LIMIT 1")
    body = json.loads(bytes(row.body))
    body["points"][0]["capture"]["every_ms"] *= 10
    run(
        conn,
        "UPDATE plans SET body = :body WHERE digest = :digest",
        body=canonical_json(body),
        digest=row.digest,
    )
    return [Named(f"plan {row.digest} ({row.device})", "digest does not verify")]


DEEP = "[" * 3000 + "]" * 3000
"""JSON nested deeper than Python's parser reads (it raises RecursionError, no ValueError)."""


def nest_batch_columns(conn: sa.Connection) -> list[Named]:
    """Write JSON nested too deep into a batch's keys and waiver columns."""
    row = one(conn, "SELECT id FROM batches ORDER BY id LIMIT 1")
    run(conn, "UPDATE batches SET keys = :d, waiver = :d WHERE id = :id", d=DEEP, id=row.id)
    return [Named(batch_label(conn, row.id), "its keys column is not the canonical JSON")]


def nest_statement(conn: sa.Connection) -> list[Named]:
    """Write JSON nested too deep as a batch's statement."""
    row = one(conn, "SELECT id FROM batches ORDER BY id LIMIT 1")
    label = batch_label(conn, row.id)
    run(conn, "UPDATE batches SET statement = :d WHERE id = :id", d=DEEP.encode(), id=row.id)
    return [Named(label, "not a batch statement: JSON nested too deep to read")]


def nest_log_state(conn: sa.Connection) -> list[Named]:
    """Write JSON nested too deep as the log's saved state."""
    run(conn, "UPDATE meta SET value = :d WHERE key = 'audit.state'", d=DEEP)
    return [Named("audit log", "its saved state (size None) is not that of the")]


TAMPERS: dict[str, Tamper] = {
    "reading-value": edit_reading(value=-273.15),
    "reading-collected_at": edit_reading(collected_at="2000-01-01T00:00:00.000000Z"),
    "reading-quality": edit_reading(quality="bad"),
    "reading-deleted": delete_record("readings"),
    "gap-record-deleted": delete_record("gap_records"),
    "batch-deleted": delete_batch,
    "reading-forged": forge_reading,
    "records-reordered": swap_records,
    "signatures-swapped": swap_signatures,
    "signature-stripped": strip_signature,
    "audit-entry-deleted": delete_audit_entry,
    "log-truncated": truncate_log,
    "statement-changed": edit_statement,
    "plan-changed": edit_plan,
    "batch-columns-nested-too-deep": nest_batch_columns,
    "statement-nested-too-deep": nest_statement,
    "log-state-nested-too-deep": nest_log_state,
}


def tampered(
    site: Site, backend: str, tmp_path: Path, tamper: Tamper
) -> tuple[Report, list[Named]]:
    """Verify a filled store (it must pass), tamper with it, and verify it again."""
    store = fill(site, backend, tmp_path, SECONDS)
    untouched = verify(site, store, tmp_path)
    assert untouched.ok, untouched.problems
    with database(backend).begin() as conn:
        expected = tamper(conn)
    report = verify(site, store, tmp_path)
    store.close()
    return report, expected


@pytest.mark.parametrize("tamper", TAMPERS.values(), ids=TAMPERS.keys())
def test_a_tamper_is_detected_and_named(evidence_site, backend, tmp_path, tamper):
    assert_named(*tampered(evidence_site, backend, tmp_path, tamper))


# --- checkpoints ---------------------------------------------------------------------------


def fork_checkpoint(site: Site) -> Tamper:
    """Add a checkpoint of the newest one's size but another root, signed by the real key."""

    def tamper(conn: sa.Connection) -> list[Named]:
        origin = one(conn, "SELECT value FROM meta WHERE key = :key", key=ORIGIN_KEY).value
        size = newest_checkpoint(conn).size
        at = signing_second(datetime.now(UTC))
        signer = site.key_store().signer("audit-log", at)
        forged_checkpoint = note.Checkpoint(origin, size, bytes(32), (time_line(at),))
        forged = note.sign_checkpoint(forged_checkpoint, origin, signer)
        run(
            conn,
            "INSERT INTO checkpoints (size, note, created_at) VALUES (:size, :note, :at)",
            size=size,
            note=forged,
            at=now_instant(),
        )
        return [Named(checkpoint_label(newest_checkpoint(conn)), "fork")]

    return tamper


def test_a_forked_checkpoint_is_named_a_fork(evidence_site, backend, tmp_path):
    assert_named(*tampered(evidence_site, backend, tmp_path, fork_checkpoint(evidence_site)))


def test_a_forked_checkpoint_is_detected(evidence_site, backend, tmp_path):
    report, [fork] = tampered(evidence_site, backend, tmp_path, fork_checkpoint(evidence_site))
    assert_named(report, [Named(fork.item)])


def rewrite_signature_padding(conn: sa.Connection) -> list[Named]:
    """Change the unused low bits of the last base64 digit of the newest checkpoint's
    signature: other bytes, the same signature once decoded."""
    checkpoint = newest_checkpoint(conn)
    body, blob = checkpoint.note.rstrip("\n").rsplit(" ", 1)
    assert blob.endswith("=") and not blob.endswith("==")  # 68 bytes: 2 low bits unused
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
    digit = alphabet[alphabet.index(blob[-2]) ^ 1]
    run(
        conn,
        "UPDATE checkpoints SET note = :note WHERE id = :id",
        note=f"{body} {blob[:-2]}{digit}=\n",
        id=checkpoint.id,
    )
    return [Named(checkpoint_label(checkpoint))]


def test_a_checkpoint_signature_in_non_canonical_base64_is_named(evidence_site, backend, tmp_path):
    assert_named(*tampered(evidence_site, backend, tmp_path, rewrite_signature_padding))


def set_checkpoint_time(created_at: str) -> Tamper:
    def tamper(conn: sa.Connection) -> list[Named]:
        checkpoint = newest_checkpoint(conn)
        run(
            conn,
            "UPDATE checkpoints SET created_at = :at WHERE id = :id",
            at=created_at,
            id=checkpoint.id,
        )
        return []

    return tamper


@pytest.mark.parametrize(
    "created_at", ["2026-1X-01T00:00:00.000000Z", "2026-11-01T00:00:00.000000", "2020-01-01"]
)
def test_the_checkpoint_row_time_decides_nothing(evidence_site, backend, tmp_path, created_at):
    """The time a checkpoint was signed is in its signed text; the ``created_at`` column is
    only for people: rewriting it (back-dating included) changes no verdict."""
    report, _ = tampered(evidence_site, backend, tmp_path, set_checkpoint_time(created_at))
    assert report.ok, report.problems


def break_entry_time(conn: sa.Connection) -> list[Named]:
    """Give a batch.stored entry (bytes and column) a time that is no instant, canonically."""
    row = one(
        conn,
        "SELECT seq, entry FROM audit_entries WHERE kind = 'batch.stored' ORDER BY seq LIMIT 1",
    )
    entry = {**json.loads(bytes(row.entry)), "time": "2026-1X-01T00:00:00.000000Z"}
    run(
        conn,
        "UPDATE audit_entries SET entry = :entry, time = :time WHERE seq = :seq",
        entry=canonical_json(entry),
        time=entry["time"],
        seq=row.seq,
    )
    return [Named(checkpoint_label(newest_checkpoint(conn)), "do not hash to the signed root")]


def test_an_audit_entry_time_that_is_no_instant_is_named(evidence_site, backend, tmp_path):
    assert_named(*tampered(evidence_site, backend, tmp_path, break_entry_time))


def unsafe_integer_in_entry(conn: sa.Connection) -> list[Named]:
    """Give a batch.stored entry an integer past 2**53 - 1, which has no canonical JSON form
    (RFC 8785): the bytes are otherwise sorted and compact, as canonical ones are."""
    row = one(
        conn,
        "SELECT seq, entry FROM audit_entries WHERE kind = 'batch.stored' ORDER BY seq LIMIT 1",
    )
    entry = json.loads(bytes(row.entry))
    entry["payload"]["unsafe"] = 2**60
    said = json.dumps(entry, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    run(conn, "UPDATE audit_entries SET entry = :e WHERE seq = :seq", e=said.encode(), seq=row.seq)
    return [Named(f"audit entry {row.seq}", "not a canonical entry")]


def test_an_audit_entry_with_no_canonical_form_is_named_not_a_crash(
    evidence_site, backend, tmp_path
):
    assert_named(*tampered(evidence_site, backend, tmp_path, unsafe_integer_in_entry))


def test_an_older_copy_of_the_store_is_named_by_the_witness(evidence_site, backend, tmp_path):
    """Restore: fill, keep the store as it was, write more batches, verify the old store."""
    store = fill(evidence_site, backend, tmp_path, SECONDS)
    with database(backend).connect() as conn:
        witnessed = newest_checkpoint(conn).size  # the log the older copy holds
    if "://" not in backend:  # SQLite: the older copy is a copy of the file
        store.close()
        older = str(tmp_path / "older.db")
        shutil.copy(backend, older)
        store = Store.open(backend, actor=Actor.job("test"), witness=tmp_path / "witness.jsonl")
    spool = Spool(tmp_path / "later-spool.db")
    later = records(evidence_site, 30, start=T0 + timedelta(seconds=SECONDS))
    asyncio.run(collect(evidence_site, store, spool, list(later)))
    spool.close()
    store.close()
    with database(backend).begin() as conn:
        newest = newest_witness_line(conn)
        if "://" in backend:  # PostgreSQL: what a restore leaves, made in place
            older = backend
            cut_log(conn, witnessed)
            run(conn, "DELETE FROM checkpoints WHERE size > :size", size=witnessed)
    restored = Store.open_existing(older)
    report = verify(evidence_site, restored, tmp_path)
    restored.close()
    assert_named(report, [Named(newest, "older than the witnessed log")])
    assert all(p.item.startswith("witness ") for p in report.problems), report.problems


# --- any byte of any evidence column (SQLite) ----------------------------------------------


NOT_EVIDENCE = {
    # When the checkpoint was signed, as the signer says: it only picks the key version that
    # must have been valid; nothing signs it, so another time within the key's validity is
    # undetectable by design. (A value that is no instant is named: see the test above.)
    ("checkpoints", "created_at"),
    # When a collector first loaded the plan: bookkeeping, never read by the verifier; the
    # plan.deployed audit entry holds the time that counts.
    ("plans", "deployed_at"),
}


def holds_bytes(column: sa.Column) -> bool:
    """A text or blob column."""
    return isinstance(column.type, sa.String | sa.LargeBinary)


EVIDENCE_COLUMNS = {
    table: [
        c.name
        for c in METADATA.tables[table].columns
        if holds_bytes(c) and (table, c.name) not in NOT_EVIDENCE
    ]
    for table in (
        "readings",
        "gap_records",
        "batches",
        "batch_signatures",
        "audit_entries",
        "checkpoints",
        "plans",
        "meta",
    )
}
"""Every text or blob column of every evidence table (ids and counts are integers)."""


@pytest.fixture(scope="module")
def small_store(evidence_site, tmp_path_factory) -> Path:
    """A folder with a 30-second store and its witness file, made once."""
    folder = tmp_path_factory.mktemp("small-store")
    fill(evidence_site, str(folder / "evidence.db"), folder, seconds=30).close()
    return folder


def rowids(conn: sa.Connection, table: str) -> list[int]:
    """The rows of ``table`` to change; of meta only the log's origin."""
    where = f"WHERE key = '{ORIGIN_KEY}'" if table == "meta" else ""
    query = sa.text(f"SELECT rowid FROM {table} {where} ORDER BY rowid")
    return list(conn.execute(query).scalars())


def change_one_byte(data: st.DataObject, value: str | bytes) -> str | bytes:
    """``value`` with one byte changed: in a blob to any other byte, in text to another ASCII
    character (so the text stays UTF-8)."""
    if isinstance(value, str):
        i = data.draw(st.integers(0, len(value) - 1))
        other = data.draw(st.characters(max_codepoint=127).filter(lambda c: c != value[i]))
        return value[:i] + other + value[i + 1 :]
    i = data.draw(st.integers(0, len(value) - 1))
    return value[:i] + bytes([value[i] ^ data.draw(st.integers(1, 255))]) + value[i + 1 :]


@settings(max_examples=60)
@given(data=st.data())
def test_any_changed_byte_of_evidence_is_detected(
    evidence_site, small_store, tmp_path_factory, data
):
    folder = tmp_path_factory.mktemp("changed")
    shutil.copy(small_store / "evidence.db", folder / "evidence.db")
    table = data.draw(st.sampled_from(sorted(EVIDENCE_COLUMNS)))
    column = data.draw(st.sampled_from(EVIDENCE_COLUMNS[table]))
    with database(str(folder / "evidence.db")).begin() as conn:
        rowid = data.draw(st.sampled_from(rowids(conn, table)))
        old = conn.execute(
            sa.text(f"SELECT {column} FROM {table} WHERE rowid = :r"), {"r": rowid}
        ).scalar_one()
        assume(old)  # a NULL (an unsigned plan's signature) has no byte to change
        new = change_one_byte(data, old)
        run(conn, f"UPDATE {table} SET {column} = :new WHERE rowid = :r", new=new, r=rowid)
    store = Store.open_existing(str(folder / "evidence.db"))
    report = verify(evidence_site, store, small_store)
    store.close()
    assert not report.ok, f"{table}.{column} of row {rowid}: {old!r} -> {new!r}"
