"""Retention in audit bundles: the receipts and holds touching the exported range travel in
`retention.json` with their entries, batches and plans, and both verifiers check them: each is
a proven entry, no exported record is one a receipt deleted, and each receipt was lawful."""

from __future__ import annotations

import hashlib
import json
from dataclasses import replace
from datetime import timedelta
from pathlib import Path

import pytest
import test_export
from evidence_kit import Site, fill, verify
from retention_kit import DEVICES, hold_on, job, kinds, run, sealed, signed_sizes
from test_export import failed, forged, read, trust_file

from engine.audit import AuditEntry
from engine.canonical import canonical_json
from engine.cli import main
from engine.export import bundle as writing
from engine.export import verifier
from engine.export.bundle import Logged
from engine.retention import apply
from engine.retention import run as runs
from engine.retention.select import Selection, select
from engine.store.retention import Scope
from engine.verify.archives import check_archives
from engine.verify.log import Log
from engine.verify.report import Report
from plugins.fileprincipals import PrincipalsFile

SECONDS = 60
clean_python, both = test_export.clean_python, test_export.both


def export(db: str, keys: Path, principals: Path, out: Path) -> Path:
    asked = ["--device", "line-a", "--device", "line-b", "--device", "lab-c"]
    command = ["export", "--db", db, "--principals", str(principals), "--as", "dana@audit.example"]
    assert main([*command, "--keys", str(keys), *asked, "-o", str(out)]) == 0
    return out


@pytest.fixture
def bundled(retention_site, backend, principals_file, tmp_path):
    """A store after a run that deleted line-a and lab-c's P2, with line-b held; the
    auditor's bundle of three devices, and the trust file."""
    store = fill(retention_site, backend, tmp_path, SECONDS)
    hold_on(retention_site, store, PrincipalsFile(principals_file), Scope(("line-b",)), "x")
    run(retention_site, store)
    receipts = [r.seq for r in kinds(store, "retention.deleted")]
    store.close()
    keys = retention_site.keys_dir
    bundle = export(backend, keys, principals_file, tmp_path / "bundle.zip")
    return bundle, trust_file(backend, keys, tmp_path / "trust.json"), receipts


def test_a_bundle_carries_the_receipts_and_holds_of_its_range(bundled, both):
    bundle, trust, receipts = bundled
    said = both(bundle, trust)
    assert said.code == 0, said.lines
    assert "4 deletion receipts" in said.lines[-1] and said.lines[-1].endswith(", 1 hold")
    assert any("deleted by 4 deletion receipts" in line for line in said.lines)
    members = read(bundle)
    retained = json.loads(members["retention.json"])
    assert retained["receipts"] == receipts
    (hold,) = retained["holds"]
    assert hold["hold"] == 1 and hold["released"] is None
    lines = [json.loads(line) for line in members["records.jsonl"].splitlines()]
    points = {(r["leaf"]["device"], r["leaf"]["point"]) for r in lines}
    assert points == {("line-b", "P1"), ("line-b", "P2"), ("lab-c", "P1")}


def test_workers_read_the_batches_a_run_deleted_from_as_one_process_does(
    retention_site, backend, principals_file, tmp_path, monkeypatch
):
    """A batch a run deleted records of is read by a worker (it holds the very positions its
    receipts leave), not again by the export's process, and the bundle's evidence is one
    process's, byte for byte."""
    store = fill(retention_site, backend, tmp_path, SECONDS)
    hold_on(retention_site, store, PrincipalsFile(principals_file), Scope(("line-b",)), "x")
    run(retention_site, store)
    deleted_from = {r.payload["batch"] for r in kinds(store, "retention.deleted")}
    store.close()
    keys = retention_site.keys_dir
    alone = read(export(backend, keys, principals_file, tmp_path / "alone.zip"))
    exported_from = {json.loads(line)["batch"] for line in alone["records.jsonl"].splitlines()}
    assert deleted_from & exported_from  # batches a worker reads as their receipts leave them
    read_again: list[int] = []
    monkeypatch.setattr(writing, "_records_here", lambda conn, b: read_again.append(b))
    monkeypatch.setattr(verifier, "worker_count", lambda amount, least: 2)
    forked = read(export(backend, keys, principals_file, tmp_path / "forked.zip"))
    assert read_again == []
    evidence = [n for n in alone if n.startswith(("records", "batches/", "retention"))]
    assert any(json.loads(alone[n]).get("proofs") is not None for n in alone if "batches/" in n)
    assert len(evidence) > 3 and all(alone[n] == forked[n] for n in evidence)


def test_a_retention_member_naming_another_entry_is_named(retention_site, bundled, tmp_path, both):
    bundle, trust, _ = bundled

    def relabel(members):
        said = json.loads(members["retention.json"])
        entries = members["log/entries.jsonl"].splitlines()
        said["receipts"][0] = min(json.loads(line)["seq"] for line in entries)
        return members | {"retention.json": json.dumps(said).encode()}

    bad = forged(retention_site, bundle, tmp_path / "forged.zip", relabel)
    lines = failed(both(bad, trust))
    assert any("not a retention.deleted entry of the bundle" in line for line in lines), lines


@pytest.fixture
def buggy(retention_site, backend, principals_file, tmp_path, monkeypatch):
    """A store after a run that ignored the hold on line-b and read a clock four hours fast
    (its receipts are signed all the same); the auditor's bundle, and the trust file."""
    store = fill(retention_site, backend, tmp_path, SECONDS)
    hold_on(retention_site, store, PrincipalsFile(principals_file), Scope(("line-b",)), "x")
    monkeypatch.setattr(runs.HoldBook, "read", lambda book, entries: [])
    monkeypatch.setattr(
        runs, "select", lambda b, p, h, leaves, at: select(b, p, h, leaves, at + timedelta(hours=4))
    )
    run(retention_site, store)
    store.close()
    keys = retention_site.keys_dir
    bundle = export(backend, keys, principals_file, tmp_path / "bundle.zip")
    return bundle, trust_file(backend, keys, tmp_path / "trust.json")


def test_a_buggy_run_is_named_by_the_bundle_verifier(buggy, both):
    lines = failed(both(*buggy))
    assert any("deletes line-b/P1 during hold 1" in line for line in lines), lines
    assert any("deletes lab-c/P1 before its keep_at_least" in line for line in lines), lines


# --- archives ------------------------------------------------------------------------------

ARCHIVED = {"keep_at_most_ms": 600_000, "on_expiry": "archive"}


@pytest.fixture(scope="module")
def archive_site(retention_site):
    """line-a as before, and arch-e, whose records are archived when they expire."""
    plans = [
        sealed("line-a", DEVICES["line-a"]),
        sealed("arch-e", {"P1": ARCHIVED, "P2": ARCHIVED}),
    ]
    return Site(retention_site.keys_dir, retention_site.plans_dir, plans)


def test_archived_records_are_written_to_a_bundle_before_they_are_deleted(
    archive_site, backend, tmp_path, both
):
    store = fill(archive_site, backend, tmp_path, SECONDS)
    done = apply(store, replace(job(archive_site), archives=tmp_path / "archives"))
    assert done.deleted["arch-e", "P1"] == SECONDS and done.deleted["line-a", "P1"] == SECONDS
    (archived,) = kinds(store, "retention.archived")
    (written,) = kinds(store, "retention.archive.written")
    receipts = [r for r in kinds(store, "retention.deleted") if r.payload["device"] == "arch-e"]
    (file,) = (tmp_path / "archives").iterdir()
    digest = "sha256:" + hashlib.sha256(file.read_bytes()).hexdigest()
    assert written.payload == {"archived": archived.seq, "file": file.name, "sha256": digest}
    for r in receipts:
        named = {"file": file.name, "sha256": digest, "entry": archived.seq}
        assert r.payload["archive"] == named | {"written": written.seq}
        assert archived.seq < written.seq < r.seq
    signed = signed_sizes(store)
    assert {archived.seq + 1, written.seq + 1} <= signed  # each signed in its own transaction
    every = {r.seq for r in kinds(store, "retention.deleted")}
    for r in receipts:  # signed by its transaction's checkpoint: only receipts come between
        assert set(range(r.seq, min(s for s in signed if s > r.seq))) <= every
    line = [r for r in kinds(store, "retention.deleted") if r.payload["device"] == "line-a"]
    assert all(r.payload["archive"] is None for r in line)
    report = verify(archive_site, store, tmp_path)
    assert report.ok, report.problems
    store.close()
    said = both(file, trust_file(backend, archive_site.keys_dir, tmp_path / "trust.json"))
    assert said.code == 0, said.lines
    manifest = json.loads(read(file)["manifest.json"])
    assert manifest["archive"] is True and manifest["records"] == 2 * SECONDS
    assert manifest["decision"] == archived.payload["decision"]


def test_records_deleted_without_their_archive_are_named(
    archive_site, backend, tmp_path, monkeypatch
):
    store = fill(archive_site, backend, tmp_path, SECONDS)
    monkeypatch.setattr(runs.archive, "write", lambda *args: None)
    monkeypatch.setattr(Selection, "archived_only", lambda self, kept: None)
    apply(store, replace(job(archive_site), archives=tmp_path / "archives"))
    report = verify(archive_site, store, tmp_path)
    seq = next(r.seq for r in kinds(store, "retention.deleted") if r.payload["device"] == "arch-e")
    assert any(
        p.item == f"receipt (audit entry {seq})" and "without its archive" in p.message
        for p in report.problems
    ), report.problems
    store.close()


def test_audit_verify_compares_each_archive_file_with_its_signed_digest(
    archive_site, backend, tmp_path, capsys
):
    """``audit verify --archives DIR``: the archive the receipts relied on is there as signed;
    one byte changed, or the file gone, is named with the receipts that relied on it."""
    store = fill(archive_site, backend, tmp_path, SECONDS)
    folder = tmp_path / "archives"
    apply(store, replace(job(archive_site), archives=folder))
    (written,) = kinds(store, "retention.archive.written")
    store.close()
    (file,) = folder.iterdir()
    command = ["audit", "verify", "--db", backend, "--keys", str(archive_site.keys_dir)]
    assert main([*command, "--archives", str(folder)]) == 0
    assert ", 1 archive, " in capsys.readouterr().out
    body = bytearray(file.read_bytes())
    body[len(body) // 2] ^= 1
    file.write_bytes(bytes(body))
    assert main([*command, "--archives", str(folder)]) == 1
    item = f"FAIL archive {file.name} (audit entry {written.seq}): {file}'s SHA-256 is sha256:"
    out = capsys.readouterr().out
    assert item in out and f"not the {written.payload['sha256']} signed when it was" in out
    assert "changed or replaced, and 2 receipts (audit entries" in out
    file.unlink()
    assert main([*command, "--archives", str(folder)]) == 1
    out = capsys.readouterr().out
    assert f"FAIL archive {file.name} (audit entry {written.seq}): is not in {folder}, yet 2" in out
    assert main(command) == 0  # without --archives the files are not looked at


@pytest.mark.parametrize("name", ["../outside.zip", "/etc/passwd", "..", "sub/a.zip", 7])
def test_an_archive_entry_naming_no_plain_file_is_named(tmp_path, name):
    """A signed entry naming a file outside the folder is named, and no such file is read."""
    written = AuditEntry(3, "2026-12-03T00:00:00Z", "retention.archive.written", {}, {})
    written.payload.update(archived=2, file=name, sha256="sha256:" + "0" * 64)
    receipt = AuditEntry(4, "2026-12-03T00:00:01Z", "retention.deleted", {}, {})
    receipt.payload["archive"] = {"file": name, "written": 3}
    report = Report()
    check_archives(Log({3: written, 4: receipt}, []), tmp_path, report)
    assert [str(p) for p in report.problems] == [
        f"archive {name} (audit entry 3): names no file of a folder: its name is not a plain"
        " file name"
    ]
    assert report.counts["archives"] == 0


def test_a_holds_first_decision_is_carried_whatever_its_payload_holds():
    """An ``access.decision`` whose payload nests a hold's kind is still a decision: the first
    of its id, which ``audit verify`` judges the hold entry by, is the one the export carries."""

    def entry(seq: int, kind: str, payload: dict[str, object]) -> tuple[int, bytes]:
        actor = {"kind": "principal", "id": "eve"}
        said = {"seq": seq, "time": "2026-01-01T00:00:00.000000Z", "kind": kind}
        return seq, canonical_json(said | {"actor": actor, "payload": payload})

    decision = "11111111-2222-3333-4444-555555555555"
    nested = {"decision": decision, "action": "read", "note": {"kind": "hold.placed"}}
    entries = [
        entry(10, "access.decision", nested),
        entry(11, "access.decision", {"decision": decision, "action": "hold"}),
        entry(12, "hold.placed", {"hold": 1, "held": [], "decision": decision}),
    ]
    assert Logged.of(entries).decisions == {decision: [10, 11]}
