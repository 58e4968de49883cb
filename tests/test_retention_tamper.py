"""Deletion told apart from tampering: what `audit verify` names after retention, on both
backends.

Three kinds of wrong are made here. A *buggy run* is a retention run with one
of its safeguards taken out (it ignores holds, reads a clock four hours fast,
writes a receipt whose leaf hashes are not the batch's, or that says no record
remains): its receipts are in the signed log, and verification must still name
them unlawful. A *tamper* is plain SQL on the store after a lawful run, as in
tests/test_tamper.py. A *forged deletion* is an insider's with write access but
no audit key: records deleted, with a receipt and erasure in the run's shape,
appended after the last checkpoint (where a killed run's receipts may be).
"""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import pytest
import sqlalchemy as sa
from evidence_kit import Site, fill, verify
from retention_kit import DEVICES, TEN_MINUTES, hold_on, kinds, run, sealed
from test_tamper import Named, assert_named, batch_label, database, one

from engine.audit import Actor
from engine.canonical import canonical_json
from engine.cli import main
from engine.plans.expiry import expiry
from engine.retention import receipt as receipts
from engine.retention import run as runs
from engine.retention.select import Group, select
from engine.store import auditlog, data
from engine.store.retention import Erasure, Scope, erase
from engine.store.retention import runs as runs_of
from engine.verify.trust import instant
from plugins.fileprincipals import PrincipalsFile

SECONDS = 60


@pytest.fixture
def store(retention_site, backend, tmp_path):
    filled = fill(retention_site, backend, tmp_path, SECONDS)
    yield filled
    filled.close()


def receipt_of(store, device: str) -> int:
    return next(r.seq for r in kinds(store, "retention.deleted") if r.payload["device"] == device)


# --- buggy runs --------------------------------------------------------------------------


def test_a_run_that_ignores_a_hold_is_named(
    retention_site, store, principals_file, monkeypatch, tmp_path
):
    hold_on(retention_site, store, PrincipalsFile(principals_file), Scope(("line-b",)), "x")
    monkeypatch.setattr(runs.HoldBook, "read", lambda book, entries: [])
    run(retention_site, store)
    report = verify(retention_site, store, tmp_path)
    seq = receipt_of(store, "line-b")
    assert_named(report, [Named(f"receipt (audit entry {seq})", "deletes line-b/P1 during hold 1")])


def test_a_run_with_a_fast_clock_is_named_for_deleting_before_keep_at_least(
    retention_site, store, monkeypatch, tmp_path
):
    def fast(batch, plan, holds, leaves, at):
        return select(batch, plan, holds, leaves, at + timedelta(hours=4))

    monkeypatch.setattr(runs, "select", fast)
    run(retention_site, store)
    report = verify(retention_site, store, tmp_path)
    seq = receipt_of(store, "lab-c")
    assert_named(
        report, [Named(f"receipt (audit entry {seq})", "deletes lab-c/P1 before its keep_at_least")]
    )


def test_a_receipt_whose_leaf_hashes_are_not_the_batch_is_named(
    retention_site, store, backend, monkeypatch, tmp_path
):
    """lab-c's receipts keep leaf hashes (its P1 records remain); one is changed."""
    lawful = receipts.payload

    def forged(*args, **kwargs):
        said = lawful(*args, **kwargs)
        hashes = bytearray(base64.b64decode(said["leaf_hashes"]))
        if hashes:
            hashes[0] ^= 1
        return said | {"leaf_hashes": base64.b64encode(bytes(hashes)).decode()}

    monkeypatch.setattr(receipts, "payload", forged)
    run(retention_site, store)
    report = verify(retention_site, store, tmp_path)
    seq = receipt_of(store, "lab-c")
    said = next(r.payload for r in kinds(store, "retention.deleted") if r.seq == seq)
    with database(backend).connect() as conn:
        label = batch_label(conn, said["batch"])
    assert_named(
        report,
        [
            Named(f"receipt (audit entry {seq})", "erasure of it differs"),
            Named(label, "a receipt's leaf hashes do not match the batch"),
        ],
    )


def test_a_receipt_saying_no_record_remains_while_some_do_is_named(
    retention_site, store, monkeypatch, tmp_path
):
    """lab-c's P1 records remain after its P2 records go; a run whose receipts say none remain
    (and so keep no leaf hashes) is named, and so is the batch, whose root then cannot be
    rebuilt."""
    lawful = receipts.payload

    def none_remain(*args, **kwargs):
        return lawful(*args, **kwargs) | {"remaining": 0, "leaf_hashes": ""}

    monkeypatch.setattr(receipts, "payload", none_remain)
    run(retention_site, store)
    report = verify(retention_site, store, tmp_path)
    seq = receipt_of(store, "lab-c")
    assert_named(
        report,
        [
            Named(f"receipt (audit entry {seq})", "says 0 records of batch"),
            Named(f"receipt (audit entry {seq})", "erasure of it differs"),
        ],
    )


def test_a_receipt_giving_two_points_one_calculation_is_named(
    retention_site, backend, monkeypatch, tmp_path
):
    """line-a's points are kept alike, but by two policies: each expires by its own
    calculation (naming its policy), and a run that deletes both under the first's is named
    for the second, though the first's is lawful."""
    other = [{"policy": "other-retention", "at": "policies/other.yaml:4:3"}]
    plans = [
        sealed(device, points, {"P2": other} if device == "line-a" else None)
        for device, points in DEVICES.items()
    ]
    (tmp_path / "plans").mkdir()
    site = Site(retention_site.keys_dir, tmp_path / "plans", plans)
    assert DEVICES["line-a"] == {"P1": TEN_MINUTES, "P2": TEN_MINUTES}
    filled = fill(site, backend, tmp_path, SECONDS)

    def merged(batch, plan, holds, leaves, at):
        chosen = select(batch, plan, holds, leaves, at)
        if batch.device == "line-a" and len(chosen.groups) == 2:
            pairs = sorted(
                pair for g in chosen.groups for pair in zip(g.positions, g.names, strict=True)
            )
            first = next(g.expiry for g in chosen.groups if "P1" in g.names)
            chosen.groups = [Group(first, [p for p, _ in pairs], [n for _, n in pairs])]
        return chosen

    monkeypatch.setattr(runs, "select", merged)
    try:
        run(site, filled)
        report = verify(site, filled, tmp_path)
        seq = receipt_of(filled, "line-a")
    finally:
        filled.close()
    assert_named(
        report,
        [Named(f"receipt (audit entry {seq})", "expiry calculation for line-a/P2 is not its")],
    )
    assert not [p for p in report.problems if "line-a/P1" in p.message]


# --- tampers after a lawful run ----------------------------------------------------------


Tamper = Callable[[sa.Connection], list[Named]]


def delete_a_kept_record(conn: sa.Connection) -> list[Named]:
    """Delete a record of a batch that receipts deleted other records of (lab-c's P1)."""
    row = one(
        conn,
        "SELECT r.id, r.batch_id FROM readings r WHERE r.batch_id IN "
        "(SELECT batch_id FROM erasures) ORDER BY r.id LIMIT 1",
    )
    conn.execute(sa.text("DELETE FROM readings WHERE id = :id"), {"id": row.id})
    return [Named(batch_label(conn, row.batch_id), "no deletion receipt accounts for it")]


def bring_back_a_record(conn: sa.Connection) -> list[Named]:
    """Store a record again at a position a receipt deleted."""
    row = one(
        conn,
        "SELECT e.batch_id, r.leaf FROM erasures e JOIN readings r ON r.batch_id = e.batch_id"
        " ORDER BY e.id LIMIT 1",
    )
    position = one(
        conn,
        "SELECT positions FROM erasures WHERE batch_id = :b ORDER BY id LIMIT 1",
        b=row.batch_id,
    ).positions
    first = int(position.strip("[]").split(",")[0])
    conn.execute(
        sa.text("INSERT INTO readings (batch_id, position, leaf) VALUES (:b, :p, :leaf)"),
        {"b": row.batch_id, "p": first, "leaf": bytes(row.leaf)},
    )
    return [Named(batch_label(conn, row.batch_id), f"record position {first} is stored, yet")]


def change_kept_leaf_hashes(conn: sa.Connection) -> list[Named]:
    """Change a leaf hash a receipt keeps (lab-c's: its P1 records remain)."""
    row = one(
        conn,
        "SELECT id, receipt, leaf_hashes FROM erasures WHERE length(leaf_hashes) > 0"
        " ORDER BY id LIMIT 1",
    )
    changed = bytes([row.leaf_hashes[0] ^ 1]) + bytes(row.leaf_hashes[1:])
    conn.execute(
        sa.text("UPDATE erasures SET leaf_hashes = :h WHERE id = :id"), {"h": changed, "id": row.id}
    )
    return [Named(f"receipt (audit entry {row.receipt})", "erasure of it differs")]


def keep_hashes_none_are_due(conn: sa.Connection) -> list[Named]:
    """Give the erasure of a batch's last records (which keeps no leaf hashes) some."""
    row = one(
        conn,
        "SELECT id, receipt, positions FROM erasures WHERE length(leaf_hashes) = 0"
        " ORDER BY id LIMIT 1",
    )
    first, last = json.loads(row.positions)[0]
    conn.execute(
        sa.text("UPDATE erasures SET leaf_hashes = :h WHERE id = :id"),
        {"h": bytes(32 * (last - first + 1)), "id": row.id},
    )
    return [Named(f"receipt (audit entry {row.receipt})", "erasure of it differs")]


def unreadable_erasure(positions: str) -> Tamper:
    """Rewrite an erasure's positions as ``positions``, which do not read as runs."""

    def rewrite(conn: sa.Connection) -> list[Named]:
        row = one(conn, "SELECT id, receipt FROM erasures ORDER BY id LIMIT 1")
        conn.execute(
            sa.text("UPDATE erasures SET positions = :p WHERE id = :id"),
            {"p": positions, "id": row.id},
        )
        return [Named(f"receipt (audit entry {row.receipt})", "erasure of it differs")]

    return rewrite


UNREADABLE = {"not-json": "[[0,", "nested-too-deep": "[" * 3000 + "]" * 3000, "not-runs": '["a"]'}
"""Positions an erasure row may be made to hold that are no runs."""


def delete_an_erasure(conn: sa.Connection) -> list[Named]:
    row = one(conn, "SELECT id, receipt, batch_id FROM erasures ORDER BY id LIMIT 1")
    conn.execute(sa.text("DELETE FROM erasures WHERE id = :id"), {"id": row.id})
    return [Named(f"receipt (audit entry {row.receipt})", "does not keep the leaf hashes")]


def erase_without_a_receipt(conn: sa.Connection) -> list[Named]:
    """Delete a whole batch's records and write an erasure naming an entry that is no receipt."""
    row = one(
        conn,
        "SELECT b.id, b.count FROM batches b WHERE b.device = 'vault-d' ORDER BY b.id LIMIT 1",
    )
    conn.execute(sa.text("DELETE FROM readings WHERE batch_id = :b"), {"b": row.id})
    conn.execute(sa.text("DELETE FROM gap_records WHERE batch_id = :b"), {"b": row.id})
    conn.execute(
        sa.text(
            "INSERT INTO erasures (batch_id, receipt, positions, leaf_hashes)"
            " VALUES (:b, 1, :p, :h)"
        ),
        {"b": row.id, "p": f"[[0,{row.count - 1}]]", "h": bytes(32 * row.count)},
    )
    return [
        Named(f"erasure of batch {row.id}", "which is no deletion receipt"),
        Named(batch_label(conn, row.id), "no deletion receipt removed them"),
    ]


def relabel_the_point_map(conn: sa.Connection) -> list[Named]:
    """Rewrite the stored point map of a batch receipts deleted from, calling its every
    position P2: the map an insider would need for a receipt that lies about its points."""
    row = one(
        conn,
        "SELECT b.id, b.count FROM batches b JOIN erasures e ON e.batch_id = b.id"
        " ORDER BY e.id LIMIT 1",
    )
    relabelled = json.dumps(["P2"] * row.count, separators=(",", ":")).encode()
    conn.execute(
        sa.text("UPDATE batches SET point_map = :m WHERE id = :b"), {"m": relabelled, "b": row.id}
    )
    return [Named(batch_label(conn, row.id), "its stored point map is not the one its statement")]


def relabel_the_signed_point_map(conn: sa.Connection) -> list[Named]:
    """Rewrite a statement to sign a map calling every position P2, and store that map: what
    a signing key's holder could sign. The signatures fail, and the records the batch still
    holds (lab-c's P1) are named against the map."""
    row = one(
        conn,
        "SELECT b.id, b.count, b.statement FROM batches b JOIN erasures e ON e.batch_id = b.id"
        " WHERE b.device = 'lab-c' ORDER BY e.id LIMIT 1",
    )
    relabelled = json.dumps(["P2"] * row.count, separators=(",", ":")).encode()
    said = json.loads(bytes(row.statement)) | {"point_map": hashlib.sha256(relabelled).hexdigest()}
    conn.execute(
        sa.text("UPDATE batches SET statement = :s, point_map = :m WHERE id = :b"),
        {"s": canonical_json(said), "m": relabelled, "b": row.id},
    )
    return [Named(batch_label(conn, row.id), "is of point P1, where its signed point map says P2")]


def delete_the_point_map(conn: sa.Connection) -> list[Named]:
    row = one(
        conn,
        "SELECT b.id FROM batches b JOIN erasures e ON e.batch_id = b.id ORDER BY e.id LIMIT 1",
    )
    conn.execute(sa.text("UPDATE batches SET point_map = NULL WHERE id = :b"), {"b": row.id})
    return [Named(batch_label(conn, row.id), "the store keeps no point map of it")]


def delete_the_hold(conn: sa.Connection) -> list[Named]:
    row = one(conn, "SELECT id FROM holds ORDER BY id LIMIT 1")
    conn.execute(sa.text("DELETE FROM holds WHERE id = :id"), {"id": row.id})
    return [Named(f"hold {row.id}", "missing from the store's holds")]


def release_the_hold_behind_the_log(conn: sa.Connection) -> list[Named]:
    row = one(conn, "SELECT id FROM holds ORDER BY id LIMIT 1")
    conn.execute(
        sa.text("UPDATE holds SET released_seq = 1, released_by = 'x' WHERE id = :id"),
        {"id": row.id},
    )
    return [Named(f"hold {row.id}", "differs from its audit entries")]


def unreadable_hold_row(devices: str) -> Tamper:
    """Rewrite the hold row's devices as ``devices``, which do not read as a list of names."""

    def rewrite(conn: sa.Connection) -> list[Named]:
        row = one(conn, "SELECT id FROM holds ORDER BY id LIMIT 1")
        conn.execute(
            sa.text("UPDATE holds SET devices = :d WHERE id = :id"), {"d": devices, "id": row.id}
        )
        return [Named(f"hold {row.id}", "does not read as a hold's")]

    return rewrite


TAMPERS: dict[str, Tamper] = {
    "kept-record-deleted": delete_a_kept_record,
    "deleted-record-back": bring_back_a_record,
    "kept-leaf-hashes-changed": change_kept_leaf_hashes,
    "leaf-hashes-kept-when-none-are-due": keep_hashes_none_are_due,
    "erasure-deleted": delete_an_erasure,
    "erased-without-receipt": erase_without_a_receipt,
    "point-map-relabelled": relabel_the_point_map,
    "point-map-deleted": delete_the_point_map,
    "signed-point-map-relabelled": relabel_the_signed_point_map,
    "hold-deleted": delete_the_hold,
    "hold-released-behind-the-log": release_the_hold_behind_the_log,
    **{f"erasure-{name}": unreadable_erasure(said) for name, said in UNREADABLE.items()},
    **{
        f"hold-row-{name}": unreadable_hold_row(said)
        for name, said in (UNREADABLE | {"not-runs": "[1]"}).items()  # [1]: not names
    },
}


@pytest.fixture
def lawful(retention_site, store, principals_file, tmp_path):
    """The store after a lawful run, with a hold on line-b: it verifies."""
    hold_on(retention_site, store, PrincipalsFile(principals_file), Scope(("line-b",)), "x")
    run(retention_site, store)
    report = verify(retention_site, store, tmp_path)
    assert report.ok, report.problems
    return store


@pytest.mark.parametrize("tamper", TAMPERS.values(), ids=TAMPERS.keys())
def test_a_tamper_after_a_lawful_run_is_named(retention_site, lawful, backend, tmp_path, tamper):
    with database(backend).begin() as conn:
        expected = tamper(conn)
    assert_named(verify(retention_site, lawful, tmp_path), expected)


@pytest.mark.parametrize("positions", UNREADABLE.values(), ids=UNREADABLE.keys())
def test_a_run_refuses_a_store_whose_erasure_does_not_read(
    retention_site, lawful, backend, capsys, positions
):
    """An erasure row rewritten by someone with the database alone: a retention run (its
    forecast first) refuses the store in words, exit 2, never a traceback."""
    with database(backend).begin() as conn:
        batch = (
            unreadable_erasure(positions)(conn)
            and one(conn, "SELECT batch_id FROM erasures ORDER BY id LIMIT 1").batch_id
        )
    keys = ["--keys", str(retention_site.keys_dir)]
    assert main(["retention", "apply", "--db", backend, "--job", "j", "--dry-run", *keys]) == 2
    said = capsys.readouterr().err
    assert f"the erasure of batch {batch} does not read as the positions" in said, said
    assert "Traceback" not in said


# --- forged deletions ------------------------------------------------------------------


def forge_deletion(
    conn: sa.Connection,
    batch_id: int,
    template: dict[str, Any],
    reshape: Callable[[dict[str, Any]], dict[str, Any]] = lambda said: said,
) -> int:
    """Delete every record batch ``batch_id`` still holds, as a run deleting its last records
    would (a receipt naming the batch as signed, the expiry its plan gives its points, or
    ``template``'s when it gives none, no leaf hashes, and the erasure), without the audit
    key; the receipt's entry number. ``reshape`` changes the receipt before it is written."""
    batch = one(
        conn,
        "SELECT device, window_start, window_end, root, plan_digest FROM batches WHERE id = :b",
        b=batch_id,
    )
    rows = conn.execute(
        sa.text(
            "SELECT position, leaf FROM readings WHERE batch_id = :b UNION ALL"
            " SELECT position, leaf FROM gap_records WHERE batch_id = :b ORDER BY position"
        ),
        {"b": batch_id},
    ).all()
    positions = [r.position for r in rows]
    names = sorted({json.loads(bytes(r.leaf))["point"] for r in rows})
    counts = {n: sum(json.loads(bytes(r.leaf))["point"] == n for r in rows) for n in names}
    plan = data.plan(conn, batch.plan_digest)
    assert plan is not None
    window = instant(batch.window_start), instant(batch.window_end)
    planned = expiry(plan.point[names[0]], *window)
    (calculation,) = template["expiries"] if planned is None else [planned.as_json()]
    said = template | {
        "batch": batch_id,
        "device": batch.device,
        "root": bytes(batch.root).hex(),
        "plan": batch.plan_digest,
        "window_start": batch.window_start,
        "window_end": batch.window_end,
        "count": len(positions),
        "remaining": 0,
        "positions": runs_of(positions),
        "leaf_hashes": "",
        "points": [{"device": batch.device, "point": n, "count": counts[n]} for n in names],
        "expiries": [calculation | {"points": names, "positions": runs_of(positions)}],
    }
    seq = auditlog.append(conn, "retention.deleted", Actor.job("retention"), reshape(said))
    erase(conn, [Erasure(batch_id, positions, b"", seq)])
    return seq


KEPT = {
    "vault-d": "deletes vault-d/P1, whose plan keeps it for ever",
    "lab-c": "deletes lab-c/P1 before its keep_at_least",
}


@pytest.mark.parametrize("device", KEPT)
def test_a_whole_batch_deleted_without_the_audit_key_is_named(
    retention_site, lawful, backend, tmp_path, device
):
    """An insider deletes the last records of a batch whose plan keeps them (for ever, or for
    3 hours): its receipt needs no leaf hashes, but is lawful only if a run's would be."""
    line_a = next(r for r in kinds(lawful, "retention.deleted") if r.payload["device"] == "line-a")
    with database(backend).begin() as conn:
        batch_id = one(
            conn, "SELECT id FROM batches WHERE device = :d ORDER BY id LIMIT 1", d=device
        ).id
        seq = forge_deletion(conn, batch_id, line_a.payload)
    report = verify(retention_site, lawful, tmp_path)
    unsigned = Named(f"audit entry {seq}", "a retention.deleted entry after the last checkpoint")
    assert_named(report, [Named(f"receipt (audit entry {seq})", KEPT[device]), unsigned])


def test_a_whole_batch_deleted_without_the_audit_key_while_held_is_named(
    retention_site, lawful, backend, tmp_path
):
    line_a = next(r for r in kinds(lawful, "retention.deleted") if r.payload["device"] == "line-a")
    with database(backend).begin() as conn:
        batch_id = one(conn, "SELECT id FROM batches WHERE device = 'line-b' LIMIT 1").id
        seq = forge_deletion(conn, batch_id, line_a.payload)
    assert_named(
        verify(retention_site, lawful, tmp_path),
        [Named(f"receipt (audit entry {seq})", "deletes line-b/P1 during hold 1")],
    )


def no_point(said: dict[str, Any]) -> dict[str, Any]:
    return said | {"expiries": [e | {"points": []} for e in said["expiries"]]}


def a_point_left_out(said: dict[str, Any]) -> dict[str, Any]:
    return said | {"points": said["points"][1:]}


def counts_that_do_not_add_up(said: dict[str, Any]) -> dict[str, Any]:
    return said | {"points": [p | {"count": p["count"] + 1} for p in said["points"]]}


def to_2_pow_53(said: dict[str, Any]) -> dict[str, Any]:
    """One run of 2**53 - 1 positions: checked on the run, not walked position by position."""
    huge = [[0, 2**53 - 2]]
    points = [p | {"count": 2**53 - 1} for p in said["points"][:1]]
    expiries = [e | {"points": [points[0]["point"]], "positions": huge} for e in said["expiries"]]
    return said | {"count": 2**53 - 1, "positions": huge, "points": points, "expiries": expiries}


MISSHAPEN = {
    "no point": (no_point, "an expiry's points are not a list of names, each once"),
    "a point left out": (a_point_left_out, "its points are not its expiries' points"),
    "counts": (counts_that_do_not_add_up, "its points' counts are not its expiries' positions"),
    "2**53 positions": (to_2_pow_53, "deletes position 9007199254740990 of a batch of"),
}


@pytest.mark.parametrize(
    "case",
    [(device, *shape) for device in ("vault-d", "line-b") for shape in MISSHAPEN.values()],
    ids=[f"{device}-{name}" for device in ("vault-d", "line-b") for name in MISSHAPEN],
)
def test_a_misshapen_receipt_without_the_audit_key_is_named(
    retention_site, lawful, backend, tmp_path, case
):
    """A receipt whose expiry names no point was checked against no plan nor hold: it deleted
    a batch kept for ever (vault-d) or held (line-b) as lawfully as an expired one."""
    device, reshape, message = case
    line_a = next(r for r in kinds(lawful, "retention.deleted") if r.payload["device"] == "line-a")
    with database(backend).begin() as conn:
        batch_id = one(
            conn, "SELECT id FROM batches WHERE device = :d ORDER BY id LIMIT 1", d=device
        ).id
        seq = forge_deletion(conn, batch_id, line_a.payload, reshape)
    report = verify(retention_site, lawful, tmp_path)
    assert_named(report, [Named(f"receipt (audit entry {seq})", message)])


def as_point(claimed: str, template: dict[str, Any]) -> Callable[[dict[str, Any]], dict[str, Any]]:
    """A receipt that says every position it deletes was ``claimed``, with the expiry the
    lawful receipt ``template`` gives that point."""
    (calculation,) = [e for e in template["expiries"] if claimed in e["points"]]

    def reshape(said: dict[str, Any]) -> dict[str, Any]:
        points = [{"device": said["device"], "point": claimed, "count": said["count"]}]
        expiries = [calculation | {"points": [claimed], "positions": said["positions"]}]
        return said | {"points": points, "expiries": expiries}

    return reshape


def deleted_as_p2(retention_site, store, backend, tmp_path, device: str) -> None:
    """An insider deletes the P1 records the batch of ``device``'s lawful receipt still holds,
    with a receipt calling them P2 (expired, unheld): named by the batch's signed point map."""
    lawful = next(r for r in kinds(store, "retention.deleted") if r.payload["device"] == device)
    assert lawful.payload["remaining"] > 0  # the run kept P1 records of it
    batch_id = lawful.payload["batch"]
    with database(backend).begin() as conn:
        seq = forge_deletion(conn, batch_id, lawful.payload, as_point("P2", lawful.payload))
        label = batch_label(conn, batch_id)
    assert_named(
        verify(retention_site, store, tmp_path),
        [Named(f"receipt (audit entry {seq})", f"of {label} as P2, where its signed point map")],
    )


def test_records_not_expired_deleted_as_another_point_are_named(
    retention_site, store, backend, tmp_path
):
    """lab-c keeps P1 at least 3 hours, P2 at most 10 minutes: after a lawful run its batches
    hold only P1 records, which the insider deletes as P2."""
    run(retention_site, store)
    deleted_as_p2(retention_site, store, backend, tmp_path, "lab-c")


def test_held_records_deleted_as_another_point_are_named(
    retention_site, store, principals_file, backend, tmp_path
):
    """A hold on line-a's P1 alone: the run keeps P1 and deletes P2; the insider deletes the
    held P1 records as P2 (the same retention class)."""
    holder = PrincipalsFile(principals_file)
    hold_on(retention_site, store, holder, Scope(("line-a",), ("P1",)), "litigation")
    run(retention_site, store)
    deleted_as_p2(retention_site, store, backend, tmp_path, "line-a")
