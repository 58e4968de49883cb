"""The audit log and the evidence commands, as a user sees them."""

from __future__ import annotations

import base64
import contextlib
import io
import json
import re
import secrets
import sqlite3
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from evidence_kit import PASSPHRASE, REPO, agree, fill, open_store, public_keys
from rich.console import Console

from engine import audit
from engine.audit import Actor, seal_with
from engine.cli import main
from engine.commands.audit import render_report
from engine.errors import CheckpointRefused
from engine.keys import open_key_store
from engine.plans.signature import PlanClaim, sign_claim
from engine.plugin_manager import make_plugin_manager
from engine.sign import note
from engine.sign.merkle import root
from engine.store.database import SCHEMA
from engine.store.store import Store
from engine.verify.report import Report
from engine.verify.trust import Trust
from engine.verify.whole import verify_store
from plugins.filekeys.store import FileKeyStore


@pytest.fixture
def store_env(evidence_site, tmp_path, monkeypatch):
    """A SQLite store of 40 s of the plant, the key folder in the environment."""
    monkeypatch.setenv("CONVERGE_KEYS", str(evidence_site.keys_dir))
    monkeypatch.setenv("CONVERGE_KEY_PASSPHRASE", PASSPHRASE)
    db = tmp_path / "evidence.db"
    fill(evidence_site, str(db), tmp_path, seconds=40).close()
    return db


def test_the_documented_checkpoint_verifies_with_the_test_key():
    page = (REPO / "docs" / "audit.md").read_text("utf-8")
    text = re.search(r"^```text\n(converge/audit/.*?)^```", page, re.MULTILINE | re.DOTALL)[1]
    key = Ed25519PrivateKey.from_private_bytes(bytes(range(32))).public_key()
    origin = text.splitlines()[0]
    checkpoint = note.open_checkpoint(text, [note.verifier_key(origin, key)], origin)
    assert (checkpoint.size, checkpoint.root_hash) == (3, root([b"a", b"b", b"c"]))
    assert audit.signed_time(checkpoint) == datetime(2026, 6, 1, 12, 0, tzinfo=UTC)
    assert audit.origin_key(origin) == "audit-log"


def test_an_entry_is_canonical_json_and_nothing_else():
    entry = audit.AuditEntry(
        0,
        "2026-06-01T12:00:00.000000Z",
        "plan.deployed",
        "me",
        {"device": "d", "digest": "sha256:00"},
    )
    data = entry.to_bytes()
    assert data.startswith(b'{"actor":"me","kind":"plan.deployed","payload":')
    assert audit.AuditEntry.parse(data) == entry
    for bad in (data.replace(b'"seq":0', b'"seq": 0'), data[:-1] + b',"x":1}', b"[]"):
        with pytest.raises(ValueError):
            audit.AuditEntry.parse(bad)


def test_audit_log_lists_entries_and_filters_by_kind(store_env, capsys):
    assert main(["audit", "log", "--db", str(store_env), "--kind", "key.generated"]) == 0
    out = capsys.readouterr().out
    assert {"qa-signing v1", "site-integrity v1", "audit-log v1"} <= set(
        re.findall(r"key\.generated\s+job test \(\S+\)\s+(\S+ v1)", out)
    )
    assert "batch.stored" not in out


def test_audit_log_json_prints_the_exact_bytes_the_log_hashed(store_env, capsys):
    assert main(["audit", "log", "--db", str(store_env), "--format", "json"]) == 0
    lines = capsys.readouterr().out.encode().splitlines()
    entries = [audit.AuditEntry.parse(line) for line in lines]
    assert [e.seq for e in entries] == list(range(len(entries)))
    with open_store_readonly(store_env) as conn:
        rows = conn.execute("SELECT entry FROM audit_entries ORDER BY seq")
        stored = [bytes(entry) for (entry,) in rows]
    assert stored == lines


def open_store_readonly(path):
    return sqlite3.connect(f"file:{path}?mode=ro", uri=True)


def test_audit_verify_counts_one_of_a_kind_in_the_singular():
    report = Report()
    report.counts.update({"audit entries": 1, "checkpoints": 1, "batches": 2, "holds": 1})
    report.counts.update({"batches": 1, "readings": 1_000})
    out = io.StringIO()
    render_report(Console(file=out, width=400, color_system=None), report, 2.0, "store")
    assert out.getvalue() == (
        "verified: store: 1 audit entry, 1 checkpoint, 1 batch, 1 hold, 1,000 readings"
        " in 2.00 s (500 records/s)\n"
    )


def test_audit_verify_passes_then_names_a_changed_reading(
    store_env, evidence_site, tmp_path, capsys
):
    witness = tmp_path / "witness.jsonl"
    assert main(["audit", "verify", "--db", str(store_env), "--witness", str(witness)]) == 0
    agree(True, str(store_env), public_keys(evidence_site.keys_dir), witness=witness)
    assert capsys.readouterr().out.startswith("verified: ")
    with open_store_readonly(store_env) as conn:
        (batch_id,) = conn.execute("SELECT batch_id FROM readings WHERE id = 5").fetchone()
    with sqlite3.connect(store_env) as db:
        leaf = db.execute("SELECT leaf FROM readings WHERE id = 5").fetchone()[0]
        db.execute(
            "UPDATE readings SET leaf = ? WHERE id = 5",
            (leaf.replace(b'"quality":"good"', b'"quality":"bad"'),),
        )
    assert main(["audit", "verify", "--db", str(store_env), "--format", "json"]) == 1
    agree(False, str(store_env), public_keys(evidence_site.keys_dir))
    report = json.loads(capsys.readouterr().out)
    assert report["ok"] is False
    assert [p["item"].split(" (")[0] for p in report["problems"]] == [f"batch {batch_id}"]
    assert "do not hash to its signed root" in report["problems"][0]["message"]


def test_audit_verify_without_keys_to_trust_is_an_error_not_a_tampered_store(
    store_env, tmp_path, monkeypatch, capsys
):
    """No key folder (none named, no ./keys) trusts no key: every signature of a sound store
    would fail as if forged. That is a mistake of the command line, said as one (exit 2)."""
    monkeypatch.delenv("CONVERGE_KEYS")
    monkeypatch.chdir(tmp_path)
    assert main(["audit", "verify", "--db", str(store_env)]) == 2
    said = capsys.readouterr()
    assert "the key folder keys is not there: name the keys to trust with --keys DIR" in said.err
    assert "FAIL" not in said.out
    (tmp_path / "empty").mkdir()
    assert main(["audit", "verify", "--db", str(store_env), "--keys", "empty"]) == 2
    assert "the key folder empty holds no key" in capsys.readouterr().err
    (tmp_path / "none.json").write_text("[]")
    assert main(["audit", "verify", "--db", str(store_env), "--public-keys", "none.json"]) == 2
    assert "none.json: no public key to trust in it" in capsys.readouterr().err


def test_audit_verify_trusts_exported_public_keys(store_env, evidence_site, tmp_path, capsys):
    exports = []
    for name in ("qa-signing", "site-integrity", "audit-log"):
        assert main(["keys", "export-public", name, "--format", "json"]) == 0
        path = tmp_path / f"{name}.json"
        path.write_text(capsys.readouterr().out)
        exports.append(str(path))
    assert main(["audit", "verify", "--db", str(store_env), "--public-keys", *exports]) == 0
    capsys.readouterr()
    exported = [json.loads(Path(path).read_text()) for path in exports]
    agree(True, str(store_env), exported)
    # without the audit key, no checkpoint verifies: nothing signs the log
    assert main(["audit", "verify", "--db", str(store_env), "--public-keys", *exports[:2]]) == 1
    agree(False, str(store_env), exported[:2])
    assert "checkpoint 1 (size" in capsys.readouterr().out


def test_run_with_a_store_refuses_to_start_when_a_key_cannot_sign(
    evidence_site, tmp_path, monkeypatch, capsys
):
    monkeypatch.setenv("CONVERGE_KEY_PASSPHRASE", PASSPHRASE)
    code = main(
        [
            "run",
            "--plans",
            str(evidence_site.plans_dir),
            "--keys",
            str(evidence_site.keys_dir),
            "--db",
            str(tmp_path / "x.db"),
            "--audit-key",
            "no-such-key",
            "--for",
            "1s",
        ]
    )
    assert code == 2
    assert "no-such-key" in capsys.readouterr().err
    assert not (tmp_path / "x.db").exists()


def test_run_takes_one_destination(evidence_site, tmp_path, capsys):
    code = main(
        [
            "run",
            "--plans",
            str(evidence_site.plans_dir),
            "--db",
            str(tmp_path / "x.db"),
            "--out",
            str(tmp_path / "r.jsonl"),
        ]
    )
    assert code == 2
    assert "--out and --db are alternatives" in capsys.readouterr().err


def test_checkpoints_are_signed_by_the_audit_key_under_the_log_origin(evidence_site, tmp_path):
    store = open_store(evidence_site, str(tmp_path / "s.db"), witness=tmp_path / "w.jsonl")
    seal = seal_with(evidence_site.key_store(), "audit-log", datetime.now(UTC))
    signed = store.checkpoint(seal)
    assert signed is not None
    origin = signed.splitlines()[0]
    assert origin.startswith("converge/audit/")
    version = evidence_site.key_store().versions("audit-log")[0]
    checkpoint = note.open_checkpoint(signed, [note.verifier_key(origin, version.key)], origin)
    assert checkpoint.size == store.counts()["audit_entries"]
    nothing_new = replace(seal, sign=lambda cp: pytest.fail("nothing new: no second checkpoint"))
    assert store.checkpoint(nothing_new) is None
    lines = (tmp_path / "w.jsonl").read_text().splitlines()
    witnessed = [json.loads(line)["note"] for line in lines]
    assert witnessed == [signed]
    assert base64.b64decode(signed.splitlines()[2]) == checkpoint.root_hash


def test_a_stored_plan_signature_is_verified_and_must_name_its_plan(evidence_site, tmp_path):
    keys = evidence_site.key_store()
    now = datetime.now(UTC) + timedelta(seconds=1)  # a claim states whole seconds: not before
    first, second = evidence_site.plans[:2]  # the key's first one

    def signed(plan, device):
        claim = PlanClaim(device, plan.digest, now)
        return sign_claim(claim, "site-integrity", keys.signer("site-integrity", now)).decode()

    def verdict(note_text):
        db = tmp_path / f"{secrets.token_hex(4)}.db"
        with Store.open(str(db), actor=Actor.job("test")) as store:
            store.deploy_plans([(first, note_text)])
            store.checkpoint(seal_with(keys, "audit-log", now))
            report = verify_store(store, evidence_site.trust())
        agree(report, str(db), public_keys(evidence_site.keys_dir))
        return report

    assert verdict(signed(first, first.device.id)).ok
    label = f"plan {first.digest} ({first.device.id})"
    report = verdict(signed(first, second.device.id))
    assert [(p.item, p.message.split(" (")[0]) for p in report.problems] == [
        (label, "its signature is of another plan")
    ]
    forged = signed(first, first.device.id).replace(first.digest, second.digest)
    assert [p.item for p in verdict(forged).problems] == [label]


def test_key_generation_and_rotation_with_a_store_are_audit_entries_at_once(
    tmp_path, monkeypatch, capsys
):
    monkeypatch.setenv("CONVERGE_KEY_PASSPHRASE", PASSPHRASE)
    keys, db = str(tmp_path / "keys"), str(tmp_path / "evidence.db")
    assert main(["keys", "generate", "qa-signing", "--keys", keys, "--db", db]) == 0
    assert main(["keys", "rotate", "qa-signing", "--keys", keys, "--db", db]) == 0
    capsys.readouterr()
    assert main(["audit", "log", "--db", db, "--format", "json"]) == 0
    made, *entries = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert made["kind"] == "log.created" and made["payload"]["audit_key"] == "audit-log"
    assert [(e["kind"], e["payload"]["name"], e["payload"]["version"]) for e in entries] == [
        ("key.generated", "qa-signing", 1),
        ("key.rotated", "qa-signing", 2),
    ]


def test_a_key_logged_with_the_audit_key_at_hand_is_signed_at_once(tmp_path, monkeypatch):
    """With the audit key in the same folder, ``keys generate --db`` checkpoints its entry;
    without it, the entry waits for the next run's checkpoint (a legitimate tail)."""
    monkeypatch.setenv("CONVERGE_KEY_PASSPHRASE", PASSPHRASE)
    keys, db = str(tmp_path / "keys"), str(tmp_path / "evidence.db")
    assert main(["keys", "generate", "qa-signing", "--keys", keys, "--db", db]) == 0
    with Store.open_existing(db) as store:
        assert store.counts()["checkpoints"] == 0
    assert main(["keys", "generate", "audit-log", "--keys", keys, "--db", db]) == 0
    with Store.open_existing(db) as store:
        assert store.counts()["checkpoints"] == 1
        report = verify_store(
            store,
            Trust.from_key_store(
                open_key_store(make_plugin_manager(), {"kind": "file", "path": Path(keys)})
            ),
        )
    agree(report, db, public_keys(Path(keys)))
    assert report.ok, report.problems


def test_audit_commands_never_create_or_migrate_a_store(tmp_path, capsys):
    mistyped = tmp_path / "evidnce.db"
    assert main(["audit", "verify", "--db", str(mistyped)]) == 2
    assert "there is no such file" in capsys.readouterr().err
    assert not mistyped.exists()  # a typo must not become an empty store that "verifies"
    empty = tmp_path / "empty.db"
    sqlite3.connect(empty).close()
    assert main(["audit", "log", "--db", str(empty)]) == 2
    assert "it holds no Converge store" in capsys.readouterr().err
    with sqlite3.connect(empty) as db:
        assert db.execute("SELECT count(*) FROM sqlite_master").fetchone() == (0,)
    older = tmp_path / "older.db"
    with contextlib.closing(sqlite3.connect(older)) as db, db:
        db.execute("CREATE TABLE alembic_version (version_num VARCHAR(32) NOT NULL)")
        db.execute("INSERT INTO alembic_version VALUES ('0002')")
    assert main(["audit", "log", "--db", str(older)]) == 2
    assert f"is at schema revision 0002, this Converge reads {SCHEMA}" in capsys.readouterr().err


def test_a_checkpoint_raised_past_a_rotation_is_not_signed_by_the_retired_version(tmp_path):
    """A signer whose seal dates before a rotation (a collector sealing with its cut time)
    finds a newer checkpoint by the new version: its time would be raised past the rotation,
    where the version it signs with is no longer valid. It refuses, and the next seal signs."""
    clock = [datetime.now(UTC) - timedelta(minutes=2)]
    keys = FileKeyStore(tmp_path / "keys", passphrase=PASSPHRASE, clock=lambda: clock[0])
    keys.generate("audit-log")
    store = Store.open(str(tmp_path / "s.db"), Actor.job("test"), audit_key="audit-log")
    start = clock[0] + timedelta(seconds=5)
    store.checkpoint(seal_with(keys, "audit-log", start))
    clock[0] = start + timedelta(seconds=20)
    keys.rotate("audit-log")
    store.log("access.decision", {"decision": "a"})
    store.checkpoint(seal_with(keys, "audit-log", start + timedelta(seconds=30)))  # version 2
    store.log("access.decision", {"decision": "b"})
    late = seal_with(keys, "audit-log", start + timedelta(seconds=10))  # version 1, valid then
    with pytest.raises(CheckpointRefused, match=r"audit-log v1\) is no longer valid"):
        store.checkpoint(late)
    assert store.checkpoint(seal_with(keys, "audit-log", datetime.now(UTC))) is not None
    report = verify_store(store, Trust.from_key_store(keys))
    store.close()
    assert report.ok, report.problems
