"""The verifier written from docs/ alone (``docs_verifier.py``) recomputes the pages' own
examples and the published note and checkpoint vectors.

Every store the other tests verify also goes through it (``evidence_kit.agree``).
"""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime
from pathlib import Path

import docs_verifier as dv
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from evidence_kit import REPO

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
    reading, gap, statement = re.findall(r"^```text\n(\{.*\})$", text, re.MULTILINE)
    hashes = [dv.leaf_hash(leaf.encode()) for leaf in (reading, gap)]
    assert [h.hex() for h in hashes] == re.findall(r"^leaf hash `([0-9a-f]{64})`", text, re.M)
    for data in (reading, gap, statement):
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
