"""Audit bundles: `converge export` writes one, `converge verify` and the bundle's own verify.py
(run in a virtualenv that has only `cryptography`) check it and say the same, and every change,
swap, forgery or hostile zip is named, with nothing written outside a temporary folder.

The forgeries are an insider's: one who holds the audit log's key, re-signs the manifest after
changing a member, and so passes the digest check; what catches them is the rest."""

from __future__ import annotations

import base64
import contextlib
import csv
import hashlib
import io
import json
import os
import signal
import stat
import subprocess
import venv
import zipfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import forger
import pytest
import sqlalchemy as sa
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from evidence_kit import T0, Site, fill
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from engine.audit import Actor, signing_second
from engine.canonical import canonical_json
from engine.cli import main
from engine.export import bundle as writing
from engine.export import verifier
from engine.plans.signature import PlanClaim, Signer, sign_claim
from engine.records import Quality, Reading
from engine.sign.leaf import instant, leaf_bytes
from engine.sign.merkle import MerkleTree
from engine.sign.note import sign_note
from engine.store import data, reads
from engine.store.store import Store

REPO = Path(__file__).resolve().parents[1]
PRINCIPALS = REPO / "examples" / "sites" / "plant-basel" / "principals.yaml"
AUDITOR = "inspector@audit.example"
DEVICE = "reactor-1-plc"
Members = dict[str, bytes]


# --- a verifier with nothing of ours: a virtualenv holding only cryptography ---------------


@pytest.fixture(scope="session")
def clean_python(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh virtualenv's python whose only packages are `cryptography` and what it needs
    (cffi, pycparser), linked from ours: no Converge, no SQLAlchemy, nothing else."""
    root = tmp_path_factory.mktemp("auditor-venv")
    venv.EnvBuilder(with_pip=False).create(root)
    site = next(root.glob("lib/python3*/site-packages"))
    ours = Path(__import__("cryptography").__file__).parents[1]
    for pattern in ("cryptography*", "cffi*", "_cffi_backend*", "pycparser*"):
        for found in ours.glob(pattern):
            (site / found.name).symlink_to(found)
    python = root / "bin" / "python"
    alone = subprocess.run(
        [
            python,
            "-I",
            "-c",
            "import cryptography, importlib.util as u; "
            "print(u.find_spec('engine'), u.find_spec('sqlalchemy'))",
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    assert alone.stdout.split() == ["None", "None"]
    return python


@dataclass(frozen=True)
class Said:
    """What a verifier printed and its exit code."""

    code: int
    lines: list[str]


def converge_verify(bundle: Path, trust: Path | None) -> Said:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = main(["verify", str(bundle), *(["--trust", str(trust)] if trust else [])])
    return Said(code, out.getvalue().splitlines())


def standalone_verify(python: Path, bundle: Path, trust: Path | None, where: Path) -> Said:
    """verify.py (the file every bundle carries) run isolated (-I) in the clean virtualenv."""
    script = where / "verify.py"
    script.write_bytes(Path(verifier.__file__).read_bytes())
    ran = subprocess.run(
        [python, "-I", script, bundle, *(["--trust", trust] if trust else [])],
        capture_output=True,
        text=True,
        check=False,
        cwd=where,
    )
    assert not ran.stderr, ran.stderr
    return Said(ran.returncode, ran.stdout.splitlines())


@pytest.fixture
def both(clean_python: Path, tmp_path: Path) -> Callable[[Path, Path | None], Said]:
    """Runs `converge verify` and the standalone verify.py on a bundle and holds them equal."""

    def run(bundle: Path, trust: Path | None) -> Said:
        ours = converge_verify(bundle, trust)
        theirs = standalone_verify(clean_python, bundle, trust, tmp_path)
        assert theirs == ours
        return ours

    return run


# --- exporting --------------------------------------------------------------------------


def export(db: str, keys: Path, out: Path, *extra: str) -> int:
    return main(
        [
            "export",
            "--db",
            db,
            "--principals",
            str(PRINCIPALS),
            "--as",
            AUDITOR,
            "--keys",
            str(keys),
            "--sources",
            str(REPO),
            "-o",
            str(out),
            *extra,
        ]
    )


def trust_file(db: str, keys: Path, out: Path, *extra: str) -> Path:
    assert main(["keys", "trust", "--db", db, "--keys", str(keys), "-o", str(out), *extra]) == 0
    return out


@dataclass(frozen=True)
class Exported:
    site: Site
    db: str
    bundle: Path
    trust: Path


@pytest.fixture
def exported(evidence_site: Site, backend: str, tmp_path: Path) -> Exported:
    """A store of the plant (on each backend), the auditor's bundle of one device, the trust
    file of the store's keys and log."""
    fill(evidence_site, backend, tmp_path, seconds=70).close()
    bundle = tmp_path / "bundle.zip"
    assert export(backend, evidence_site.keys_dir, bundle, "--device", DEVICE) == 0
    trust = trust_file(backend, evidence_site.keys_dir, tmp_path / "trust.json")
    return Exported(evidence_site, backend, bundle, trust)


@pytest.fixture(scope="module")
def plant(evidence_site: Site, tmp_path_factory: pytest.TempPathFactory) -> Exported:
    """One SQLite store and a whole-device bundle of it, shared by the forgery tests."""
    root = tmp_path_factory.mktemp("plant")
    db = str(root / "evidence.db")
    fill(evidence_site, db, root, seconds=70).close()
    bundle = root / "bundle.zip"
    assert export(db, evidence_site.keys_dir, bundle, "--device", DEVICE) == 0
    return Exported(evidence_site, db, bundle, trust_file(db, evidence_site.keys_dir, root / "t"))


@pytest.fixture(scope="module")
def partial(plant: Exported, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A bundle of one point of the device: its batches carry a proof per record."""
    out = tmp_path_factory.mktemp("partial") / "partial.zip"
    point = first_point(plant.bundle)
    assert export(plant.db, plant.site.keys_dir, out, "--device", DEVICE, "--point", point) == 0
    return out


def first_point(bundle: Path) -> str:
    first = read(bundle)["records.jsonl"].split(b"\n")[0]
    return str(json.loads(first)["leaf"]["point"])


def read(bundle: Path) -> Members:
    with zipfile.ZipFile(bundle) as z:
        return {name: z.read(name) for name in z.namelist()}


# --- what an auditor sees of a good bundle -------------------------------------------------


def test_an_exported_bundle_verifies_with_the_auditors_trust_file(exported: Exported, both):
    said = both(exported.bundle, exported.trust)
    assert said.code == 0, said.lines
    assert said.lines[-1].startswith("verified: ")
    members = read(exported.bundle)
    assert members["verify.py"] == Path(verifier.__file__).read_bytes()
    assert list(members) == sorted(members)
    assert {
        "manifest.json",
        "manifest.sig",
        "records.csv",
        "records.jsonl",
        "verify.py",
        "report.html",
        "keys.json",
        "log/entries.jsonl",
        "log/checkpoints.json",
        "log/consistency.json",
        "retention.json",
    } <= set(members)
    manifest = json.loads(members["manifest.json"])
    assert manifest["principal"] == AUDITOR and manifest["records"] > 0
    assert all(p.startswith(f"{DEVICE}/") for p in manifest["points"])
    csv_rows = members["records.csv"].decode().splitlines()
    assert csv_rows[0] == ",".join(verifier.CSV_COLUMNS)
    assert len(csv_rows) == manifest["records"] + 1


def test_without_trust_the_verdict_says_the_keys_were_the_bundles_own(plant: Exported, both):
    said = both(plant.bundle, None)
    assert said.code == 0
    assert any("keys came from the bundle itself" in line for line in said.lines)


def test_the_export_is_an_audit_entry_of_the_bundle_and_of_the_store(plant: Exported):
    members = read(plant.bundle)
    decision = json.loads(members["manifest.json"])["decision"]
    entries = [json.loads(line)["entry"] for line in members["log/entries.jsonl"].splitlines()]
    assert any(e["payload"].get("decision") == decision for e in entries)
    with Store.open_existing(plant.db) as store, store.reading() as conn:
        assert any(
            f'"decision":"{decision}"'.encode() in raw for _, _, _, raw in reads.audit_entries(conn)
        )


def test_two_exports_of_the_same_store_hold_the_same_evidence_bytes(exported: Exported):
    again = exported.bundle.with_name("again.zip")
    assert export(exported.db, exported.site.keys_dir, again, "--device", DEVICE) == 0
    first, second = read(exported.bundle), read(again)
    assert list(first) == list(second)
    evidence = [n for n in first if n.startswith(("records", "batches/", "plans/"))]
    assert evidence and all(first[n] == second[n] for n in evidence)
    with zipfile.ZipFile(again) as z:
        assert {info.date_time for info in z.infolist()} == {writing.ZIP_TIME}


def _noted(wrote: list[str], name: str, write: Callable[..., None]) -> Callable[..., None]:
    """``write``, noting its ``name`` in ``wrote`` when called."""

    def noted(*args: Any) -> None:
        wrote.append(name)
        write(*args)

    return noted


@pytest.mark.parametrize("zip64_limit", [writing.ZIP64_LIMIT, 1000])
def test_members_deflated_ahead_are_zipped_as_the_bytes_zipfile_writes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, zip64_limit: int
):
    """The export deflates its members on another thread and zips them itself: the zip is the
    one zipfile writes of them, byte for byte; a zip that would need ZIP64 records (the limit
    lowered here) is written by zipfile."""
    records = b"".join(b'{"batch":1,"position":%d,"leaf":{}}\n' % p for p in range(2000))
    members = {"records.jsonl": records, "sources/p\u00f6licy.yaml": b"a: 1\n", "empty": b""}
    monkeypatch.setattr(writing, "ZIP64_LIMIT", zip64_limit)
    wrote: list[str] = []
    for name in ("_write_packed", "_write_zipfile"):
        monkeypatch.setattr(writing, name, _noted(wrote, name, getattr(writing, name)))
    ahead = tmp_path / "ahead.zip"
    writing.write_zip(ahead, members, writing.pack({"records.jsonl": records}))
    assert wrote == ["_write_zipfile" if zip64_limit == 1000 else "_write_packed"]
    reference = tmp_path / "zipfile.zip"
    with zipfile.ZipFile(reference, "w") as z:
        for name in sorted(members):
            info = zipfile.ZipInfo(name, writing.ZIP_TIME)
            info.external_attr = 0o644 << 16
            z.writestr(info, members[name], zipfile.ZIP_DEFLATED, writing.DEFLATE_LEVEL)
    assert ahead.read_bytes() == reference.read_bytes()


@pytest.mark.parametrize("zip64_limit", [writing.ZIP64_LIMIT, 1000])
def test_members_deflated_in_parts_read_back_whole(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, zip64_limit: int
):
    """A member gathered in parts (as the records are, a batch each, some empty) is one
    deflate stream with the right CRC-32 and size: zipfile reads it back whole and checks
    it, whether the export zips it or (ZIP64 records needed) zipfile does."""
    monkeypatch.setattr(writing, "ZIP64_LIMIT", zip64_limit)
    lines = writing.Parts()
    bodies = [
        b'{"batch":%d,"position":%d,"leaf":{}}\n' % (b, p) for b in range(5) for p in range(900)
    ]
    for batch in (bodies[:10], [], bodies[10:2000], bodies[2000:]):
        body = b"".join(batch)
        lines.add(body, writing.deflate_part(body))
    out = tmp_path / "parts.zip"
    writing.write_zip(out, {"a.json": b"{}"}, parts={"records.jsonl": lines})
    with zipfile.ZipFile(out) as z:
        assert z.testzip() is None
        assert z.read("records.jsonl") == b"".join(bodies)
        assert z.namelist() == ["a.json", "records.jsonl"]
    assert lines.digest() == "sha256:" + hashlib.sha256(b"".join(bodies)).hexdigest()


@pytest.mark.parametrize("point", [False, True])
def test_worker_processes_export_the_bytes_one_process_exports(
    plant: Exported, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, point: bool
):
    """Batches read by forked workers (as a large export's are): the same records, CSV rows
    and batches, byte for byte, for a whole device and for one point of it (proofs)."""
    asked = ["--device", DEVICE] + (["--point", first_point(plant.bundle)] if point else [])
    alone = tmp_path / "alone.zip"
    assert export(plant.db, plant.site.keys_dir, alone, *asked) == 0
    monkeypatch.setattr(verifier, "worker_count", lambda amount, least: 2)
    forked = tmp_path / "forked.zip"
    assert export(plant.db, plant.site.keys_dir, forked, *asked) == 0
    first, second = read(alone), read(forked)
    assert list(first) == list(second)
    evidence = [n for n in first if n.startswith(("records", "batches/", "plans/"))]
    assert len(evidence) > 3 and all(first[n] == second[n] for n in evidence)


def test_a_record_deleted_while_workers_read_is_exported_as_the_transaction_saw_it(
    evidence_site: Site, backend: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    """A worker reads the store as it is when it reads, the export's transaction as it was
    when the export began: a batch a worker does not find as the transaction's receipts
    leave it (a record deleted meanwhile, as a retention run may) is read again in the
    transaction, so the bundle holds what the transaction saw, as one made before the
    deletion does, and verifies."""
    fill(evidence_site, backend, tmp_path, seconds=70).close()
    keys = evidence_site.keys_dir
    before = tmp_path / "before.zip"
    assert export(backend, keys, before, "--device", DEVICE) == 0
    deleted: list[int] = []

    def deleting(carried: Sequence[data.StoredBatch]) -> None:
        with forger.database(backend).begin() as other:
            gone = other.execute(
                sa.text("DELETE FROM readings WHERE batch_id = :b AND position = 0"),
                {"b": carried[0].id},
            )
            assert gone.rowcount == 1
        deleted.append(carried[0].id)

    during = tmp_path / "during.zip"
    code, read_again = export_by_workers(backend, keys, during, monkeypatch, meanwhile=deleting)
    assert code == 0
    assert read_again == deleted  # the workers read every other batch
    same_evidence(before, during, trust_file(backend, keys, tmp_path / "t.json"))


def export_by_workers(
    backend: str,
    keys: Path,
    out: Path,
    monkeypatch: pytest.MonkeyPatch,
    *,
    meanwhile: Callable[[Sequence[data.StoredBatch]], None],
) -> tuple[int, list[int]]:
    """Export the device with two workers, ``meanwhile`` done (with the batches) once the
    export's transaction has read its batches: the exit code, and the batches read again in
    the transaction."""
    checked, read_here = writing._check_logged, writing._records_here
    read_again: list[int] = []

    def checked_then(conn: Any, carried: Sequence[data.StoredBatch], stored: Any) -> None:
        checked(conn, carried, stored)
        meanwhile(carried)

    def reading_here(conn: Any, batch: int) -> Any:
        read_again.append(batch)
        return read_here(conn, batch)

    monkeypatch.setattr(writing, "_check_logged", checked_then)
    monkeypatch.setattr(writing, "_records_here", reading_here)
    monkeypatch.setattr(verifier, "worker_count", lambda amount, least: 2)
    return export(backend, keys, out, "--device", DEVICE), read_again


def same_evidence(before: Path, during: Path, trust: Path) -> None:
    """Both bundles hold the same records and batches, byte for byte, and ``during`` verifies."""
    first, second = read(before), read(during)
    evidence = [n for n in first if n.startswith(("records", "batches/"))]
    assert len(evidence) > 3 and all(first[n] == second[n] for n in evidence)
    assert converge_verify(during, trust).code == 0


def test_one_point_exports_proofs_and_verifies(plant: Exported, partial: Path, both):
    members = read(partial)
    batches = [json.loads(members[n]) for n in members if n.startswith("batches/")]
    assert batches and all("proofs" in b for b in batches)
    assert (
        len(
            {
                json.loads(line)["leaf"]["point"]
                for line in members["records.jsonl"].split(b"\n")
                if line
            }
        )
        == 1
    )
    said = both(partial, plant.trust)
    assert said.code == 0, said.lines


def test_a_principal_without_an_export_grant_gets_no_bundle(
    plant: Exported, tmp_path: Path, capsys: pytest.CaptureFixture[str]
):
    out = tmp_path / "refused.zip"
    code = main(
        [
            "export",
            "--db",
            plant.db,
            "--principals",
            str(PRINCIPALS),
            "--as",
            "operator@plant.example",
            "--keys",
            str(plant.site.keys_dir),
            "--device",
            DEVICE,
            "-o",
            str(out),
        ]
    )
    assert code == 3 and not out.exists()
    refusal = capsys.readouterr().err
    points = json.loads(read(plant.bundle)["manifest.json"])["points"]
    assert len(points) > 5  # the refusal names five and counts the rest
    assert refusal.count(f"{DEVICE}/") == 5
    assert f"; and {len(points) - 5} more; decision " in refusal


# --- the plans' sources ------------------------------------------------------------------


def named_sources(members: Members) -> dict[str, str]:
    """Every source the bundle's plans name: path -> digest."""
    plans = [json.loads(body) for name, body in members.items() if name.endswith(".json")
             and name.startswith("plans/")]  # fmt: skip
    return {path: digest for plan in plans for path, digest in plan["sources"].items()}


def test_a_bundle_carries_the_policy_and_site_files_of_its_plans(plant: Exported, both):
    members = read(plant.bundle)
    named = named_sources(members)
    assert "examples/sites/plant-basel/site.yaml" in named
    assert any(path.startswith("policies/") for path in named)
    for path in named:
        assert members[f"sources/{path}"] == (REPO / path).read_bytes()
    assert json.loads(members["manifest.json"])["sources"] == sorted(named)
    said = both(plant.bundle, plant.trust)
    assert said.code == 0, said.lines
    assert not any("not in the bundle" in line for line in said.lines)
    assert f"{len(named)} sources" in said.lines[-1]


def a_policy(members: Members) -> str:
    return next(path for path in sorted(named_sources(members)) if path.startswith("policies/"))


def test_a_policy_file_changed_after_compiling_is_left_out_and_noted(
    plant: Exported, tmp_path: Path, capsys: pytest.CaptureFixture[str], both
):
    policy = a_policy(read(plant.bundle))
    copy = tmp_path / "checkout"
    for path in named_sources(read(plant.bundle)):
        (copy / path).parent.mkdir(parents=True, exist_ok=True)
        (copy / path).write_bytes((REPO / path).read_bytes())
    (copy / policy).write_bytes((REPO / policy).read_bytes() + b"# edited since\n")
    out = tmp_path / "changed.zip"
    capsys.readouterr()
    assert (
        export(plant.db, plant.site.keys_dir, out, "--device", DEVICE, "--sources", str(copy)) == 0
    )
    (line,) = capsys.readouterr().err.splitlines()
    assert line.startswith(f"converge: source {policy} is not in the bundle: changed since")
    members = read(out)
    assert f"sources/{policy}" not in members
    assert "sources/examples/sites/plant-basel/site.yaml" in members
    said = both(out, plant.trust)
    assert said.code == 0, said.lines
    assert any(line.startswith(f"note: a plan names the source {policy} (sha256:")
               and line.endswith("not in the bundle") for line in said.lines)  # fmt: skip


def test_a_changed_source_member_is_named(plant: Exported, tmp_path: Path, both):
    name = f"sources/{a_policy(read(plant.bundle))}"

    def edit(members: Members) -> Members:
        members[name] += b"# an insider's edit\n"
        return members

    said = both(forged(plant.site, plant.bundle, tmp_path / "s.zip", edit), plant.trust)
    assert failed(said) == [
        f"FAIL {name}: not a source any plan of the bundle names with its bytes"
    ]


def test_a_hostile_source_path_in_a_plan_is_never_read(tmp_path: Path):
    """Each file hashes to what the plan names, so reading it would carry it."""
    secret = tmp_path / "secret.yaml"
    secret.write_bytes(b"not for the bundle\n")
    digest = "sha256:" + hashlib.sha256(secret.read_bytes()).hexdigest()
    folder = tmp_path / "checkout"
    (folder / "policies").mkdir(parents=True)
    (folder / "policies" / "link.yaml").symlink_to(secret)
    hostile_paths = ["../secret.yaml", str(secret), "policies/../../secret.yaml",
                     "policies/link.yaml", "policies//x.yaml", "./x.yaml"]  # fmt: skip
    plan = json.dumps({"sources": dict.fromkeys(hostile_paths, digest)}).encode()
    carried, left_out = writing.sources([plan], folder)
    assert carried == {}
    assert dict(left_out) == {
        "../secret.yaml": "a path with .. in it",
        str(secret): "an absolute path",
        "policies/../../secret.yaml": "a path with .. in it",
        "policies/link.yaml": f"it leads out of {folder} (through a link)",
        "policies//x.yaml": "not a plain relative path",
        "./x.yaml": "not a plain relative path",
    }


# --- changed bytes, and an insider's forgeries ----------------------------------------------


def rewritten(bundle: Path, out: Path, change: Callable[[Members], Members]) -> Path:
    """The bundle with members changed and the manifest left as it was."""
    writing.write_zip(out, change(read(bundle)))
    return out


def forged(
    site: Site,
    bundle: Path,
    out: Path,
    change: Callable[[Members], Members],
    *,
    manifest_change: Callable[[dict[str, Any]], None] | None = None,
    key: str = "audit-log",
) -> Path:
    """The bundle with members changed and the manifest re-made and re-signed with ``key``
    (the log's by default): what an insider holding that key can make."""
    members = change(read(bundle))
    manifest = json.loads(members["manifest.json"])
    manifest["files"] = {
        name: "sha256:" + hashlib.sha256(body).hexdigest()
        for name, body in sorted(members.items())
        if name not in (verifier.MANIFEST, verifier.SIGNATURE)
    }
    if manifest_change:
        manifest_change(manifest)
    said = canonical_json(manifest)
    members[verifier.MANIFEST] = said
    members[verifier.SIGNATURE] = resign(site, said, manifest["origin"], key)
    writing.write_zip(out, members)
    return out


def resign(site: Site, manifest: bytes, origin: str, key: str) -> bytes:
    now = signing_second(datetime.now(UTC))  # up: a key made this second is valid then
    text = (
        f"{verifier.FORMAT}\n{origin}\nsha256:{hashlib.sha256(manifest).hexdigest()}\n"
        f"time {int(now.timestamp())}\n"
    )
    return sign_note(text, origin, site.key_store().signer(key, now)).encode()


def failed(said: Said) -> list[str]:
    assert said.code == 1, said.lines
    return [line for line in said.lines if line.startswith("FAIL ")]


def test_one_changed_byte_of_a_record_is_named(plant: Exported, tmp_path: Path, both):
    def flip(members: Members) -> Members:
        records = members["records.jsonl"]
        at = records.index(b'"value":') + len(b'"value":')
        members["records.jsonl"] = records[:at] + b"9" + records[at + 1 :]
        return members

    problems = failed(both(rewritten(plant.bundle, tmp_path / "changed.zip", flip), plant.trust))
    assert problems[0] == (
        "FAIL records.jsonl: changed: its SHA-256 is not the one the manifest lists"
    )
    assert any(p.endswith(": its records do not hash to its signed root") for p in problems)


def test_a_record_that_fails_its_proof_is_named_alone(partial: Path, plant, tmp_path, both):
    """A record that fails is named once: the CSV rows after it are still compared with their
    own records (its row passed over), so no row the insider left alone is named."""

    def change(members: Members) -> Members:
        lines = members["records.jsonl"].split(b"\n")
        lines[2] = lines[2].replace(b'"value":', b'"value":7', 1)
        members["records.jsonl"] = b"\n".join(lines)
        return members

    problems = failed(both(forged(plant.site, partial, tmp_path / "p.zip", change), plant.trust))
    assert problems == [f"FAIL records.jsonl:3: {problems[0].split(': ', 1)[1]}"], problems
    assert "its proof fails" in problems[0]


def test_a_changed_manifest_no_longer_matches_its_signature(plant: Exported, tmp_path, both):
    def more(members: Members) -> Members:
        manifest = json.loads(members["manifest.json"])
        manifest["principal"] = "someone@else.example"
        members["manifest.json"] = canonical_json(manifest)
        return members

    said = both(rewritten(plant.bundle, tmp_path / "m.zip", more), plant.trust)
    assert "FAIL manifest.sig: not a signature of this manifest by audit-log" in failed(said)


def test_a_record_changed_and_resigned_by_the_log_key_fails_its_batch(plant, tmp_path, both):
    def change(members: Members) -> Members:
        members["records.jsonl"] = members["records.jsonl"].replace(b'"value":2', b'"value":3', 1)
        return members

    said = both(forged(plant.site, plant.bundle, tmp_path / "f.zip", change), plant.trust)
    problems = failed(said)
    assert any("its records do not hash to its signed root" in p for p in problems)
    assert any(p.startswith("FAIL records.csv:") for p in problems)


def test_a_manifest_that_names_more_than_its_decision_allowed_is_named(plant, tmp_path, both):
    """The manifest is the exporter's word, and the records are checked against it: the log
    key's holder must not widen it past the signed decision (points, range)."""

    def wider(manifest: dict[str, Any]) -> None:
        manifest["points"] = sorted([*manifest["points"], "reactor-7/TT701_PV"])
        manifest["from"] = "2000-01-01T00:00:00.000000Z"

    bundle = forged(plant.site, plant.bundle, tmp_path / "w.zip", dict, manifest_change=wider)
    problems = failed(both(bundle, plant.trust))
    decision = json.loads(read(plant.bundle)["manifest.json"])["decision"]
    assert (
        f"FAIL manifest.json: names reactor-7/TT701_PV, which its decision {decision} did not "
        "allow" in problems
    )
    assert any(
        p.startswith("FAIL manifest.json: its range [2000-01-01T00:00:00.000000Z, ")
        and f"is not the one its decision {decision} decided" in p
        for p in problems
    )


def test_a_record_swapped_between_batches_is_named(plant: Exported, tmp_path: Path, both):
    def swap(members: Members) -> Members:
        lines = members["records.jsonl"].split(b"\n")
        first = json.loads(lines[0])
        other = next(
            i for i, line in enumerate(lines) if json.loads(line)["batch"] != first["batch"]
        )
        moved = json.loads(lines[other])
        lines[0], lines[other] = (
            retagged(lines[other], first["batch"], first["position"]),
            retagged(lines[0], moved["batch"], moved["position"]),
        )
        members["records.jsonl"] = b"\n".join(lines)
        return members

    said = both(forged(plant.site, plant.bundle, tmp_path / "s.zip", swap), plant.trust)
    problems = failed(said)
    assert sum("its records do not hash to its signed root" in p for p in problems) == 2


def without_batch(members: Members, gone: int) -> Members:
    """The bundle as the log key's holder would remake it without batch ``gone``: its member,
    its records and rows, its entry, and its place in the manifest (re-signed by forged())."""
    manifest = json.loads(members["manifest.json"])
    said = json.loads(members.pop(f"batches/{gone}.json"))
    lines = [line for line in members["records.jsonl"].split(b"\n") if line]
    kept = [line for line in lines if json.loads(line)["batch"] != gone]
    rows = members["records.csv"].decode().split("\n")
    members["records.jsonl"] = b"".join(line + b"\n" for line in kept)
    csv_kept = [rows[0]] + [r for r in rows[1:] if r and r.split(",")[-2] != str(gone)]
    members["records.csv"] = ("\n".join(csv_kept) + "\n").encode()
    entries = [line for line in members["log/entries.jsonl"].split(b"\n") if line]
    members["log/entries.jsonl"] = b"".join(
        line + b"\n" for line in entries if json.loads(line)["seq"] != said["entry"]
    )
    manifest["batches"] = [i for i in manifest["batches"] if i != gone]
    manifest["records"] = len(kept)
    members["manifest.json"] = json.dumps(manifest).encode()
    return members


def test_a_batch_left_out_of_a_bundle_is_named(plant: Exported, tmp_path: Path, both):
    """The log key's holder alone can remake a bundle without one of the device's batches:
    its chain (each statement's previous_root) shows where one is missing. The plant's
    bundle holds the device's whole history: the first batch must follow the zero root."""
    first, then, *_ = json.loads(verifier.Bundle(str(plant.bundle)).read("manifest.json"))[
        "batches"
    ]
    out = forged(plant.site, plant.bundle, tmp_path / "d.zip", lambda m: without_batch(m, first))
    problems = failed(both(out, plant.trust))
    named = f"FAIL batch {then}: {DEVICE}'s chain does not start here"
    assert any(p.startswith(named) for p in problems), problems


def retagged(line: bytes, batch: int, position: int) -> bytes:
    leaf = line[line.index(b'"leaf":') + len(b'"leaf":') : -1]
    return b'{"batch":%d,"position":%d,"leaf":%s}' % (batch, position, leaf)


def test_a_proof_for_another_tree_size_is_named(plant: Exported, partial: Path, tmp_path, both):
    def shrink(members: Members) -> Members:
        name = next(n for n in sorted(members) if n.startswith("batches/"))
        said = json.loads(members[name])
        with Store.open_existing(plant.db) as store, store.reading() as conn:
            leaves = [leaf for _, leaf in data.leaves(conn, said["id"])]
        smaller = MerkleTree(verifier.leaf_hash(leaf) for leaf in leaves[:-1])
        said["proofs"] = {
            p: [base64.b64encode(h).decode() for h in smaller.inclusion_proof(int(p))]
            for p in said["proofs"]
            if int(p) < smaller.size
        }
        members[name] = canonical_json(said)
        return members

    said = both(forged(plant.site, partial, tmp_path / "p.zip", shrink), plant.trust)
    assert any("its proof fails" in p for p in failed(said))


def test_a_checkpoint_signed_by_an_unknown_key_is_named(plant: Exported, tmp_path, both):
    stranger = Ed25519PrivateKey.generate()

    def add(members: Members) -> Members:
        notes = json.loads(members["log/checkpoints.json"])
        text = notes[-1].split("\n\n")[0] + "\n"
        notes.append(sign_note(text, text.split("\n")[0], stranger))
        members["log/checkpoints.json"] = json.dumps(notes).encode()
        return members

    said = both(forged(plant.site, plant.bundle, tmp_path / "c.zip", add), plant.trust)
    assert any("not signed by the log's key audit-log under origin" in p for p in failed(said))


def test_a_device_key_cannot_stand_in_for_the_log_key(plant: Exported, tmp_path: Path, both):
    """An insider with a batch-signing key re-signs the manifest and names that key the log's."""

    def name_it(manifest: dict[str, Any]) -> None:
        manifest["audit_key"] = "qa-signing"

    out = tmp_path / "k.zip"
    forged(plant.site, plant.bundle, out, dict, manifest_change=name_it, key="qa-signing")
    problems = failed(both(out, plant.trust))
    assert "FAIL manifest.json: names the key qa-signing for its log, not audit-log" in problems
    assert "FAIL manifest.sig: not a signature of this manifest by audit-log" in problems


def test_checkpoints_dated_back_before_the_batches_they_sign_are_named(plant, tmp_path, both):
    """The log's key re-signs every checkpoint with a time before the batches' windows began
    (a trust file that trusts the key from earlier on lets the signatures themselves pass)."""
    back = T0 - timedelta(minutes=10)
    keys = plant.site.key_store()

    def back_date(members: Members) -> Members:
        notes = json.loads(members["log/checkpoints.json"])
        moved = {}
        for note in notes:
            lines = note.split("\n\n")[0].split("\n")
            text = "\n".join([*lines[:3], f"time {int(back.timestamp())}", ""])
            moved[note] = sign_note(text, lines[0], keys.signer("audit-log", datetime.now(UTC)))
        members["log/checkpoints.json"] = json.dumps(list(moved.values())).encode()
        entries = members["log/entries.jsonl"].decode()
        for old, new in moved.items():
            entries = entries.replace(json.dumps(old)[1:-1], json.dumps(new)[1:-1])
        members["log/entries.jsonl"] = entries.encode()
        return members

    trust = json.loads(plant.trust.read_text())
    for key in trust["keys"]:
        key["not_before"] = (T0 - timedelta(hours=1)).isoformat()
    early = tmp_path / "early.json"
    early.write_text(json.dumps(trust))
    out = forged(plant.site, plant.bundle, tmp_path / "b.zip", back_date)
    problems = failed(both(out, early))
    assert any(": back-dated" in p and p.startswith("FAIL batch ") for p in problems), problems


def test_a_log_the_trust_file_does_not_name_is_refused(plant: Exported, tmp_path: Path, both):
    trust = json.loads(plant.trust.read_text())
    trust["logs"] = [{"origin": "converge/audit/audit-log/another-site", "key": "audit-log"}]
    other = tmp_path / "other-trust.json"
    other.write_text(json.dumps(trust))
    problems = failed(both(plant.bundle, other))
    assert any("is not a log the trust file names" in p for p in problems)


def test_a_key_used_outside_its_validity_window_is_named(plant: Exported, tmp_path, both):
    """The auditor trusts the device key only until before its batches were signed."""
    trust = json.loads(plant.trust.read_text())
    for key in trust["keys"]:
        if key["name"] == "qa-signing":
            key["not_after"] = (datetime.now(UTC) - timedelta(days=1)).isoformat()
            key["not_before"] = (datetime.now(UTC) - timedelta(days=2)).isoformat()
    narrowed = tmp_path / "narrow.json"
    narrowed.write_text(json.dumps(trust))
    problems = failed(both(plant.bundle, narrowed))
    assert any("signed by qa-signing outside the validity" in p for p in problems), problems


def test_a_bundle_carrying_another_verify_py_is_said_so(plant: Exported, tmp_path, both):
    """A bundle's maker could ship a verify.py that says "verified" to anything: the verdict
    that counts is the auditor's own verifier's, and it says the copies differ."""

    def liar(members: Members) -> Members:
        members["verify.py"] = b"print('verified: everything')\n"
        return members

    said = both(forged(plant.site, plant.bundle, tmp_path / "v.zip", liar), plant.trust)
    assert said.code == 0
    assert any("the bundle's verify.py differs from this verifier" in line for line in said.lines)


def test_a_record_outside_the_exported_range_is_named(plant: Exported, tmp_path, both):
    def narrow(manifest: dict[str, Any]) -> None:
        manifest["from"] = "2999-01-01T00:00:00.000000Z"

    out = forged(plant.site, plant.bundle, tmp_path / "r.zip", dict, manifest_change=narrow)
    assert any("outside the exported range" in p for p in failed(both(out, plant.trust)))


def test_plans_must_be_signed_when_the_trust_file_names_a_plan_key(plant: Exported, tmp_path, both):
    strict = trust_file(
        plant.db, plant.site.keys_dir, tmp_path / "s.json", "--plan-key", "qa-signing"
    )
    problems = failed(both(plant.bundle, strict))
    assert any("not signed, and plans must be signed by qa-signing" in p for p in problems)


def test_an_entry_moved_to_another_index_is_not_in_the_log(plant: Exported, tmp_path, both):
    def renumber(members: Members) -> Members:
        lines = members["log/entries.jsonl"].split(b"\n")
        line = json.loads(lines[-2])
        line["entry"]["seq"] = line["seq"] = line["seq"] + 1
        proof = line["proof"].split("\n")
        line["proof"] = "\n".join([proof[0], f"index {line['seq']}", *proof[2:]])
        lines[-2] = json.dumps(line, separators=(",", ":")).encode()
        members["log/entries.jsonl"] = b"\n".join(lines)
        return members

    said = both(forged(plant.site, plant.bundle, tmp_path / "e.zip", renumber), plant.trust)
    assert any("not in the log under its checkpoint" in p for p in failed(said))


# --- signed plans ---------------------------------------------------------------------------

APPROVER = Signer("j.doe@example.com", "Jane Doe", "approved")


@pytest.fixture(scope="module")
def signed_plant(evidence_site: Site, tmp_path_factory: pytest.TempPathFactory) -> Exported:
    """A store whose plans were signed by ops-signing as Jane Doe's approval, and its bundle."""
    root = tmp_path_factory.mktemp("signed-plant")
    db = str(root / "evidence.db")
    keys = evidence_site.key_store()
    at = signing_second(datetime.now(UTC))
    with Store.open(db, actor=Actor.job("test")) as store:
        store.deploy_plans(
            (plan, sign_claim(PlanClaim(plan.device.id, plan.digest, at, APPROVER), "ops-signing",
                              keys.signer("ops-signing", at)).decode())
            for plan in evidence_site.plans
        )  # fmt: skip
    fill(evidence_site, db, root, seconds=20).close()
    bundle = root / "bundle.zip"
    assert export(db, evidence_site.keys_dir, bundle, "--device", DEVICE) == 0
    trust = trust_file(db, evidence_site.keys_dir, root / "t.json", "--plan-key", "ops-signing")
    return Exported(evidence_site, db, bundle, trust)


def plan_signature(members: Members) -> str:
    return next(name for name in members if name.startswith("plans/") and name.endswith(".sig"))


def test_signed_plans_verify_against_the_plan_key(signed_plant: Exported, both):
    said = both(signed_plant.bundle, signed_plant.trust)
    assert said.code == 0, said.lines
    assert not any("plans' signatures were checked against every trusted key" in line
                   for line in said.lines)  # fmt: skip


def test_a_stripped_plan_signature_is_named(signed_plant: Exported, tmp_path: Path, both):
    def strip(members: Members) -> Members:
        del members[plan_signature(members)]
        return members

    out = forged(signed_plant.site, signed_plant.bundle, tmp_path / "s.zip", strip)
    problems = failed(both(out, signed_plant.trust))
    assert any("says signed: true, the bundle holds no signature" in p for p in problems)
    assert any("not signed, and plans must be signed by ops-signing" in p for p in problems)


def test_a_plan_resigned_in_another_name_is_named(signed_plant: Exported, tmp_path: Path, both):
    """The holder of the plan key signs the plan again, as someone else's approval."""
    other = Signer("mallory@example.com", "Mallory", "approved")

    def resign_plan(members: Members) -> Members:
        name = plan_signature(members)
        text = members[name].decode().split("\n\n")[0].split("\n")
        at = datetime.strptime(text[3], "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)
        claim = PlanClaim(text[1], text[2], at, other)
        signer = signed_plant.site.key_store().signer("ops-signing", at)
        members[name] = sign_claim(claim, "ops-signing", signer)
        return members

    out = forged(signed_plant.site, signed_plant.bundle, tmp_path / "o.zip", resign_plan)
    problems = failed(both(out, signed_plant.trust))
    assert any("not the signature the plan was deployed with" in p for p in problems), problems


# --- hostile zips: refused, named, nothing written ------------------------------------------


def hostile(out: Path, members: list[tuple[zipfile.ZipInfo, bytes]]) -> Path:
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as z:
        for info, body in members:
            z.writestr(info, body)
    return out


def named(name: str, mode: int = 0o644) -> zipfile.ZipInfo:
    info = zipfile.ZipInfo(name, writing.ZIP_TIME)
    info.compress_type = zipfile.ZIP_DEFLATED
    info.external_attr = mode << 16
    return info


OUTSIDE = "a member path outside the bundle (absolute, .. or empty parts)"


@pytest.mark.parametrize(
    ("member", "mode"),
    [
        ("../outside.txt", 0o644),
        ("/etc/cron.d/evil", 0o644),
        ("records/../../x", 0o644),
        ("C:/windows/evil", 0o644),
        ("a\\..\\..\\evil", 0o644),
        ("link", stat.S_IFLNK | 0o777),
    ],
)
def test_members_outside_the_bundle_are_refused(plant, tmp_path, member, mode, both):
    good = read(plant.bundle)
    out = hostile(
        tmp_path / "bad.zip",
        [(named(n), b) for n, b in good.items()] + [(named(member, mode), b"/etc/passwd")],
    )
    before = set(tmp_path.parent.rglob("*"))
    verdict = "a symbolic link" if member == "link" else OUTSIDE
    assert failed(both(out, plant.trust)) == [f"FAIL {member}: refused: {verdict}"]
    written = set(tmp_path.parent.rglob("*")) - before
    assert {p.name for p in written} <= {"verify.py"}


STEERING = "\x1b[1A\x1b[2K\u202e"
"""Up a line, erase it, and turn the rest of the line around."""
SHOWN = "\\x1b[1A\\x1b[2K\\u202e"


def test_both_verifiers_print_a_bundles_steering_characters_as_the_same_escapes(
    plant: Exported, tmp_path: Path, both
):
    """A member's name and a manifest's value, quoted in the verdict: verify.py and
    ``converge verify`` print each steering character as a visible escape, line for line
    the same (docs/cli.md); ``--format json`` keeps the text as it is, JSON-escaped."""
    member = f"evil{STEERING}.txt"

    def add(members: Members) -> Members:
        return {**members, member: b"x"}

    def decided(manifest: dict[str, Any]) -> None:
        manifest["decision"] = f"d{STEERING}"
        manifest["files"][member] = "sha256:" + "0" * 64  # so that the member is named

    out = forged(plant.site, plant.bundle, tmp_path / "steer.zip", add, manifest_change=decided)
    lines = failed(both(out, plant.trust))
    assert not any(c in line for line in lines for c in "\x1b\u202e"), lines
    assert any(f"evil{SHOWN}.txt" in line for line in lines), lines
    assert (
        f"FAIL manifest.json: its export decision d{SHOWN} is not an entry of the bundle" in lines
    )
    said = io.StringIO()
    with contextlib.redirect_stdout(said):
        main(["verify", str(out), "--trust", str(plant.trust), "--format", "json"])
    problems = json.loads(said.getvalue())["problems"]
    assert {"item": "manifest.json", "message": f"its export decision d{STEERING} is not an entry"
            " of the bundle"} in problems  # fmt: skip


def test_a_zip_bomb_is_refused_before_it_is_expanded(plant: Exported, tmp_path: Path, both):
    bomb = hostile(tmp_path / "bomb.zip", [(named("records.jsonl"), bytes(64 << 20))])
    assert bomb.stat().st_size < 1 << 20
    assert failed(both(bomb, plant.trust))[0].startswith("FAIL records.jsonl: refused: expands")


def test_two_members_of_one_name_are_refused(plant: Exported, tmp_path: Path, both):
    good = read(plant.bundle)
    members = [(named(n), b) for n, b in good.items()] + [(named("records.jsonl"), b"{}")]
    with pytest.warns(UserWarning, match="Duplicate name"):
        out = hostile(tmp_path / "dup.zip", members)
    assert failed(both(out, plant.trust)) == [
        "FAIL records.jsonl: refused: the zip holds two members of this name"
    ]


def test_a_truncated_bundle_is_refused(plant: Exported, tmp_path: Path, both):
    cut = tmp_path / "cut.zip"
    cut.write_bytes(plant.bundle.read_bytes()[: plant.bundle.stat().st_size // 2])
    (problem,) = failed(both(cut, plant.trust))
    assert problem.startswith(f"FAIL {cut}: refused: not a readable zip file")


def damaged(bundle: Path, member: str, at: float) -> Path:
    """``bundle`` with one byte of ``member``'s deflated bytes flipped (its CRC then fails)."""
    with zipfile.ZipFile(bundle) as z:
        info = z.getinfo(member)
    raw = bytearray(bundle.read_bytes())
    start = info.header_offset + 30 + len(info.filename.encode()) + len(info.extra)
    raw[start + int(info.compress_size * at)] ^= 0x55
    bundle.write_bytes(bytes(raw))
    return bundle


def changed_member(name: str) -> Callable[[Members], Members]:
    def change(members: Members) -> Members:
        members[name] = members[name].replace(b"\n", b"\n\n", 1)
        return members

    return change


REFUSED_CRC = "refused: cannot be read (Bad CRC-32 for file '{}')"


@pytest.mark.parametrize(
    "case",
    [
        (None, "records.jsonl", ["records.jsonl"]),
        (None, "records.csv", ["records.csv"]),
        ("records.jsonl", "records.csv", ["records.csv"]),
        ("records.csv", "records.jsonl", ["records.csv changed", "records.jsonl"]),
        ("log/checkpoints.json", "records.csv", ["log/checkpoints.json changed", "records.csv"]),
        ("report.html", "records.jsonl", ["records.jsonl"]),
    ],
)
def test_a_records_member_that_cannot_be_read_is_refused_where_its_digest_is_checked(
    plant: Exported, tmp_path: Path, both, case: tuple[str | None, str, list[str]]
):
    """The records' members are hashed while their records are checked (inflated once), yet
    the verdict is the one of checking each digest in the manifest's turn: what was found
    before, then the refusal, and nothing the later checks found."""
    changed, broken, expected = case
    change = changed_member(changed) if changed else (lambda members: members)
    out = damaged(rewritten(plant.bundle, tmp_path / "d.zip", change), broken, 0.5)
    said = [
        f"FAIL {e.removesuffix(' changed')}: changed: its SHA-256 is not the one the manifest lists"
        if e.endswith(" changed")
        else f"FAIL {e}: {REFUSED_CRC.format(e)}"
        for e in expected
    ]
    assert failed(both(out, plant.trust)) == said


def test_both_records_members_changed_are_named_in_the_manifests_order(plant, tmp_path, both):
    def change(members: Members) -> Members:
        return changed_member("records.jsonl")(changed_member("records.csv")(members))

    problems = failed(both(rewritten(plant.bundle, tmp_path / "c.zip", change), plant.trust))
    assert problems[:2] == [
        "FAIL records.csv: changed: its SHA-256 is not the one the manifest lists",
        "FAIL records.jsonl: changed: its SHA-256 is not the one the manifest lists",
    ]
    assert len(problems) > 2


def mixed_records(members: Members) -> Members:
    """records.jsonl with a value changed, a point renamed, a line repeated and one dropped:
    blocks that hold and blocks that do not."""
    lines = members["records.jsonl"].split(b"\n")
    lines[40] = lines[40].replace(b'"value":', b'"value":7', 1)
    lines[90] = lines[90].replace(b'"point":"', b'"point":"x', 1)
    lines[130:131] = [lines[130], lines[130]]
    del lines[170]
    members["records.jsonl"] = b"\n".join(lines)
    return members


@pytest.mark.parametrize("broken", [None, "records.jsonl", "records.csv"])
def test_worker_processes_give_the_verdict_one_process_gives(
    plant: Exported, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, broken: str | None
):
    """Blocks of record lines read by forked workers: the same problems, in the same order, as
    when this process reads them all (blocks of a few lines, so that there are many)."""
    out = rewritten(plant.bundle, tmp_path / "mixed.zip", mixed_records)
    if broken:
        damaged(out, broken, 0.6)
    monkeypatch.setattr(verifier, "CHUNK", 2048)
    trust = plant.trust.read_bytes()
    alone = verifier.verify(str(out), trust).as_json()
    monkeypatch.setattr(verifier, "worker_count", lambda amount, least: 2)
    assert verifier.verify(str(out), trust).as_json() == alone
    assert len(alone["problems"]) >= (1 if broken else 5)


@pytest.fixture(scope="module")
def readings_only(evidence_site: Site, tmp_path_factory: pytest.TempPathFactory) -> Exported:
    """A SQLite store of readings only (no gap record), and a whole-device bundle of it: every
    record line is the usual reading, so blocks of lines are read at once."""
    root = tmp_path_factory.mktemp("readings")
    db = str(root / "evidence.db")
    fill(evidence_site, db, root, seconds=70, gap_every=10**9).close()
    bundle = root / "bundle.zip"
    assert export(db, evidence_site.keys_dir, bundle, "--device", DEVICE) == 0
    return Exported(evidence_site, db, bundle, trust_file(db, evidence_site.keys_dir, root / "t"))


@pytest.mark.parametrize("workers", [0, 2])
def test_a_line_after_its_batch_was_whole_still_fails_the_batch(
    readings_only: Exported, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, workers: int
):
    """A batch's root is rebuilt as soon as a block of lines completes it, while later blocks
    are read: a line of it after that, at the position just past its last (the manifest
    resigned to count it), still fails the batch, by one process and by workers alike."""
    plant = readings_only
    members = read(plant.bundle)
    first = json.loads(members["records.jsonl"].split(b"\n")[0])
    count = json.loads(json.loads(members[f"batches/{first['batch']}.json"])["statement"])["count"]

    def one_more(members: Members) -> Members:
        line = members["records.jsonl"].split(b"\n")[0]
        row = members["records.csv"].split(b"\n")[1]
        members["records.jsonl"] += line.replace(b',"position":0,', b',"position":%d,' % count)
        members["records.jsonl"] += b"\n"
        members["records.csv"] += row.rsplit(b",", 1)[0] + b",%d\n" % count
        return members

    def counted(manifest: dict[str, Any]) -> None:
        manifest["records"] += 1

    out = forged(plant.site, plant.bundle, tmp_path / "more.zip", one_more, manifest_change=counted)
    monkeypatch.setattr(verifier, "CHUNK", 16384)
    monkeypatch.setattr(verifier, "worker_count", lambda amount, least: workers)
    whole_problem = verifier._whole_problem
    rebuilt: list[int] = []

    def counting(batch: Any) -> str | None:
        rebuilt.append(batch.id)
        return whole_problem(batch)

    monkeypatch.setattr(verifier, "_whole_problem", counting)
    said = verifier.verify(str(out), plant.trust.read_bytes()).as_json()
    assert said["problems"] == [
        {"item": f"batch {first['batch']}", "message": f"holds {count + 1} of its {count} records"}
    ]
    assert rebuilt.count(first["batch"]) == 2  # when its block completed it, and at the end


def test_a_worker_killed_while_verifying_leaves_the_verdict_as_it_was(
    plant: Exported, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    """A worker killed mid-verification breaks the pool: the blocks not done, and every one
    after, are read by the verifying process, and the verdict is the one it gives alone."""
    out = rewritten(plant.bundle, tmp_path / "mixed.zip", mixed_records)
    monkeypatch.setattr(verifier, "CHUNK", 2048)
    trust = plant.trust.read_bytes()
    alone = verifier.verify(str(out), trust).as_json()
    parent, read_usual = os.getpid(), verifier.read_usual

    def dying(block: bytes, count: int) -> Any:
        if os.getpid() != parent:
            os.kill(os.getpid(), signal.SIGKILL)
        return read_usual(block, count)

    monkeypatch.setattr(verifier, "read_usual", dying)
    monkeypatch.setattr(verifier, "worker_count", lambda amount, least: 2)
    assert verifier.verify(str(out), trust).as_json() == alone


def test_a_bundle_missing_its_manifest_is_not_a_bundle(plant: Exported, tmp_path: Path, both):
    out = rewritten(
        plant.bundle,
        tmp_path / "n.zip",
        lambda m: {k: v for k, v in m.items() if k != "manifest.json"},
    )
    assert failed(both(out, plant.trust)) == [
        "FAIL manifest.json: refused: missing: this is not a Converge bundle"
    ]


IGNORED_WITH_TRUST = {"manifest.json", "keys.json", "retention.json"}
"""The manifest is re-made by the forger; the auditor's trust file stands for keys.json; the
reserved retention member has no content to get wrong yet."""
hostile_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3)
    ),
    max_leaves=8,
)


@settings(max_examples=40, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(member=st.integers(min_value=0), value=hostile_json)
def test_any_json_where_a_member_is_expected_is_a_verdict_never_a_crash(
    plant, tmp_path, member, value
):
    """The insider re-signs the manifest over a member holding JSON of any shape."""
    members = read(plant.bundle)
    names = sorted(n for n in members if n.endswith(".json") and n not in IGNORED_WITH_TRUST)
    name = names[member % len(names)]
    out = forged(
        plant.site,
        plant.bundle,
        tmp_path / "j.zip",
        lambda m: {**m, name: json.dumps(value).encode()},
    )
    result = verifier.verify(str(out), plant.trust.read_bytes())
    assert not result.ok and result.problems


# --- the record reader's fast path ------------------------------------------------------

names = st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), min_size=1, max_size=6)
values = (
    st.floats(allow_nan=False, allow_infinity=False)
    | st.integers(min_value=-(2**53) + 1, max_value=2**53 - 1)
    | st.booleans()
    | st.text(max_size=6)
    | st.sampled_from([0.0, -0.0, 1e21, 1e-7, 5e-324, 28.0, 0.1 + 0.2])
)
moments = st.datetimes(
    min_value=datetime(2000, 1, 1), max_value=datetime(2100, 1, 1), timezones=st.just(UTC)
)


readings = st.builds(
    lambda device, point, value, at, quality, scheduled: Reading(
        device, point, at, value, quality, scheduled_at=at if scheduled else None
    ),
    names | st.sampled_from(["plc-001", "reactor-1-plc"]),
    names | st.sampled_from(["TT101_PV", "R001"]),
    values,
    moments,
    st.sampled_from(list(Quality)),
    st.booleans(),
)


@settings(max_examples=400)
@given(reading=readings)
def test_the_fast_reader_reads_every_leaf_as_the_json_parser_does(reading: Reading):
    """The usual reading is read from its leaf's text without parsing it; every leaf, odd names
    and numbers included, must give the record and CSV row the JSON parser and csv give."""
    leaf = leaf_bytes(reading, bytes(16))
    parsed = json.loads(leaf)
    row = io.StringIO()
    csv.writer(row, lineterminator="\n").writerow(
        [
            "" if v is None else ("true" if v else "false") if isinstance(v, bool)
            else json.dumps(v) if isinstance(v, int | float) else str(v)
            for v in (
                parsed.get(c) if c not in ("time", "batch", "position")
                else {"time": parsed.get("scheduled_at") or parsed["collected_at"],
                      "batch": 7, "position": 3}[c]
                for c in verifier.CSV_COLUMNS
            )
        ]
    )  # fmt: skip
    record = verifier.read_record(leaf, 7, 3)
    at = instant(reading.scheduled_at or reading.collected_at)
    assert record == verifier.Record(reading.device, reading.point, at, row.getvalue().encode())


usual_readings = st.builds(
    lambda device, point, value, at, late, quality: Reading(
        device, point, at + late, value, quality, scheduled_at=at
    ),
    st.sampled_from(["plc-001", "reactor-1-plc", "ä"]),
    st.sampled_from(["TT101_PV", "R001", "a/b:c+d", 'q"']),
    st.floats(allow_nan=False, allow_infinity=False) | st.integers(-(2**53) + 1, 2**53 - 1),
    moments,
    st.timedeltas(timedelta(0), timedelta(seconds=5)),
    st.sampled_from(list(Quality)),
)


def plainly_usual(leaf: bytes) -> bool:
    """Whether a leaf is the usual reading whose value's text is its number's own."""
    found = verifier._READING.fullmatch(leaf)
    return found is not None and not (found[7] and repr(float(found[6])) != found[6].decode())


@settings(max_examples=200)
@given(batch=st.lists(usual_readings, min_size=1, max_size=6))
def test_a_batch_read_at_once_gives_the_rows_its_leaves_give_one_by_one(batch: list[Reading]):
    """The export reads a batch's record lines at once (:func:`verifier.usual_rows`) when
    every one is the usual reading, as the check does (:func:`verifier.read_usual`): the same
    CSV rows as each leaf read alone, its points and times in line order; and neither takes a
    batch holding one leaf that is not usual."""
    leaves = [leaf_bytes(reading, bytes([n]) * 16) for n, reading in enumerate(batch)]
    lines = b"".join(writing.LINE % (9, n, leaf) for n, leaf in enumerate(leaves))
    assert writing._lines(9, range(len(leaves)), leaves) == lines  # as the export joins them
    exported = verifier.usual_rows(lines, len(leaves))
    checked = verifier.read_usual(lines, len(leaves))
    usual = all(map(plainly_usual, leaves))
    assert (exported is not None) == (checked is not None) == usual
    if exported is not None and checked is not None:
        records = [verifier.read_record(leaf, 9, n) for n, leaf in enumerate(leaves)]
        assert exported.rows == checked.rows == b"".join(r.csv for r in records if r)
        assert exported.points == [r.point.encode() for r in batch]
        assert exported.times == [instant(r.scheduled_at).encode() for r in batch]


@settings(max_examples=2000)
@given(st.lists(st.from_regex(rb"\A-?[1-9][0-9]{0,18}\.[0-9]{1,18}\Z"), min_size=1, max_size=3))
def test_a_decimal_is_its_numbers_own_as_a_conversion_says(decimals: list[bytes]):
    """Decimals of the usual reading's form are judged their numbers' own without converting
    them when short enough: the same verdict as converting each (``repr(float(text))``)."""
    converted = all(repr(float(text)) == text.decode() for text in decimals)
    assert verifier._numbers_own(decimals) == converted


def test_a_leaf_holding_a_line_break_is_never_read_at_once():
    """A leaf a database writer made to hold a line break and a second record line would read
    as two usual lines where the batch has one leaf: the batch is read leaf by leaf instead."""
    usual = leaf_bytes(Reading("plc-1", "R1", T0, 20, Quality.GOOD, scheduled_at=T0), bytes(16))
    smuggled = usual + b'}\n{"batch":9,"position":77,"leaf":' + usual
    lines = writing.LINE % (9, 0, smuggled) + writing.LINE % (9, 1, b'{"not":"usual"}')
    assert verifier.usual_rows(lines, 2) is None
    assert verifier.read_usual(lines, 2) is None


def test_a_bundle_or_trust_file_that_is_not_one_is_a_mistake_not_a_verdict(
    plant: Exported, tmp_path: Path, clean_python: Path, capsys
):
    """No file at the bundle's path, a trust file that is not one or one that trusts no key,
    says so and exits 2 (a failing verdict, exit 1, is for a bundle that does not verify),
    both ways."""
    script = tmp_path / "verify.py"
    script.write_bytes(Path(verifier.__file__).read_bytes())
    not_trust = tmp_path / "trust.json"
    not_trust.write_text("{}")
    keyless = tmp_path / "keyless.json"  # a trust file, trusting nothing
    keyless.write_text(json.dumps(json.loads(plant.trust.read_bytes()) | {"keys": []}))
    for bundle, trust, said in (
        (tmp_path / "nothere.zip", None, "nothere.zip: there is no such file"),
        (plant.bundle, not_trust, "--trust: not a trust file"),
        (plant.bundle, keyless, "--trust: it trusts no key or no audit log"),
    ):
        assert converge_verify(bundle, trust).code == 2
        assert said in capsys.readouterr().err
        command = [clean_python, "-I", script, bundle, *(["--trust", trust] if trust else [])]
        ran = subprocess.run(command, capture_output=True, text=True, check=False)
        assert ran.returncode == 2 and said in ran.stderr and not ran.stdout
