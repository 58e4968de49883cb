"""Retention in audit bundles: the receipts and holds touching the exported range travel in
`retention.json` with their entries, batches and plans, and both verifiers check them: each is
a proven entry, no exported record is one a receipt deleted, and each receipt was lawful."""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path

import pytest
import test_export
from evidence_kit import fill
from retention_kit import kinds, run
from test_export import failed, forged, read, trust_file

from engine.cli import main
from engine.retention import run as runs
from engine.retention.holds import place
from engine.retention.select import select
from engine.store.retention import Scope
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
    place(store, PrincipalsFile(principals_file), "lena@example.com", Scope(("line-b",)), "x")
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
    assert "4 deletion receipts" in said.lines[-1] and "1 holds" in said.lines[-1]
    assert any("deleted by 4 deletion receipts" in line for line in said.lines)
    members = read(bundle)
    retained = json.loads(members["retention.json"])
    assert retained["receipts"] == receipts
    (hold,) = retained["holds"]
    assert hold["hold"] == 1 and hold["released"] is None
    lines = [json.loads(line) for line in members["records.jsonl"].splitlines()]
    points = {(r["leaf"]["device"], r["leaf"]["point"]) for r in lines}
    assert points == {("line-b", "P1"), ("line-b", "P2"), ("lab-c", "P1")}


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
    place(store, PrincipalsFile(principals_file), "lena@example.com", Scope(("line-b",)), "x")
    monkeypatch.setattr(runs, "holds", lambda conn, in_force: [])
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
