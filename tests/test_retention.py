"""Lawful retention: what expired goes with a signed receipt, holds keep what they cover, and
verification tells a lawful deletion from tampering; on SQLite and PostgreSQL.

The store is filled with records of an hour ago (tests/retention_kit.py), so the
10-minute ceilings have passed and the 3-hour minimum has not.
"""

from __future__ import annotations

import json
from datetime import timedelta

import pytest
import sqlalchemy as sa
from evidence_kit import T0, fill, verify
from retention_kit import kinds, later, remaining, run
from test_tamper import database

from engine.cli import main
from engine.errors import AccessDenied
from engine.retention import StoreUnverified, forecast
from engine.retention.holds import HoldRefused, place, release
from engine.sign.leaf import instant
from engine.store.retention import RetentionBusy, Scope, retention_lock
from plugins.fileprincipals import PrincipalsFile

SECONDS = 60
"""Two 30-second windows per device."""
POINTS = {"line-a": 2, "line-b": 2, "lab-c": 2, "vault-d": 1}


@pytest.fixture
def store(retention_site, backend, tmp_path):
    filled = fill(retention_site, backend, tmp_path, SECONDS)
    yield filled
    filled.close()


@pytest.fixture
def people(principals_file):
    return PrincipalsFile(principals_file)


def test_a_run_deletes_what_expired_each_batch_with_its_receipt(retention_site, store, tmp_path):
    before = remaining(store)
    done = run(retention_site, store)
    assert done.deleted == {
        ("line-a", "P1"): SECONDS,
        ("line-a", "P2"): SECONDS,
        ("line-b", "P1"): SECONDS,
        ("line-b", "P2"): SECONDS,
        ("lab-c", "P2"): SECONDS,
    }
    assert done.batches == 6 and len(done.receipts) == 6
    assert remaining(store) == before - 5 * SECONDS == 2 * SECONDS  # lab-c P1 and vault-d
    assert store.entries_since_checkpoint() == 0  # the receipts are signed before it returns
    receipts = kinds(store, "retention.deleted")
    assert [r.seq for r in receipts] == done.receipts
    first = receipts[0]
    assert first.actor["kind"] == "job" and first.actor["id"] == "retention"
    said = first.payload
    assert said["device"] == "line-a" and said["count"] == 2 * 30 and said["remaining"] == 0
    assert said["positions"] == [[0, 59]]
    (expired,) = said["expiries"]
    assert expired["rule"] == "keep_at_most" and expired["keep_at_most_ms"] == 600_000
    assert expired["policies"] == ["test-retention @ policies/test.yaml:12:3"]
    assert expired["expires"] == instant(T0 + timedelta(minutes=10))
    assert said["holds"] == {"in_force": [], "kept": {}} and said["archive"] is None
    report = verify(retention_site, store, tmp_path)
    assert report.ok, report.problems
    assert not report.findings
    assert [d.message.split(" records of ")[1].split(" ")[0] for d in report.deletions] == [
        "line-a",
        "line-b",
        "lab-c",
    ]
    assert report.counts["deletion receipts"] == 6


def test_a_partly_expired_batch_keeps_its_other_records_and_their_proofs(
    retention_site, store, tmp_path
):
    run(retention_site, store)
    lab = [r.payload for r in kinds(store, "retention.deleted") if r.payload["device"] == "lab-c"]
    assert [r["remaining"] for r in lab] == [30, 30]
    assert all(r["points"] == [{"device": "lab-c", "point": "P2", "count": 30}] for r in lab)
    report = verify(retention_site, store, tmp_path)
    assert report.ok, report.problems


def test_the_next_run_finds_nothing_more_and_writes_nothing(retention_site, store):
    run(retention_site, store)
    entries = store.counts()["audit_entries"]
    again = run(retention_site, store)
    assert again.records == 0 and again.receipts == [] and again.checkpoint is None
    assert store.counts()["audit_entries"] == entries


def test_data_kept_past_keep_at_most_is_a_finding_not_a_failure(retention_site, store, tmp_path):
    report = verify(retention_site, store, tmp_path)
    assert report.ok, report.problems
    assert sorted(f.item for f in report.findings) == ["lab-c", "line-a", "line-b"]
    assert any("kept past their keep_at_most with no hold" in f.message for f in report.findings)


def test_a_forecast_at_a_later_time_changes_nothing(retention_site, store):
    entries, records = store.counts()["audit_entries"], remaining(store)
    now = forecast(store, later(0))
    assert now.records == 5 * SECONDS
    in_four_hours = forecast(store, later(4))
    assert in_four_hours.deleted["lab-c", "P1"] == SECONDS  # its 3-hour minimum has passed then
    assert (store.counts()["audit_entries"], remaining(store)) == (entries, records)


# --- holds -----------------------------------------------------------------------------


def test_a_hold_keeps_what_it_covers_until_it_is_released(retention_site, store, people, tmp_path):
    placed = place(store, people, "lena@example.com", Scope(("line-b",)), "dispute over lot 42")
    done = run(retention_site, store)
    assert ("line-b", "P1") not in done.deleted and done.deleted["line-a", "P1"] == SECONDS
    assert done.kept == {placed.id: 2 * SECONDS}
    assert done.held_past == {("line-b", "P1"): SECONDS, ("line-b", "P2"): SECONDS}
    report = verify(retention_site, store, tmp_path)
    assert report.ok, report.problems
    assert any(n.startswith("line-b: 120 records") and "hold 1" in n for n in report.notes)
    assert {f.item for f in report.findings} == set()  # held data is a note, not a finding
    release(store, people, "lena@example.com", placed.id, "settled")
    after = run(retention_site, store)
    assert after.deleted == {("line-b", "P1"): SECONDS, ("line-b", "P2"): SECONDS}
    report = verify(retention_site, store, tmp_path)
    assert report.ok, report.problems
    (entry,) = kinds(store, "hold.placed")
    assert entry.actor["id"] == "lena@example.com" and entry.payload["devices"] == ["line-b"]
    (gone,) = kinds(store, "hold.released")
    assert gone.payload == {
        "hold": placed.id,
        "reason": "settled",
        "decision": gone.payload["decision"],
    }
    decisions = [e.payload for e in kinds(store, "access.decision")]
    assert [d["action"] for d in decisions] == ["hold", "hold"]
    assert all(d["outcome"] == "allow" for d in decisions)


def test_a_hold_on_points_and_a_range_covers_only_those(retention_site, store, people):
    window = Scope(("line-a",), ("P2",), instant(T0), instant(T0 + timedelta(seconds=30)))
    place(store, people, "lena@example.com", window, "one window of one point")
    done = run(retention_site, store)
    assert done.deleted["line-a", "P1"] == SECONDS
    assert done.deleted["line-a", "P2"] == SECONDS - 30  # its first window is held


def test_holds_stack_and_one_release_leaves_the_other(retention_site, store, people):
    first = place(store, people, "lena@example.com", Scope(("line-a",)), "one")
    place(store, people, "lena@example.com", Scope(("line-a",), ("P*",)), "two")
    release(store, people, "lena@example.com", first.id, "done")
    assert ("line-a", "P1") not in run(retention_site, store).deleted


def test_a_principal_without_a_hold_grant_is_refused_and_logged(store, people):
    with pytest.raises(AccessDenied, match=r"no access\.hold grant"):
        place(store, people, "alice@example.com", Scope(("line-a",)), "why not")
    with pytest.raises(AccessDenied, match=r"access\.deny denies contractor"):
        place(store, people, "bob@contractor.example", Scope(("line-a",)), "why not")
    with pytest.raises(AccessDenied, match="unknown to the principals"):
        place(store, people, "mallory@example.com", Scope(("line-a",)), "why not")
    outcomes = [e.payload["outcome"] for e in kinds(store, "access.decision")]
    assert outcomes == ["deny", "deny", "deny"]
    assert not kinds(store, "hold.placed")


def test_releasing_an_unknown_or_released_hold_is_refused(store, people):
    with pytest.raises(HoldRefused, match="there is no hold 99"):
        release(store, people, "lena@example.com", 99, "no such hold")
    placed = place(store, people, "lena@example.com", Scope(("line-a",)), "x")
    release(store, people, "lena@example.com", placed.id, "once")
    with pytest.raises(HoldRefused, match=f"hold {placed.id} was released already, by lena"):
        release(store, people, "lena@example.com", placed.id, "twice")


def test_a_hold_on_deleted_data_names_the_receipts(retention_site, store, people):
    run(retention_site, store)
    receipts = [r.seq for r in kinds(store, "retention.deleted") if r.payload["device"] == "line-a"]
    closed = Scope(("line-a",), (), instant(T0), instant(T0 + timedelta(seconds=SECONDS)))
    with pytest.raises(HoldRefused, match="nothing left to hold") as refused:
        place(store, people, "lena@example.com", closed, "too late")
    assert f"audit entries {receipts[0]}, {receipts[1]}" in str(refused.value)
    open_ended = place(store, people, "lena@example.com", Scope(("line-a",)), "from now on")
    assert open_ended.deleted_before == tuple(receipts)


def test_a_hold_on_an_unknown_device_or_point_is_refused(store, people):
    with pytest.raises(HoldRefused, match="device press-9 has no plan in this store"):
        place(store, people, "lena@example.com", Scope(("press-9",)), "typo")
    with pytest.raises(HoldRefused, match="--point Q\\* matches no point of device line-a"):
        place(store, people, "lena@example.com", Scope(("line-a",), ("Q*",)), "typo")


# --- refusals of a run -----------------------------------------------------------------


def test_a_second_run_at_the_same_time_refuses_and_deletes_nothing(retention_site, store):
    records = remaining(store)
    with retention_lock(store.engine), pytest.raises(RetentionBusy, match="another retention run"):
        run(retention_site, store)
    assert remaining(store) == records
    assert run(retention_site, store).records == 5 * SECONDS  # the lock is free again


def test_a_store_that_does_not_verify_is_left_untouched(retention_site, store, backend):
    with database(backend).begin() as conn:
        row = conn.execute(sa.text("SELECT id, leaf FROM readings ORDER BY id LIMIT 1")).one()
        leaf = json.loads(bytes(row.leaf)) | {"value": -1}
        conn.execute(
            sa.text("UPDATE readings SET leaf = :leaf WHERE id = :id"),
            {
                "leaf": json.dumps(leaf, separators=(",", ":"), sort_keys=True).encode(),
                "id": row.id,
            },
        )
    records = remaining(store)
    with pytest.raises(StoreUnverified, match=r"does not verify .*retention deletes nothing"):
        run(retention_site, store)
    assert remaining(store) == records and not kinds(store, "retention.deleted")


# --- the commands ----------------------------------------------------------------------


def test_the_commands(retention_site, store, backend, principals_file, capsys):
    keys, people = str(retention_site.keys_dir), ["--principals", str(principals_file)]
    hold = [
        "hold",
        "add",
        "--db",
        backend,
        *people,
        "--as",
        "lena@example.com",
        "--device",
        "line-b",
    ]
    assert main([*hold, "--reason", "dispute"]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[-1] == "1" and "placed hold 1: line-b, every point" in out
    apply = ["retention", "apply", "--db", backend]
    assert main([*apply, "--at", later(1).isoformat()]) == 2
    assert "--at is for --dry-run only" in capsys.readouterr().err
    assert main([*apply, "--dry-run", "--at", later(4).isoformat(), "--format", "json"]) == 0
    said = json.loads(capsys.readouterr().out)
    assert said["dry_run"] and said["records"] == 4 * SECONDS and said["receipts"] == []
    assert said["kept_by_holds"] == {"1": 2 * SECONDS}
    assert main([*apply, "--job", "nightly", "--keys", keys]) == 0
    out = capsys.readouterr().out
    assert out.startswith("deleted 180 records of 4 batches, each batch with its receipt")
    assert "line-b: 120 records of 2 points held past their keep_at_most" in out
    assert main(["audit", "verify", "--db", backend, "--keys", keys]) == 0
    out = capsys.readouterr().out
    assert "deleted lawfully: receipts" in out and "by nightly" in out
    release = ["hold", "release", "1", "--db", backend, *people, "--reason", "settled"]
    assert main([*release, "--as", "alice@example.com"]) == 3
    assert "no access.hold grant" in capsys.readouterr().err
    assert main([*release, "--as", "lena@example.com"]) == 0
    capsys.readouterr()
    assert main(["hold", "list", "--db", backend, "--format", "json"]) == 0
    (listed,) = json.loads(capsys.readouterr().out)
    assert listed["id"] == 1 and not listed["in_force"] and listed["release_reason"] == "settled"
    assert main(["audit", "log", "--db", backend, "--kind", "retention.deleted"]) == 0
    assert "line-a" in capsys.readouterr().out
    assert main([*apply, *people, "--as", "mallory@example.com", "--keys", keys]) == 3
    assert "unknown to the principals" in capsys.readouterr().err
