"""The verifier written from docs/ alone (``docs_verifier.py``) recomputes the pages' own
examples and the published note and checkpoint vectors.

Every store the other tests verify also goes through it (``evidence_kit.agree``). The
stores built here are ones the documentation rules out, which ``audit verify`` once passed:
both verifiers must fail them, naming what is wrong.
"""

from __future__ import annotations

import contextlib
import json
import re
import sqlite3
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import docs_verifier as dv
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from evidence_kit import REPO, Site, fill, public_keys

from engine.audit import ORIGIN_KEY, STATE_KEY, now_instant, signing_second, time_line
from engine.canonical import canonical_json
from engine.sign import note
from engine.sign.merkle import MerkleLog
from engine.store.store import Store
from engine.verify.whole import verify_store

TEST_KEY = (
    Ed25519PrivateKey.from_private_bytes(bytes(range(32)))
    .public_key()
    .public_bytes(Encoding.Raw, PublicFormat.Raw)
)
"""The public test key of the pages (seed 00 01 … 1f)."""


def published_key(name: str) -> dv.Version:
    return dv.Version(name, 1, TEST_KEY, datetime(1970, 1, 1, tzinfo=UTC), None)


def page(name: str) -> str:
    return (REPO / "docs" / name).read_text("utf-8")


def test_the_leaves_root_and_signed_statement_of_records_md_recompute():
    text = page("records.md")
    *leaves, statement = re.findall(r"^```text\n(\{.*\})$", text, re.MULTILINE)
    hashes = [dv.leaf_hash(leaf.encode()) for leaf in leaves]
    assert [h.hex() for h in hashes] == re.findall(r"^leaf hash `([0-9a-f]{64})`", text, re.M)
    for data in (*leaves, statement):
        dv.canonical(data.encode())
    assert json.loads(statement)["root"] == dv.mth([hashes[1], hashes[0]]).hex()
    signature = re.search(r"the signature is\n`([0-9a-f]{128})`", text)
    assert signature and published_key("t").verifies(
        statement.encode(), bytes.fromhex(signature[1])
    )


def test_the_checkpoints_of_evidence_md_and_audit_md_verify():
    text = re.search(
        r"^```\n(converge\.example/audit\n3\n.*?)^```", page("evidence.md"), re.M | re.S
    )
    assert text
    signed = dv.parse_note(text[1])
    size, root, _ = dv.checkpoint_text(signed, "converge.example/audit")
    assert dv.signers(signed, [("converge.example/audit", published_key("audit"))])
    assert (size, root) == (3, dv.mth([dv.leaf_hash(d) for d in (b"", b"\x00", b"\x10")]))
    text = re.search(r"^```text\n(converge/audit/.*?)^```", page("audit.md"), re.M | re.S)
    assert text
    origin = text[1].splitlines()[0]
    checkpoint = dv.open_checkpoint(text[1], origin, [published_key("audit-log")])
    assert (checkpoint.size, checkpoint.root) == (
        3,
        dv.mth([dv.leaf_hash(d) for d in (b"a", b"b", b"c")]),
    )
    assert checkpoint.time == datetime(2026, 6, 1, 12, tzinfo=UTC)


VECTORS = sorted(
    [
        *(REPO / "tests/vectors/checkpoint").glob("*.json"),
        *(REPO / "tests/vectors/note").glob("*.json"),
    ]
)


@pytest.mark.parametrize("path", VECTORS, ids=[f"{p.parent.name}/{p.stem}" for p in VECTORS])
def test_the_note_and_checkpoint_vectors(path: Path):
    case = json.loads(path.read_text())
    trusted = []
    for key in case["verifier_keys"]:
        name, _, blob = key.split("+", 2)
        trusted.append((name, dv.Version(name, 1, dv.b64(blob)[1:], dv.EPOCH, None)))
    try:
        signed = dv.parse_note(case["note"])
        if "origin" in case:
            dv.checkpoint_text(signed, case["origin"])
        dv.signers(signed, trusted)
        valid = True
    except ValueError:
        valid = False
    assert valid == case["want"]["valid"]


# --- stores the two verifiers judge differently ---------------------------------------------


def rewrite_log(site: Site, db: Path, change: Callable[[list[dict[str, Any]]], None]) -> None:
    """``change`` the audit entries (a list in seq order), then save the log's state and
    re-sign the whole log now, as the audit key's holder can."""
    with contextlib.closing(sqlite3.connect(db)) as conn, conn:
        rows = conn.execute("SELECT entry FROM audit_entries ORDER BY seq").fetchall()
        entries = [json.loads(bytes(raw)) for (raw,) in rows]
        change(entries)
        conn.execute("DELETE FROM audit_entries")
        log = MerkleLog()
        for entry in entries:
            data = canonical_json(entry)
            log.append(data)
            conn.execute(
                "INSERT INTO audit_entries (seq, time, kind, entry) VALUES (?, ?, ?, ?)",
                (entry["seq"], entry["time"], entry["kind"], data),
            )
        state = json.dumps({"size": log.size, "hashes": [h.hex() for h in log.hashes]})
        conn.execute("UPDATE meta SET value = ? WHERE key = ?", (state, STATE_KEY))
        (origin,) = conn.execute("SELECT value FROM meta WHERE key = ?", (ORIGIN_KEY,)).fetchone()
        at = signing_second(datetime.now(UTC))
        signer = site.key_store().signer("audit-log", at)
        checkpoint = note.Checkpoint(origin, log.size, log.root(), (time_line(at),))
        conn.execute("DELETE FROM checkpoints")
        conn.execute(
            "INSERT INTO checkpoints (size, note, created_at) VALUES (?, ?, ?)",
            (log.size, note.sign_checkpoint(checkpoint, origin, signer), now_instant()),
        )


def second_log_created(entries: list[dict[str, Any]]) -> None:
    origin = "converge/audit/site-integrity/00000000-0000-4000-8000-000000000000"
    made = {**entries[0], "seq": len(entries), "time": now_instant()}
    entries.append({**made, "payload": {"audit_key": "site-integrity", "origin": origin}})


def deployed_to_another_device(entries: list[dict[str, Any]]) -> None:
    deployed = next(e for e in entries if e["kind"] == "plan.deployed")
    others = {e["payload"]["device"] for e in entries if e["kind"] == "plan.deployed"}
    other = sorted(others - {deployed["payload"]["device"]})[0]
    deployed["payload"] = {**deployed["payload"], "device": other}


# audit.md: log.created is written when the store is made, always entry 0, and a log has one
# key; plans and plan.deployed entries match one to one (audit verify once passed both)
RULED_OUT = {
    "second-log-created": (second_log_created, "a second log.created: a log is made once"),
    "plan-deployed-to-another-device": (
        deployed_to_another_device,
        "its plan.deployed entry names the device",
    ),
}


@pytest.mark.parametrize("change, named", RULED_OUT.values(), ids=RULED_OUT.keys())
def test_a_log_the_docs_rule_out_fails_both_verifiers(evidence_site, tmp_path, change, named):
    db = tmp_path / "evidence.db"
    fill(evidence_site, str(db), tmp_path, seconds=30).close()
    rewrite_log(evidence_site, db, change)
    if dv.verify(str(db), public_keys(evidence_site.keys_dir)).ok:
        pytest.fail("the docs verifier passed it")  # not an AssertionError: never expected
    with Store.open_existing(str(db)) as store:
        report = verify_store(store, evidence_site.trust())
    assert not report.ok, "audit verify passed it"
    assert any(named in problem.message for problem in report.problems), report.problems
