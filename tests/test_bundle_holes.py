"""Records missing from an audit bundle: a batch the export asks whole is whole, whatever its own
member says; an export leaves out no batch the log records of the devices and range it asks
(whatever the store's columns say of it); an export never presents a record deleted without a
receipt of the log as removed; and a deletion receipt the bundle carries says what it deleted in
the one shape receipts have. Both verifiers (`converge verify` and the bundle's verify.py) name
each the same way."""

from __future__ import annotations

import base64
import json
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from functools import partial
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
import test_export
from evidence_kit import fill, verify
from retention_kit import hold_on, kinds, run
from test_export import Exported, Members, export, failed, forged, trust_file
from test_retention_tamper import as_point, forge_deletion
from test_tamper import database, one

from engine.audit import DEFAULT_AUDIT_KEY, Actor, seal_with
from engine.export import verifier
from engine.plans.expiry import expiry
from engine.sign.leaf import instant, point_map_of
from engine.sign.merkle import MerkleTree
from engine.store import auditlog, data
from engine.store.retention import Erasure, Scope, erase
from engine.store.retention import runs as runs_of
from engine.verify.trust import instant as trust_instant
from plugins.fileprincipals import PrincipalsFile

clean_python, both, plant = test_export.clean_python, test_export.both, test_export.plant

# --- a batch the export asks whole -----------------------------------------------------------


def test_a_record_dropped_from_a_batch_the_export_asks_whole_is_named(
    plant: Exported, tmp_path: Path, both
):
    """The log key's holder gives a batch of a whole-device export a proof per record (as if
    exported in part) and drops one record: the signed decision asks every record of it."""
    gone: dict[str, int] = {}

    def drop(members: Members) -> Members:
        lines = members["records.jsonl"].splitlines(keepends=True)
        batch = json.loads(lines[0])["batch"]
        mine = [line for line in lines if json.loads(line)["batch"] == batch]
        leaves = [line[line.index(b'"leaf":') + 7 : -2] for line in mine]
        tree = MerkleTree.from_leaves(leaves)
        said = json.loads(members[f"batches/{batch}.json"])
        assert "proofs" not in said
        said["point_map"] = point_map_of(leaves).decode()  # as a batch exported in part has
        said["proofs"] = {
            str(p): [base64.b64encode(h).decode() for h in tree.inclusion_proof(p)]
            for p in range(len(mine))
            if p != 3
        }
        at = lines.index(mine[3])
        rows = members["records.csv"].splitlines(keepends=True)
        gone["batch"] = batch
        return members | {
            f"batches/{batch}.json": json.dumps(said).encode(),
            "records.jsonl": b"".join(lines[:at] + lines[at + 1 :]),
            "records.csv": b"".join(rows[: at + 1] + rows[at + 2 :]),
        }

    def fewer(manifest: dict[str, Any]) -> None:
        manifest["records"] -= 1

    out = forged(plant.site, plant.bundle, tmp_path / "dropped.zip", drop, manifest_change=fewer)
    assert failed(both(out, plant.trust)) == [
        f"FAIL batch {gone['batch']}: position 3 is neither exported nor removed by a receipt"
        " (retention.json), though the export asks for every record of it"
    ]


# --- a batch of the log left out -------------------------------------------------------------


def _newest(conn: sa.Connection, device: str) -> Any:
    return one(
        conn,
        "SELECT id, audit_seq, window_start, window_end FROM batches WHERE device = :d"
        " ORDER BY window_start DESC, id DESC LIMIT 1",
        d=device,
    )


@pytest.mark.parametrize("backend", ["sqlite"], indirect=True)
def test_an_export_refuses_to_leave_out_a_batch_whose_device_column_was_changed(
    retention_site, backend, tmp_path: Path, capsys
):
    """The device's newest batch renamed in its row (database write access, no key): the bundle
    could not show it missing (no gap in the chain at its head), so the export, which has the
    log's batch.stored entry for it, refuses and names the batch, its entry and what differs."""
    fill(retention_site, backend, tmp_path, 60).close()
    with database(backend).begin() as conn:
        newest = _newest(conn, "vault-d")
        conn.execute(
            sa.text("UPDATE batches SET device = 'vault-d ' WHERE id = :i"), {"i": newest.id}
        )
    out = tmp_path / "out.zip"
    assert export(backend, retention_site.keys_dir, out, "--device", "vault-d") != 0
    assert not out.exists()
    err = capsys.readouterr().err
    assert f"batch.stored entry {newest.audit_seq} (device 'vault-d'" in err
    assert f"batch {newest.id}, which it records, is not among the export's" in err
    assert "device 'vault-d ' / 'vault-d'" in err


@pytest.mark.parametrize("backend", ["sqlite"], indirect=True)
@pytest.mark.parametrize("ranged", [True, False], ids=["out-of-range", "whole"])
def test_an_export_refuses_a_batch_whose_window_columns_were_changed(
    retention_site, backend, tmp_path: Path, capsys, ranged: bool
):
    """The newest batch's window columns moved to 2000: out of an export from its window's
    start, it would be left out (the log's entry names it); in a whole-history export, its row
    no longer says what its signed statement does. Either way the export refuses, naming it."""
    fill(retention_site, backend, tmp_path, 60).close()
    with database(backend).begin() as conn:
        newest = _newest(conn, "vault-d")
        conn.execute(
            sa.text(
                "UPDATE batches SET window_start = '2000-01-01T00:00:00.000000Z',"
                " window_end = '2000-01-01T00:00:30.000000Z' WHERE id = :i"
            ),
            {"i": newest.id},
        )
    out = tmp_path / "out.zip"
    span = ("--from", newest.window_start) if ranged else ()
    assert export(backend, retention_site.keys_dir, out, "--device", "vault-d", *span) != 0
    assert not out.exists()
    err = capsys.readouterr().err
    moved = f"window_start '2000-01-01T00:00:00.000000Z' / '{newest.window_start}'"
    if ranged:
        assert f"batch.stored entry {newest.audit_seq} (device 'vault-d'" in err
        assert f"batch {newest.id}, which it records, is not among the export's" in err
    else:
        assert f"batch {newest.id} (entry {newest.audit_seq}): its row differs from" in err
    assert moved in err


# --- a record deleted with no receipt ---------------------------------------------------------


@pytest.mark.parametrize("backend", ["sqlite"], indirect=True)
@pytest.mark.parametrize(
    "asked", [("vault-d", ()), ("line-b", ("--point", "P1"))], ids=["whole", "one-point"]
)
def test_an_export_refuses_a_record_deleted_with_no_receipt_of_the_log(
    retention_site, backend, tmp_path: Path, capsys, asked: tuple[str, tuple[str, ...]]
):
    """A plain DELETE, and an erasures row holding the record's leaf hash (what anyone who can
    write the database can add): the export names the position rather than prove the others
    around it, even where the bundle could not show the record missing (one point asked)."""
    device, extra = asked
    fill(retention_site, backend, tmp_path, 60).close()
    with database(backend).begin() as conn:
        rows = conn.execute(
            sa.text(
                "SELECT r.id, r.batch_id, r.position, r.leaf FROM readings r JOIN batches b"
                " ON b.id = r.batch_id WHERE b.device = :d ORDER BY r.id"
            ),
            {"d": device},
        ).all()
        row = next(r for r in rows[5:] if b'"point":"P1"' in bytes(r.leaf))
        conn.execute(sa.text("DELETE FROM readings WHERE id = :i"), {"i": row.id})
        conn.execute(
            sa.text(
                "INSERT INTO erasures (batch_id, receipt, positions, leaf_hashes)"
                " VALUES (:b, 1, :p, :h)"
            ),
            {
                "b": row.batch_id,
                "p": f"[[{row.position},{row.position}]]",
                "h": verifier.leaf_hash(bytes(row.leaf)),
            },
        )
    out = tmp_path / "out.zip"
    assert export(backend, retention_site.keys_dir, out, "--device", device, *extra) != 0
    assert not out.exists()
    assert (
        f"batch {row.batch_id}: position {row.position} holds no record, and no deletion"
        " receipt of the log removed it"
    ) in capsys.readouterr().err


# --- a receipt's shape ------------------------------------------------------------------------

Receipt = dict[str, Any]


def _naming(batch: Any) -> Receipt:
    """A receipt's members that name ``batch`` (a row of the batches table) as it is signed."""
    return {
        "batch": batch.id,
        "device": batch.device,
        "root": bytes(batch.root).hex(),
        "plan": batch.plan_digest,
        "window_start": batch.window_start,
        "window_end": batch.window_end,
    }


def _sign(conn: sa.Connection, site) -> None:
    """Sign a checkpoint over what ``conn``'s transaction appended, as a run that holds the
    audit key but writes a bad receipt would: no checkpoint signs a receipt that waits in the
    unsigned tail."""
    seal = seal_with(site.key_store(), DEFAULT_AUDIT_KEY, datetime.now(UTC))
    auditlog.checkpoint(conn, seal)


def _groups(said: Receipt, *spans: list[list[int]]) -> list[dict[str, Any]]:
    return [said["expiries"][0] | {"points": ["P1"], "positions": span} for span in spans]


def _two_groups(said: Receipt) -> None:
    said["expiries"] = _groups(said, [[0, 9]], [[10, said["count"] - 1]])


def _no_point(said: Receipt) -> None:
    said["expiries"][0]["points"] = []


def _other_point(said: Receipt) -> None:
    said["points"][0]["point"] = "P2"


def _miscounted(said: Receipt) -> None:
    said["points"][0]["count"] -= 1


def _runs(runs: Callable[[int], list[list[Any]]]) -> Callable[[Receipt], None]:
    """Sets the receipt's positions to ``runs`` of its batch's last position."""

    def change(said: Receipt) -> None:
        said["positions"] = runs(said["count"] - 1)

    return change


NOT_A_RUN = "positions: {run} is not a run after the ones before it"
FORGED = {
    "a point in two expiries": (_two_groups, "names a point in two of its expiries"),
    "an expiry naming no point": (
        _no_point,
        "an expiry names no point, or not a list of point names",
    ),
    "points other than its expiries'": (
        _other_point,
        "its points are not its expiries' points, each once, with a count",
    ),
    "a count other than its expiry's": (
        _miscounted,
        "its points count other than the {n} positions of expiry 1",
    ),
    "a boolean position": (
        _runs(lambda last: [[False, last]]),
        NOT_A_RUN.format(run="[False, {last}]"),
    ),
    "a fraction": (_runs(lambda last: [[0.5, last]]), NOT_A_RUN.format(run="[0.5, {last}]")),
    "a string": (_runs(lambda last: [["0", last]]), NOT_A_RUN.format(run="['0', {last}]")),
    "overlapping runs": (
        _runs(lambda last: [[0, 5], [5, last]]),
        NOT_A_RUN.format(run="[5, {last}]"),
    ),
    "adjacent runs": (_runs(lambda last: [[0, 5], [6, last]]), NOT_A_RUN.format(run="[6, {last}]")),
    "descending runs": (_runs(lambda last: [[7, last], [0, 5]]), NOT_A_RUN.format(run="[0, 5]")),
    "a run past its batch": (
        _runs(lambda last: [[0, 2**53 - 2]]),
        "positions: 9007199254740990 is past the last of its batch's {n} records",
    ),
}


@pytest.mark.parametrize("backend", ["sqlite"], indirect=True)
@pytest.mark.parametrize("forgery", list(FORGED))
def test_a_bundled_receipt_that_is_not_in_a_receipts_shape_is_named(
    retention_site, backend, tmp_path: Path, both, forgery: str
):
    """A receipt, signed into the log by a run that holds the key but decides wrongly, for a
    batch of vault-d (kept for ever) whose records are still stored; the export carries it
    and both verifiers name what is wrong with it, at once (a run of 2**53 positions is not
    counted out)."""
    change, message = FORGED[forgery]
    store = fill(retention_site, backend, tmp_path, 60)
    run(retention_site, store)
    template = next(r for r in kinds(store, "retention.deleted") if r.payload["device"] == "line-a")
    store.close()
    with database(backend).begin() as conn:
        batch = one(
            conn,
            "SELECT id, device, window_start, window_end, root, plan_digest, count FROM batches"
            " WHERE device = 'vault-d' ORDER BY id LIMIT 1",
        )
        said = (
            template.payload
            | _naming(batch)
            | {
                "count": batch.count,
                "remaining": 0,
                "positions": [[0, batch.count - 1]],
                "leaf_hashes": "",
                "points": [{"device": batch.device, "point": "P1", "count": batch.count}],
            }
        )
        said["expiries"] = _groups(said, [[0, batch.count - 1]])
        change(said)
        seq = auditlog.append(conn, "retention.deleted", Actor.job("retention"), said)
        _sign(conn, retention_site)
    out = tmp_path / "vault-d.zip"
    assert export(backend, retention_site.keys_dir, out, "--device", "vault-d") == 0
    trust = trust_file(backend, retention_site.keys_dir, tmp_path / "trust.json")
    assert failed(both(out, trust)) == [
        f"FAIL receipt (audit entry {seq}): {message.format(n=batch.count, last=batch.count - 1)}"
    ]


@pytest.mark.parametrize("backend", ["sqlite"], indirect=True)
def test_a_bundled_receipt_deleting_what_another_deleted_is_named(
    retention_site, backend, tmp_path: Path, both
):
    """A lawful receipt written again (by a run that holds the key): the bundle's
    note counted its records twice; both verifiers name it, as audit verify does."""
    store = fill(retention_site, backend, tmp_path, 60)
    run(retention_site, store)
    lawful = next(r for r in kinds(store, "retention.deleted") if r.payload["device"] == "line-a")
    store.close()
    with database(backend).begin() as conn:
        seq = auditlog.append(conn, "retention.deleted", Actor.job("retention"), lawful.payload)
        _sign(conn, retention_site)
    out = tmp_path / "line-a.zip"
    assert export(backend, retention_site.keys_dir, out, "--device", "line-a") == 0
    trust = trust_file(backend, retention_site.keys_dir, tmp_path / "trust.json")
    first = lawful.payload["positions"][0][0]
    want = f"FAIL receipt (audit entry {seq}): deletes position {first} of batch"
    assert [line for line in failed(both(out, trust)) if line.startswith(want)]


@pytest.mark.parametrize(
    "archive", [{"entry": {"seq": 1}, "file": "a.zip"}, {"entry": [1]}, "a.zip", 7]
)
def test_an_export_over_a_receipt_not_shaped_as_one_is_refused(
    retention_site, backend, tmp_path: Path, capsys, archive: object
):
    """A receipt signed by a run that holds the key, its ``archive`` of no archive's shape:
    the export names the entry's shape and writes nothing, rather than fail half-way."""
    store = fill(retention_site, backend, tmp_path, 60)
    run(retention_site, store)
    lawful = next(r for r in kinds(store, "retention.deleted") if r.payload["device"] == "line-a")
    store.close()
    with database(backend).begin() as conn:
        said = lawful.payload | {"archive": archive}
        auditlog.append(conn, "retention.deleted", Actor.job("retention"), said)
        _sign(conn, retention_site)
    out = tmp_path / "line-a.zip"
    capsys.readouterr()
    assert export(backend, retention_site.keys_dir, out, "--device", "line-a") != 0
    assert "a retention entry of the audit log is not shaped as its kind" in capsys.readouterr().err
    assert not out.exists()


def _deleted_by_a_signed_receipt(
    retention_site, store, backend, device: str, *, dated: str, calculation: dict[str, Any]
) -> int:
    """Delete the P1 readings of ``device``'s first batch in plain SQL, and write a receipt of
    them dated ``dated`` (``calculation`` its expiry) with a checkpoint of now signing it, as
    a run that holds the audit key but decides wrongly would; the receipt's entry number."""
    with database(backend).begin() as conn:
        batch = one(
            conn,
            "SELECT id, device, root, plan_digest, window_start, window_end, count FROM batches"
            " WHERE device = :d ORDER BY id LIMIT 1",
            d=device,
        )
        select = "SELECT position, leaf FROM readings WHERE batch_id = :b ORDER BY position"
        leaves = conn.execute(sa.text(select), {"b": batch.id}).all()
        gone = [p for p, leaf in leaves if json.loads(bytes(leaf))["point"] == "P1"]
        hashes = b"".join(verifier.leaf_hash(bytes(leaf)) for p, leaf in leaves if p in gone)
        listed = ",".join(map(str, gone))
        delete = f"DELETE FROM readings WHERE batch_id = :b AND position IN ({listed})"
        conn.execute(sa.text(delete), {"b": batch.id})
    said = _naming(batch) | {
        "count": len(gone),
        "remaining": batch.count - len(gone),
        "positions": runs_of(gone),
        "leaf_hashes": base64.b64encode(hashes).decode(),
        "points": [{"device": batch.device, "point": "P1", "count": len(gone)}],
        "expiries": [calculation | {"points": ["P1"], "positions": runs_of(gone)}],
        "holds": {"in_force": [], "kept": {}},
        "run": {"id": str(uuid.uuid4()), "started": dated},
        "archive": None,
    }
    with store.signed(partial(seal_with, retention_site.key_store(), store.audit_key)) as conn:
        seq = auditlog.append(conn, "retention.deleted", Actor.job("retention"), said, dated)
        erase(conn, [Erasure(batch.id, gone, hashes, seq)])
    return seq


def _named_by_audit_verify(retention_site, store, seq: int, said: str) -> bool:
    problems = verify(retention_site, store).problems
    return any(p.item == f"receipt (audit entry {seq})" and said in p.message for p in problems)


@pytest.mark.parametrize("backend", ["sqlite"], indirect=True)
def test_a_bundled_receipt_dated_after_the_checkpoint_that_signs_it_is_named(
    retention_site, backend, tmp_path: Path, both
):
    """lab-c/P1 (kept at least 3 hours) deleted a minute after it was stored, with a receipt
    dated 4 hours ahead: audit verify named it; the bundle called the deletion lawful at the
    receipt's own date. Now both verifiers name it."""
    store = fill(retention_site, backend, tmp_path, 60)
    later = instant(datetime.now(UTC) + timedelta(hours=4))
    seq = _deleted_by_a_signed_receipt(
        retention_site, store, backend, "lab-c", dated=later, calculation={}
    )
    assert _named_by_audit_verify(retention_site, store, seq, "dated")
    store.close()
    out = tmp_path / "lab-c.zip"
    assert export(backend, retention_site.keys_dir, out, "--device", "lab-c") == 0
    trust = trust_file(backend, retention_site.keys_dir, tmp_path / "trust.json")
    want = f"FAIL receipt (audit entry {seq}): dated {later}, after the checkpoint of size"
    assert [line for line in failed(both(out, trust)) if line.startswith(want)]


@pytest.mark.parametrize("backend", ["sqlite"], indirect=True)
def test_a_bundle_from_inside_a_batch_carries_the_hold_that_covered_it(
    retention_site, backend, principals_file, tmp_path: Path, both
):
    """A hold on line-a until the middle of its first batch's window covers that batch; a
    receipt deleting it anyway is unlawful. An export from that middle on carries the receipt
    (its batch meets the range) and now the hold too, so both verifiers name the deletion."""
    store = fill(retention_site, backend, tmp_path, 60)
    with store.reading() as conn:
        first = data.batches(conn, "line-a", None, None)[0]
        plan = data.plan(conn, first.plan_digest)
    assert plan is not None
    window = trust_instant(first.window_start), trust_instant(first.window_end)
    mid = instant(window[0] + timedelta(seconds=10))
    hold_on(
        retention_site,
        store,
        PrincipalsFile(principals_file),
        Scope(("line-a",), (), None, mid),
        "x",
    )
    calculation = expiry(plan.point["P1"], *window)
    assert calculation is not None
    now = instant(datetime.now(UTC))
    seq = _deleted_by_a_signed_receipt(
        retention_site, store, backend, "line-a", dated=now, calculation=calculation.as_json()
    )
    assert _named_by_audit_verify(retention_site, store, seq, "during hold")
    store.close()
    out = tmp_path / "line-a.zip"
    assert export(backend, retention_site.keys_dir, out, "--device", "line-a", "--from", mid) == 0
    trust = trust_file(backend, retention_site.keys_dir, tmp_path / "trust.json")
    want = f"FAIL receipt (audit entry {seq}): deletes line-a/P1"
    assert [line for line in failed(both(out, trust)) if line.startswith(want) and "hold" in line]


# --- a receipt's points, against the signed point map --------------------------------------


@pytest.mark.parametrize("backend", ["sqlite"], indirect=True)
def test_a_bundled_receipt_deleting_records_as_another_point_is_named(
    retention_site, backend, tmp_path: Path, both
):
    """lab-c keeps P1 at least 3 hours, P2 at most 10 minutes: after a lawful run its batches
    hold only P1 records. A run that holds the audit key but lies deletes them with a signed
    receipt calling them P2 (expired, unheld); audit verify names it, and the
    export of lab-c carries the batch's signed point map, by which both verifiers name it."""
    store = fill(retention_site, backend, tmp_path, 60)
    run(retention_site, store)
    lab_c = next(r for r in kinds(store, "retention.deleted") if r.payload["device"] == "lab-c")
    batch_id = lab_c.payload["batch"]
    with database(backend).begin() as conn:
        first = one(
            conn,
            "SELECT min(position) AS p FROM (SELECT position FROM readings WHERE batch_id = :b"
            " UNION ALL SELECT position FROM gap_records WHERE batch_id = :b) AS kept",
            b=batch_id,
        ).p
        seq = forge_deletion(conn, batch_id, lab_c.payload, as_point("P2", lab_c.payload))
        _sign(conn, retention_site)
    count = lab_c.payload["remaining"]  # what the forged receipt deletes
    lie = f"deletes position {first} of batch {batch_id}"
    assert _named_by_audit_verify(retention_site, store, seq, "where its signed point map says P1")
    store.close()
    out = tmp_path / "lab-c.zip"
    assert export(backend, retention_site.keys_dir, out, "--device", "lab-c") == 0
    trust = trust_file(backend, retention_site.keys_dir, tmp_path / "trust.json")
    assert failed(both(out, trust)) == [
        f"FAIL receipt (audit entry {seq}): {lie} as P2, where its signed point map says P1",
        f"FAIL batch {batch_id}: position {first} (and {count - 1} more) is neither exported nor"
        " removed by a receipt (retention.json), though the export asks for every record of it",
    ]


@pytest.mark.parametrize("backend", ["sqlite"], indirect=True)
def test_a_bundled_point_map_that_is_not_the_signed_one_is_named(
    retention_site, backend, tmp_path: Path, both
):
    """The log key's holder relabels the point map of a batch exported in part (what a lying
    receipt would need): its SHA-256 is not the one the statement signs."""
    store = fill(retention_site, backend, tmp_path, 60)
    run(retention_site, store)
    lab_c = next(r for r in kinds(store, "retention.deleted") if r.payload["device"] == "lab-c")
    batch_id = lab_c.payload["batch"]
    store.close()
    out = tmp_path / "lab-c.zip"
    assert export(backend, retention_site.keys_dir, out, "--device", "lab-c") == 0
    trust = trust_file(backend, retention_site.keys_dir, tmp_path / "trust.json")

    def relabel(members: Members) -> Members:
        name = f"batches/{batch_id}.json"
        said = json.loads(members[name])
        said["point_map"] = json.dumps(["P2"] * len(json.loads(said["point_map"])))
        return members | {name: json.dumps(said).encode()}

    relabelled = forged(retention_site, out, tmp_path / "relabelled.zip", relabel)
    assert (
        f"FAIL batch {batch_id} (batches/{batch_id}.json): its point map is not the one its"
        " statement signs"
    ) in failed(both(relabelled, trust))
