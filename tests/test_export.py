"""Audit bundles: `converge export` writes one, `converge verify` and its own verify.py check it,
the same way, and every change, swap or hostile zip is named."""

from __future__ import annotations

import json
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from evidence_kit import fill

from engine.cli import main
from engine.export import verifier

REPO = Path(__file__).resolve().parents[1]
PRINCIPALS = REPO / "examples" / "sites" / "plant-basel" / "principals.yaml"
AUDITOR = "inspector@audit.example"


@pytest.fixture
def exported(evidence_site, backend, tmp_path, monkeypatch) -> tuple[Path, Path, str]:
    """A store of the plant, a bundle the auditor exported from it, and its trust file."""
    fill(evidence_site, backend, tmp_path, seconds=70).close()
    monkeypatch.setenv("CONVERGE_KEYS", str(evidence_site.keys_dir))
    out = tmp_path / "bundle.zip"
    code = main(
        [
            "export",
            "--db",
            backend,
            "--principals",
            str(PRINCIPALS),
            "--as",
            AUDITOR,
            "--device",
            "reactor-1-plc",
            "-o",
            str(out),
        ]
    )
    assert code == 0
    trust = tmp_path / "trust.json"
    keys = []
    for name in ("qa-signing", "site-integrity", "ops-signing", "audit-log"):
        keys += [v.as_dict() for v in evidence_site.key_store().versions(name)]
    trust.write_text(json.dumps(keys))
    return out, trust, backend


def verdict(bundle: Path, trust: Path | None) -> verifier.Verdict:
    return verifier.verify(str(bundle), None if trust is None else trust.read_bytes())


def test_an_exported_bundle_verifies_with_the_auditors_keys(exported):
    bundle, trust, _ = exported
    result = verdict(bundle, trust)
    assert result.ok, result.problems
    assert result.counts["records"] > 0 and result.counts["batches"] > 0
    names = zipfile.ZipFile(bundle).namelist()
    assert names == sorted(names)
    assert {
        "manifest.json",
        "manifest.sig",
        "records.csv",
        "records.jsonl",
        "verify.py",
        "report.html",
        "keys.json",
    } <= set(names)


def test_without_trust_the_bundle_says_its_keys_are_its_own(exported):
    bundle, _, _ = exported
    result = verdict(bundle, None)
    assert result.ok and any("keys came from the bundle itself" in n for n in result.notes)


def rewritten(bundle: Path, tmp_path: Path, change) -> Path:
    out = tmp_path / "changed.zip"
    with zipfile.ZipFile(bundle) as src, zipfile.ZipFile(out, "w") as dst:
        for info in src.infolist():
            data = change(info.filename, src.read(info))
            if data is not None:
                dst.writestr(info, data)
    return out


def test_one_changed_byte_of_a_record_is_named(exported, tmp_path):
    bundle, trust, _ = exported

    def flip(name: str, data: bytes) -> bytes:
        return (
            data.replace(b'"value":20.25', b'"value":20.26', 1) if name == "records.jsonl" else data
        )

    result = verdict(rewritten(bundle, tmp_path, flip), trust)
    assert not result.ok
    assert (
        "records.jsonl",
        "changed: its SHA-256 is not the one the manifest lists",
    ) in result.problems


def test_the_standalone_verify_py_gives_the_same_verdict(exported, tmp_path):
    bundle, trust, _ = exported
    with zipfile.ZipFile(bundle) as z:
        (tmp_path / "verify.py").write_bytes(z.read("verify.py"))
    ran = subprocess.run(
        [sys.executable, str(tmp_path / "verify.py"), str(bundle), "--trust", str(trust)],
        check=False,
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert ran.returncode == 0, ran.stdout + ran.stderr
    assert ran.stdout.splitlines() == verdict(bundle, trust).lines()
