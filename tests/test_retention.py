"""Lawful retention: what expired goes with a signed receipt, holds keep what they cover, and
verification tells a lawful deletion from tampering; on SQLite and PostgreSQL.

The store is filled with records of an hour ago (tests/retention_kit.py), so the
10-minute ceilings have passed and the 3-hour minimum has not.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import signal
import sqlite3
import subprocess
import sys
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa
from evidence_kit import T0, Site, collect, fill, records, verify
from retention_kit import DEVICES, TEN_MINUTES, hold_on, kinds, later, remaining, run, sealed
from test_run_signals import free_port, listening
from test_tamper import database
from waiting import wait_until

from engine import audit
from engine.audit import Actor, seal_with
from engine.canonical import canonical_json
from engine.cli import main
from engine.errors import AccessDenied, StoreError, VerificationError
from engine.plans.body import PlanBody
from engine.plans.format import read_plan, seal
from engine.retention import StoreUnverified, forecast
from engine.retention import run as runs
from engine.retention.holds import HoldRefused, place, release
from engine.sign.leaf import instant
from engine.sign.merkle import MerkleLog
from engine.store import auditlog
from engine.store.retention import BatchRef, RetentionBusy, Scope, retention_lock
from engine.store.spool import Spool
from engine.store.store import Recorded, Store
from plugins.fileprincipals import PrincipalsFile

SECONDS = 60
"""Two 30-second windows per device."""
CONVERGE = [sys.executable, "-m", "engine.cli"]


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
    placed = hold_on(retention_site, store, people, Scope(("line-b",)), "dispute over lot 42")
    done = run(retention_site, store)
    assert ("line-b", "P1") not in done.deleted and done.deleted["line-a", "P1"] == SECONDS
    assert done.kept == {placed.id: 2 * SECONDS}
    assert done.held_past == {("line-b", "P1"): SECONDS, ("line-b", "P2"): SECONDS}
    report = verify(retention_site, store, tmp_path)
    assert report.ok, report.problems
    assert any(n.startswith("line-b: 120 records") and "hold 1" in n for n in report.notes)
    assert {f.item for f in report.findings} == set()  # held data is a note, not a finding
    release(
        store, people, "lena@example.com", placed.id, "settled", keys=retention_site.key_store()
    )
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


def test_a_hold_placed_after_the_check_is_read_from_its_entry_not_its_kind_column(
    retention_site, store, people, backend, monkeypatch
):
    """A run folds in the holds placed since its check by what their entries' bytes say: a
    ``kind`` column rewritten by a database writer hides none of them from it."""
    checked = runs._verified

    def then_held(*args):
        digests = checked(*args)
        hold_on(retention_site, store, people, Scope(("line-b",)), "placed during the run")
        with database(backend).begin() as conn:
            conn.execute(
                sa.text("UPDATE audit_entries SET kind = 'batch.stored' WHERE kind = 'hold.placed'")
            )
        return digests

    monkeypatch.setattr(runs, "_verified", then_held)
    done = run(retention_site, store)
    assert ("line-b", "P1") not in done.deleted and done.deleted["line-a", "P1"] == SECONDS
    assert done.kept == {1: 2 * SECONDS}


def rewrite_entry(backend: str, seq: int, data: bytes) -> None:
    with database(backend).begin() as conn:
        conn.execute(
            sa.text("UPDATE audit_entries SET entry = :entry WHERE seq = :seq"),
            {"entry": data, "seq": seq},
        )


def test_a_hold_placed_after_the_check_and_rewritten_stops_the_run(
    retention_site, store, people, backend, monkeypatch
):
    """A database writer rewrites a hold placed (and signed) after the run's check so that it
    no longer reads as a hold (a space after ``"kind":``): the entries since the check no
    longer hash to the signed log, and the run stops before deleting anything."""
    checked = runs._verified

    def then_held(*args):
        digests = checked(*args)
        hold_on(retention_site, store, people, Scope(("line-b",)), "placed during the run")
        (entry,) = kinds(store, "hold.placed")
        hidden = entry.to_bytes().replace(b'"kind":"hold.placed"', b'"kind": "hold.placed"')
        rewrite_entry(backend, entry.seq, hidden)
        return digests

    monkeypatch.setattr(runs, "_verified", then_held)
    records = remaining(store)
    with pytest.raises(StoreError, match="entries are not those its saved state"):
        run(retention_site, store)
    assert remaining(store) == records and not kinds(store, "retention.deleted")


@pytest.mark.parametrize("state", ["kept", "rewritten"])
def test_a_receipt_signed_by_the_run_and_overwritten_with_a_release_stops_it(
    retention_site, store, people, backend, monkeypatch, *, state
):
    """After a run's first transaction has signed its checkpoint, a database writer overwrites
    its receipt with a release of the hold that keeps line-b: the next transaction finds the
    entries since its check changed, and deletes nothing more (line-b stays held). With the
    log's saved state rewritten to agree, that transaction's checkpoint refuses the state, and
    what it deleted is undone with it."""
    placed = hold_on(retention_site, store, people, Scope(("line-b",)), "dispute")
    monkeypatch.setattr(runs, "GROUP_BATCHES", 1)
    deleting = runs._delete

    def then_forged(store_, group, by, outcome):
        deleting(store_, group, by, outcome)
        if len(outcome.receipts) == 1:
            receipt = kinds(store, "retention.deleted")[0]
            payload = {"hold": placed.id, "reason": "forged", "decision": "x"}
            forged = audit.AuditEntry(
                receipt.seq, receipt.time, "hold.released", receipt.actor, payload
            )
            rewrite_entry(backend, receipt.seq, forged.to_bytes())
            if state == "rewritten":
                agree_state(backend)

    monkeypatch.setattr(runs, "_delete", then_forged)
    held = line_b_readings(backend)
    refused = "entries are not those its saved state" if state == "kept" else "saved state"
    with pytest.raises(StoreError, match=refused):
        run(retention_site, store)
    assert line_b_readings(backend) == held > 0


def agree_state(backend: str) -> None:
    """The log's saved state made that of its entries as they now stand."""
    log = MerkleLog()
    with database(backend).begin() as conn:
        for (entry,) in conn.execute(sa.text("SELECT entry FROM audit_entries ORDER BY seq")):
            log.append(bytes(entry))
        conn.execute(
            sa.text("UPDATE meta SET value = :state WHERE key = :key"),
            {"state": json.dumps(audit.saved_state(log)), "key": audit.STATE_KEY},
        )


def line_b_readings(backend: str) -> int:
    with database(backend).connect() as conn:
        return int(
            conn.execute(
                sa.text(
                    "SELECT count(*) FROM readings JOIN batches ON batches.id = readings.batch_id"
                    " WHERE batches.device = 'line-b'"
                )
            ).scalar_one()
        )


def test_a_hold_on_points_and_a_range_covers_only_those(retention_site, store, people):
    window = Scope(("line-a",), ("P2",), instant(T0), instant(T0 + timedelta(seconds=30)))
    hold_on(retention_site, store, people, window, "one window of one point")
    done = run(retention_site, store)
    assert done.deleted["line-a", "P1"] == SECONDS
    assert done.deleted["line-a", "P2"] == SECONDS - 30  # its first window is held


def test_a_batch_deleted_in_two_runs_keeps_leaf_hashes_only_while_records_remain(
    retention_site, store, people, tmp_path
):
    """A hold on line-a's P1 keeps it while P2 goes (the receipts keep P2's leaf hashes, and
    the root is rebuilt with them); once released, the next run deletes the rest, and those
    receipts keep none: nothing is left to prove."""
    held = hold_on(retention_site, store, people, Scope(("line-a",), ("P1",)), "a dispute")
    run(retention_site, store)
    assert verify(retention_site, store, tmp_path).ok
    release(store, people, "lena@example.com", held.id, "settled", keys=retention_site.key_store())
    run(retention_site, store)
    line_a = [
        r.payload for r in kinds(store, "retention.deleted") if r.payload["device"] == "line-a"
    ]
    assert [(r["count"], r["remaining"]) for r in line_a] == [(30, 30)] * 2 + [(30, 0)] * 2
    assert [len(base64.b64decode(r["leaf_hashes"])) for r in line_a] == [30 * 32] * 2 + [0] * 2
    report = verify(retention_site, store, tmp_path)
    assert report.ok, report.problems
    assert report.counts["readings"] + report.counts["gap records"] == remaining(store)


def test_holds_stack_and_one_release_leaves_the_other(retention_site, store, people):
    first = hold_on(retention_site, store, people, Scope(("line-a",)), "one")
    hold_on(retention_site, store, people, Scope(("line-a",), ("P*",)), "two")
    release(store, people, "lena@example.com", first.id, "done", keys=retention_site.key_store())
    assert ("line-a", "P1") not in run(retention_site, store).deleted


def test_a_principal_without_a_hold_grant_is_refused_and_logged(retention_site, store, people):
    keys = retention_site.key_store()
    for principal, refusal in (
        ("alice@example.com", r"no access\.hold grant"),
        ("bob@contractor.example", r"access\.deny denies contractor"),
        ("mallory@example.com", "unknown to the principals"),
    ):
        with pytest.raises(AccessDenied, match=refusal):
            place(store, people, principal, Scope(("line-a",)), "why not", keys=keys)
    outcomes = [e.payload["outcome"] for e in kinds(store, "access.decision")]
    assert outcomes == ["deny", "deny", "deny"]
    assert not kinds(store, "hold.placed")


def test_releasing_an_unknown_or_released_hold_is_refused(retention_site, store, people):
    with pytest.raises(HoldRefused, match="there is no hold 99"):
        release(
            store, people, "lena@example.com", 99, "no such hold", keys=retention_site.key_store()
        )
    placed = hold_on(retention_site, store, people, Scope(("line-a",)), "x")
    release(store, people, "lena@example.com", placed.id, "once", keys=retention_site.key_store())
    with pytest.raises(HoldRefused, match=f"hold {placed.id} was released already, by lena"):
        release(
            store, people, "lena@example.com", placed.id, "twice", keys=retention_site.key_store()
        )


def test_a_hold_on_deleted_data_names_the_receipts(retention_site, store, people):
    run(retention_site, store)
    receipts = [r.seq for r in kinds(store, "retention.deleted") if r.payload["device"] == "line-a"]
    closed = Scope(("line-a",), (), instant(T0), instant(T0 + timedelta(seconds=SECONDS)))
    with pytest.raises(HoldRefused, match="nothing left to hold") as refused:
        hold_on(retention_site, store, people, closed, "too late")
    assert f"audit entries {receipts[0]}, {receipts[1]}" in str(refused.value)
    open_ended = hold_on(retention_site, store, people, Scope(("line-a",)), "from now on")
    assert open_ended.deleted_before == tuple(receipts)


def test_a_hold_on_an_unknown_device_or_point_is_refused(retention_site, store, people):
    with pytest.raises(HoldRefused, match="device press-9 has no plan in this store"):
        hold_on(retention_site, store, people, Scope(("press-9",)), "typo")
    with pytest.raises(HoldRefused, match="--point Q\\* matches no point of device line-a"):
        hold_on(retention_site, store, people, Scope(("line-a",), ("Q*",)), "typo")


def _held_by_legal_eu(plan: PlanBody) -> PlanBody:
    """The same plan, its points' holds granted to role legal-eu only (not lena's)."""
    body = {k: v for k, v in json.loads(plan.data).items() if k != "digest"}
    for p in body["points"]:
        p["access"]["hold"] = ["legal-eu"]
    _, data = seal({key: canonical_json(value) for key, value in body.items()})
    return read_plan(data)


def test_a_hold_covers_what_it_was_decided_on_not_devices_deployed_later(
    retention_site, store, people, tmp_path
):
    """A hold on every device, placed before new-f was deployed (whose plan grants holds to
    legal-eu alone), keeps none of new-f's expired data, and lena can still release it."""
    keys = retention_site.key_store()
    placed = hold_on(retention_site, store, people, Scope(), "every device")
    plan = _held_by_legal_eu(sealed("new-f", {"P1": TEN_MINUTES, "P2": TEN_MINUTES}))
    seal = seal_with(keys, store.audit_key, datetime.now(UTC))
    store.record(Recorded(audit.now_instant(), plans=[(plan, None)]), seal)  # deployed, signed
    site = Site(retention_site.keys_dir, retention_site.plans_dir, [plan])
    spool = Spool(tmp_path / "spool-f.db")
    asyncio.run(collect(site, store, spool, list(records(site, SECONDS))))
    spool.close()
    with pytest.raises(AccessDenied):  # the guard would not let her hold it
        place(store, people, "lena@example.com", Scope(("new-f",)), "new-f", keys=keys)
    done = run(retention_site, store)
    assert done.deleted["new-f", "P1"] == SECONDS and ("line-a", "P1") not in done.deleted
    (entry,) = kinds(store, "hold.placed")
    assert {(h["device"], h["point"]) for h in entry.payload["held"]} == {
        (device, point) for device, points in DEVICES.items() for point in points
    }
    assert verify(retention_site, store, tmp_path).ok
    release(store, people, "lena@example.com", placed.id, "settled", keys=keys)
    assert verify(retention_site, store, tmp_path).ok


def _generous(device: str, plan_of: str | None = None) -> PlanBody:
    """A plan as an insider would make one: ``plan_of``'s points (``device``'s by default),
    every point's holds granted to ``qa`` (alice) too."""
    plan = sealed(plan_of or device, DEVICES[plan_of or device])
    body = json.loads(plan.data)
    for p in body["points"]:
        p["access"]["hold"] = ["legal", "qa"]
    _, data = seal({key: canonical_json(value) for key, value in body.items()})
    return read_plan(data)


def _next_month() -> Scope:
    return Scope(("line-a",), (), instant(datetime.now(UTC) + timedelta(days=30)), None)


def test_a_plan_row_nobody_deployed_does_not_let_a_principal_release_a_hold(
    retention_site, store, backend, people
):
    held = hold_on(retention_site, store, people, _next_month(), "suit")
    with pytest.raises(AccessDenied):
        release(store, people, "alice@example.com", held.id, "no", keys=retention_site.key_store())
    forged = _generous("line-a")
    with database(backend).begin() as conn:
        conn.execute(
            sa.text(
                "INSERT INTO plans (digest, device, body, signature, deployed_at)"
                " VALUES (:d, 'line-a', :b, NULL, '2999-01-01T00:00:00.000000Z')"
            ),
            {"d": forged.digest, "b": forged.data},
        )
    with pytest.raises(AccessDenied, match=r"no access\.hold grant"):
        release(
            store,
            people,
            "alice@example.com",
            held.id,
            "an insider's plan row",
            keys=retention_site.key_store(),
        )
    with pytest.raises(AccessDenied):
        place(
            store,
            people,
            "alice@example.com",
            _next_month(),
            "an insider's plan row",
            keys=retention_site.key_store(),
        )
    release(
        store,
        people,
        "lena@example.com",
        held.id,
        "the deployed plan still decides",
        keys=retention_site.key_store(),
    )


def test_another_device_s_plan_decides_nothing_on_a_device(retention_site, store, backend, people):
    """Whether the batches name it or the last plan.deployed entry does: refused, naming the
    device and the plan."""
    other = _generous("line-a", plan_of="line-b")
    store.deploy_plans([(other, None)])
    with store.transaction() as conn:
        said = {"device": "line-a", "digest": other.digest}
        auditlog.append(conn, "plan.deployed", Actor.job("insider"), said)
    with pytest.raises(VerificationError, match=f"device line-a: the plan {other.digest}"):
        place(
            store,
            people,
            "alice@example.com",
            _next_month(),
            "line-b's plan",
            keys=retention_site.key_store(),
        )
    with database(backend).begin() as conn:
        conn.execute(
            sa.text("UPDATE batches SET plan_digest = :d WHERE device = 'line-a'"),
            {"d": other.digest},
        )
    with pytest.raises(VerificationError, match=f"device line-a: the plan {other.digest}"):
        place(
            store,
            people,
            "alice@example.com",
            Scope(("line-a",)),
            "line-b's plan",
            keys=retention_site.key_store(),
        )
    assert not kinds(store, "hold.placed")


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


def forge_a_signature(backend: str, device: str) -> int:
    """One signature of the first batch of ``device`` made another's (its last byte flipped);
    the batch's id."""
    with database(backend).begin() as conn:
        row = conn.execute(
            sa.text(
                "SELECT s.batch_id, s.key, s.signature FROM batch_signatures s JOIN batches b"
                " ON b.id = s.batch_id WHERE b.device = :device ORDER BY b.id, s.key LIMIT 1"
            ),
            {"device": device},
        ).one()
        forged = bytes(row.signature)[:-1] + bytes([row.signature[-1] ^ 1])
        conn.execute(
            sa.text(
                "UPDATE batch_signatures SET signature = :forged"
                " WHERE batch_id = :batch AND key = :key"
            ),
            {"forged": forged, "batch": row.batch_id, "key": row.key},
        )
        return int(row.batch_id)


def test_a_forged_signature_of_a_batch_the_run_deletes_from_stops_it(
    retention_site, store, backend
):
    forge_a_signature(backend, "line-a")
    records = remaining(store)
    with pytest.raises(StoreUnverified, match=r"does not verify .*does not verify"):
        run(retention_site, store)
    assert remaining(store) == records and not kinds(store, "retention.deleted")


def test_a_forged_signature_of_a_batch_the_run_leaves_is_named_by_audit_verify_after_it(
    retention_site, store, backend, tmp_path
):
    """The run verifies the signatures of the batches it deletes from alone: a batch it never
    reads, changes or signs (vault-d keeps its data for ever) is verified as much after the
    run as before it, by audit verify."""
    forged = forge_a_signature(backend, "vault-d")
    done = run(retention_site, store)
    assert done.deleted["line-a", "P1"] == SECONDS
    problems = verify(retention_site, store, tmp_path).problems
    assert [p.item.split(" ")[:2] for p in problems] == [["batch", str(forged)]]
    assert "does not verify" in problems[0].message


def test_a_batch_s_window_changed_for_the_choice_and_put_back_decides_nothing(
    retention_site, store, backend, monkeypatch, tmp_path
):
    """A database writer moves lab-c's batch windows four hours back, so that the run chooses
    them as expired (P1 is kept at least three hours), and puts them back before the run's
    check: the run judges each batch by its verified statement, so lab-c's P2 (ten minutes at
    most) goes and its P1 stays."""
    with database(backend).begin() as conn:
        rows = conn.execute(
            sa.text("SELECT id, window_start, window_end FROM batches WHERE device = 'lab-c'")
        ).all()
    windows = {r.id: (r.window_start, r.window_end) for r in rows}

    def set_windows(moved: dict[int, tuple[str, str]]) -> None:
        with database(backend).begin() as conn:
            for batch, (start, end) in moved.items():
                conn.execute(
                    sa.text("UPDATE batches SET window_start = :s, window_end = :e WHERE id = :i"),
                    {"s": start, "e": end, "i": batch},
                )

    def earlier(at: str) -> str:
        return instant(datetime.fromisoformat(at) - timedelta(hours=4))

    set_windows({batch: (earlier(s), earlier(e)) for batch, (s, e) in windows.items()})
    verifying = runs.verify_store

    def put_back_then_verify(*args, **kwargs):
        set_windows(windows)
        return verifying(*args, **kwargs)

    monkeypatch.setattr(runs, "verify_store", put_back_then_verify)
    done = run(retention_site, store)
    assert ("lab-c", "P1") not in done.deleted and done.deleted["lab-c", "P2"] == SECONDS
    monkeypatch.undo()
    report = verify(retention_site, store, tmp_path)
    assert report.ok, report.problems


def change_a_value(leaves: list[bytes]) -> list[bytes]:
    return [json.dumps(json.loads(leaves[0]) | {"value": -1}, separators=(",", ":")).encode()]


def move_a_byte(leaves: list[bytes]) -> list[bytes]:
    """The same bytes end to end, one of them moved from the second leaf to the first."""
    return [leaves[0] + leaves[1][:1], leaves[1][1:]]


@pytest.mark.parametrize("change", [change_a_value, move_a_byte])
def test_records_changed_after_the_runs_check_are_not_deleted(
    retention_site, store, backend, monkeypatch, change
):
    """The deleting transaction compares one digest of the records with what the check hashed;
    records changed in between (even with their bytes end to end the same) are hashed again,
    and do not hash to the signed root."""
    checked = runs._verified

    def then_changed(*args):
        digests = checked(*args)
        with database(backend).begin() as conn:
            rows = conn.execute(
                sa.text("SELECT id, leaf FROM readings WHERE batch_id = 1 ORDER BY position")
            ).all()[:2]
            leaves = change([bytes(r.leaf) for r in rows])
            for row, leaf in zip(rows, leaves, strict=False):
                conn.execute(
                    sa.text("UPDATE readings SET leaf = :leaf WHERE id = :id"),
                    {"leaf": leaf, "id": row.id},
                )
        return digests

    monkeypatch.setattr(runs, "_verified", then_changed)
    records = remaining(store)
    with pytest.raises(StoreUnverified, match=r"batch 1 .* no longer verifies"):
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
        "--keys",
        keys,
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
    settled = "settled\x1b[2K\x1b[1A out of court"  # steering characters in a reason
    release = ["hold", "release", "1", "--db", backend, *people, "--reason", settled]
    release += ["--keys", keys]
    assert main([*release, "--as", "alice@example.com"]) == 3
    assert "no access.hold grant" in capsys.readouterr().err
    assert main([*release, "--as", "lena@example.com"]) == 0
    capsys.readouterr()
    assert main(["hold", "list", "--db", backend, "--format", "json"]) == 0
    (listed,) = json.loads(capsys.readouterr().out)
    assert listed["id"] == 1 and not listed["in_force"] and listed["release_reason"] == settled
    assert [pair["device"] for pair in listed["held"]] == ["line-b", "line-b"]
    assert main(["hold", "list", "--db", backend]) == 0
    out = capsys.readouterr().out
    assert "(settled\\x1b[2K\\x1b[1A out of court)" in out and "\x1b" not in out
    assert "line-b, every point, from the first record without end (covers 2 points: line-b/" in out
    assert main(["audit", "log", "--db", backend, "--kind", "retention.deleted"]) == 0
    assert "line-a" in capsys.readouterr().out
    assert main([*apply, *people, "--as", "mallory@example.com", "--keys", keys]) == 3
    assert "unknown to the principals" in capsys.readouterr().err
    with database(backend).begin() as conn:  # an insider rewrites the hold's row
        conn.execute(sa.text("UPDATE holds SET reason = 'none', released_seq = NULL"))
    assert main(["hold", "list", "--db", backend, "--format", "json"]) == 0
    (listed,) = json.loads(capsys.readouterr().out)
    assert listed["reason"] == "dispute" and not listed["in_force"]  # as the log says


# --- killed runs ---------------------------------------------------------------------------


def kill_after(command: list[str], receipts: Callable[[], int], more: int) -> None:
    """Start ``command`` and SIGKILL it once ``more`` receipts have been written since."""
    seen = receipts()
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    wait_until(
        lambda: process.poll() is not None or receipts() >= seen + more,
        f"{more} more receipts",
        within=60,
        every=0.002,
    )
    process.kill()
    process.communicate(timeout=60)


def test_a_run_killed_at_any_point_leaves_no_deletion_without_its_receipt(
    retention_site, backend, tmp_path
):
    """SIGKILL a run before it starts deleting and after 1, 4 and 12 more receipts: each time
    the store verifies (every deleted record has its receipt), and the next run finishes."""
    store = fill(retention_site, backend, tmp_path, 600)  # 60 batches to delete from
    command = [*CONVERGE, "retention", "apply", "--db", backend, "--job", "retention"]
    command += ["--keys", str(retention_site.keys_dir)]
    url = backend if "://" in backend else f"sqlite:///{backend}"
    watcher = sa.create_engine(url, isolation_level="AUTOCOMMIT", poolclass=sa.NullPool)
    with watcher.connect() as conn:

        def receipts() -> int:
            query = "SELECT count(*) FROM audit_entries WHERE kind = 'retention.deleted'"
            return int(conn.execute(sa.text(query)).scalar_one())

        for more in (0, 1, 4, 12):
            kill_after(command, receipts, more)
            report = verify(retention_site, store, tmp_path)
            assert report.ok, (more, report.problems)
        assert receipts() < 60, "no run was killed before it finished"
        wait_until(
            lambda: subprocess.run(command, capture_output=True, check=False).returncode == 0,
            "a run that completes (the killed run's lock let go)",
            within=60,
        )
    watcher.dispose()
    report = verify(retention_site, store, tmp_path)
    assert report.ok, report.problems
    assert store.entries_since_checkpoint() == 0
    assert forecast(store, later(0)).records == 0
    assert remaining(store) == 2 * 600
    store.close()


SITE = """
    site: short
    timezone: UTC
    devices:
      - id: plc
        protocol: modbus
        endpoint: {{host: 127.0.0.1, port: {port}}}
        limits: {{min_interval: 100ms}}
        points:
          - {{name: T1, signal: temperature, address: {{table: holding, register: 0, type: int16}}}}
    """
POLICY = """
    policy: short-retention
    title: Kept one second
    owner: qa
    applies: {}
    capture: {every: 200ms}
    retention: {keep_at_most: 1s, on_expiry: delete}
    signing: {required: true, keys: [qa-signing], batch_window: 1s}
    """


def test_a_collector_applies_retention_on_its_schedule(converge_project, evidence_site, tmp_path):
    """`converge run --db --retention-every 1s` deletes what expired while it collects, with
    receipts signed by the job `retention`; the store verifies after the run."""
    port = free_port()
    root = converge_project.root
    converge_project.write({"policies/p.yaml": POLICY, "sites/s/site.yaml": SITE.format(port=port)})
    keys = ["--keys", str(evidence_site.keys_dir)]
    planned = [*CONVERGE, "plan", "-p", "policies", "-s", "sites/s", "-o", "plans", *keys]
    subprocess.run(planned, cwd=root, check=True, capture_output=True, timeout=60)
    simulator = subprocess.Popen(
        [*CONVERGE, "simulate", "sites/s"],
        cwd=root,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    db = root / "evidence.db"
    try:
        listening(port)
        collector = subprocess.Popen(
            [
                *CONVERGE,
                "run",
                "--plans",
                "plans",
                *keys,
                "--db",
                str(db),
                "--retention-every",
                "1s",
            ],
            cwd=root,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        wait_until(
            lambda: collector.poll() is not None or receipts_in(db) >= 2,
            "two deletion receipts in the store",
            within=90,
        )
        collector.send_signal(signal.SIGTERM)
        _, err = collector.communicate(timeout=60)
    finally:
        simulator.send_signal(signal.SIGINT)
        simulator.wait(timeout=60)
    assert collector.returncode == 0, err
    assert "retention: deleted" in err
    with Store.open_existing(str(db)) as store:
        report = verify(evidence_site, store)
        (first, *_) = kinds(store, "retention.deleted")
    assert report.ok, report.problems
    assert report.deletions and first.actor["id"] == "retention"


def receipts_in(db: Path) -> int:
    if not db.exists():
        return 0
    with contextlib.closing(sqlite3.connect(db, timeout=10)) as conn:
        try:
            query = "SELECT count(*) FROM audit_entries WHERE kind = 'retention.deleted'"
            return int(conn.execute(query).fetchone()[0])
        except sqlite3.OperationalError:  # no such table yet
            return 0


def test_hold_grants_merge_like_read_and_export(converge_project):
    """access.hold: the union of every governing policy's grants; deny stays beside it."""
    outcome = converge_project.write(
        {
            "sites/s/site.yaml": SITE.format(port=5020),
            "policies/a.yaml": f"{POLICY.rstrip()}\n    access: {{hold: [legal], deny: [x]}}\n",
            "policies/b.yaml": """
                policy: b
                title: B
                owner: qa
                applies: {}
                access: {hold: [records-management, legal], read: [qa]}
                """,
        }
    ).compile()
    outcome.assert_success()
    access = outcome.plan_body("plc").point["T1"].access
    assert access.hold == ("legal", "records-management")
    assert access.deny == ("x",)
    provenance = outcome.plan("plc")["points"][0]["provenance"]["access.hold"]
    assert [p["policy"] for p in provenance] == ["b", "short-retention"]


def test_a_run_deletes_a_few_batches_a_transaction_and_a_large_one_alone():
    """Up to 8 batches a transaction, while they hold no more than 50,000 records: batches
    share one checkpoint; a batch of more goes alone."""
    counts = [*[6000] * 9, *[100] * 10, 49_999, 50_001, 2]
    work = [
        (BatchRef(n, "d", "a", "b", count, "sha256:p", b""), None) for n, count in enumerate(counts)
    ]
    groups = [[batch.count for batch, _ in group] for group in runs._groups(work)]  # type: ignore[arg-type]
    assert groups == [[6000] * 8, [6000, *[100] * 7], [100] * 3, [49_999], [50_001], [2]]
