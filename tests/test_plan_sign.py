"""Signed plans: ``converge plan --sign`` and ``converge run --trust / --require-signed``.

Real Ed25519 keys in real encrypted key folders, real plans of the example
plant compiled by the command; every refusal is checked as the user sees it:
the exception (or the one line ``converge run`` prints) names the plan file
and says what is wrong.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import rfc8785
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from engine.audit import seal_with
from engine.cli import main
from engine.commands.keys import export_public
from engine.errors import PlanRejected
from engine.plans.folder import load_plans
from engine.plans.signature import PlanClaim, Signer, open_signer, plan_verifier, sign_claim
from engine.sign import note
from engine.store import auditlog
from engine.store.store import Store
from plugins.filekeys.store import FileKeyStore

REPO = Path(__file__).resolve().parent.parent
PASSPHRASE = "correct horse battery staple"
KEY = "plan-signing"
DATA_KEYS = ("qa-signing", "site-integrity")  # the keys the example policies name
INPUTS = [
    "-p",
    "policies/gmp",
    "policies/security",
    "policies/privacy",
    "policies/utility/energy-metering.yaml",
    "-s",
    "examples/sites/plant-basel",
    "--at",
    "2026-06-01",
]
DEVICES = [
    "reactor-1-plc",
    "cleanroom-emu-1",
    "reactor-7",
    "filler-2",
    "boiler-gateway",
    "access-badge-gw",
]


class Clock:
    """A clock the test moves by hand."""

    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now


SIGN = ("--sign", KEY, "--as", "j.doe@example.com", "--meaning", "approved")
"""An electronic signature: the key, who signs (a principal of the plant), what it means."""


def plan_command(folder: Path, *more: str) -> int:
    """``converge plan`` of the example plant into ``folder/plans``, from the repository."""
    return main(
        ["plan", *INPUTS, "-o", str(folder / "plans"), "--keys", str(folder / "keys"), *more]
    )


@pytest.fixture(scope="module")
def compiled(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A key folder, the example plans compiled and signed by ``converge plan --sign``,
    and ``trust.txt``, the plan key exported as ``converge keys export-public`` does."""
    root = tmp_path_factory.mktemp("signed")
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(REPO)
        patch.setenv("CONVERGE_KEY_PASSPHRASE", PASSPHRASE)
        patch.delenv("CONVERGE_KEYS", raising=False)
        for name in (*DATA_KEYS, KEY):
            assert main(["keys", "generate", name, "--keys", str(root / "keys")]) == 0
        assert plan_command(root, *SIGN) == 0
    versions = FileKeyStore(root / "keys").versions(KEY)
    (root / "trust.txt").write_text(export_public(versions, "signed-note"))
    return root


@pytest.fixture
def work(compiled: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A copy of the compiled folder for this test to change; the working folder is it."""
    folder = tmp_path / "work"
    shutil.copytree(compiled, folder)
    monkeypatch.chdir(folder)
    monkeypatch.setenv("CONVERGE_KEY_PASSPHRASE", PASSPHRASE)
    monkeypatch.delenv("CONVERGE_KEYS", raising=False)
    return folder


def load(
    folder: Path, *, trust: bool = False, require: bool = False, keys: str = "keys"
) -> list[dict[str, object]]:
    """``load_plans`` as ``converge run`` calls it with ``--trust`` and/or ``--require-signed``."""
    store = FileKeyStore(folder / keys) if require else None
    verify = plan_verifier(folder / "trust.txt" if trust else None, store, KEY if require else None)
    return load_plans(folder / "plans", time.time(), verify)


def refused(folder: Path, **options: bool | str) -> str:
    with pytest.raises(PlanRejected) as caught:
        load(folder, **options)
    return str(caught.value)


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str]:
    """``converge run ARGV`` in-process: exit code and standard error."""
    code = main(["run", *argv, "--for", "1s"])
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err
    return code, err


def plan_of(folder: Path, device: str) -> Path:
    return folder / "plans" / f"{device}.plan.json"


def sig_of(folder: Path, device: str) -> Path:
    return folder / "plans" / f"{device}.plan.sig"


def sign_all(folder: Path, key: Ed25519PrivateKey, at: datetime) -> None:
    """Sign every plan of the folder again with ``key``, dated ``at``."""
    for device in DEVICES:
        digest = json.loads(plan_of(folder, device).read_bytes())["digest"]
        sig_of(folder, device).write_bytes(sign_claim(PlanClaim(device, digest, at), KEY, key))


def reseal(folder: Path, device: str, change: bytes, into: bytes) -> str:
    """Change a plan and fix its digest and its index entry, as someone who may write the
    folder would: then only the signature tells."""
    path = plan_of(folder, device)
    body = json.loads(path.read_bytes().replace(change, into))
    del body["digest"]
    digest = "sha256:" + hashlib.sha256(rfc8785.dumps(body)).hexdigest()
    path.write_bytes(rfc8785.dumps({**body, "digest": digest}))
    index_path = folder / "plans" / "index.json"
    index = json.loads(index_path.read_bytes())
    for entry in index["plans"]:
        if entry["device"] == device:
            entry["digest"] = digest
    index_path.write_bytes(rfc8785.dumps(index))
    return digest


# --- what converge plan --sign writes -----------------------------------------------------


def test_each_plan_has_a_signed_note_beside_it_named_in_the_index(work):
    plans = work / "plans"
    raw = (plans / "index.json").read_bytes()
    assert rfc8785.dumps(json.loads(raw)) == raw  # still canonical JSON
    index = json.loads(raw)
    assert [entry["device"] for entry in index["plans"]] == DEVICES
    trusted = (work / "trust.txt").read_text().split()
    for entry in index["plans"]:
        device = entry["device"]
        assert entry["signature"] == f"{device}.plan.sig"
        signed = (plans / entry["signature"]).read_text()
        text = note.verify_note(signed, trusted)
        lines = text.split("\n")
        assert lines[:3] == ["converge.plan-signature/v2", device, entry["digest"]]
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", lines[3])
        assert lines[4:] == [
            "signer j.doe@example.com",
            "name Jane Doe (Head of Quality Assurance; approves GMP exceptions)",
            "meaning approved",
            "",
        ]
        assert signed.startswith(f"{text}\n\u2014 {KEY} ")
        assert signed.endswith("\n") and signed.count("\n") == 9


def test_signed_plans_load_with_either_option_or_both(work):
    for options in ({"trust": True}, {"require": True}, {"trust": True, "require": True}):
        plans = load(work, **options)
        assert [p.device.id for p in plans] == DEVICES


def test_without_trust_options_unsigned_plans_still_load(work):
    for sig in (work / "plans").glob("*.plan.sig"):
        sig.unlink()
    assert len(load(work)) == len(DEVICES)
    assert "not signed" in refused(work, trust=True)


def test_compiling_again_without_sign_removes_the_signatures(work, monkeypatch, capsys):
    monkeypatch.chdir(REPO)
    assert plan_command(work) == 0
    capsys.readouterr()
    assert not list((work / "plans").glob("*.plan.sig"))
    index = json.loads((work / "plans" / "index.json").read_bytes())
    assert all("signature" not in entry for entry in index["plans"])


def test_a_wrong_passphrase_signs_and_writes_nothing(work, monkeypatch, capsys):
    shutil.rmtree(work / "plans")
    monkeypatch.chdir(REPO)
    monkeypatch.setenv("CONVERGE_KEY_PASSPHRASE", "not the passphrase at all")
    assert plan_command(work, *SIGN) == 2
    _, err = capsys.readouterr()
    assert "wrong passphrase" in err and err.count("\n") == 1
    assert not (work / "plans").exists()


# --- what converge run refuses ------------------------------------------------------------


def test_a_changed_plan_byte_is_refused_by_its_digest(work):
    path = plan_of(work, "filler-2")
    data = bytearray(path.read_bytes())
    data[data.index(b'"every_ms":') + len(b'"every_ms":')] ^= 1  # a digit of an interval
    path.write_bytes(bytes(data))
    for options in ({}, {"trust": True}, {"require": True}):
        assert refused(work, **options).startswith(f"{path}: digest does not verify: got sha256:")


def test_a_resealed_plan_is_refused_by_its_signature(work):
    digest = reseal(work, "reactor-1-plc", b'"every_ms":5000', b'"every_ms":60000')
    assert len(load(work)) == len(DEVICES)  # digest and index agree: only the signature tells
    for options in ({"trust": True}, {"require": True}):
        message = refused(work, **options)
        assert message.startswith(
            f"{plan_of(work, 'reactor-1-plc')}: signature "
            "reactor-1-plc.plan.sig signs digest sha256:"
        )
        assert message.endswith(f", not the plan's {digest}")


def test_a_deleted_signature_is_refused_when_trust_is_required(work, capsys):
    sig_of(work, "reactor-7").unlink()
    code, err = run(capsys, "--plans", "plans", "--trust", "trust.txt")
    assert code == 2
    assert err == (
        "converge: error: plans/reactor-7.plan.json: not signed: reactor-7.plan.sig"
        " is missing, and --trust trust.txt requires signed plans\n"
    )
    assert "not signed: reactor-7.plan.sig is missing" in refused(work, require=True)


def test_signatures_swapped_between_devices_are_refused_naming_the_device(work):
    one, other = sig_of(work, "reactor-1-plc"), sig_of(work, "filler-2")
    first, second = one.read_bytes(), other.read_bytes()
    one.write_bytes(second)
    other.write_bytes(first)
    for options in ({"trust": True}, {"require": True}):
        assert refused(work, **options) == (
            f"{plan_of(work, 'reactor-1-plc')}: signature reactor-1-plc.plan.sig signs the plan"
            " of device filler-2, not reactor-1-plc"
        )


def test_a_signature_by_an_untrusted_key_is_refused(work, capsys):
    # a key of the same name in another folder: someone's own "plan-signing"
    rogue = FileKeyStore(work / "rogue", passphrase=PASSPHRASE)
    rogue.generate(KEY)
    signer = open_signer(rogue, KEY, datetime.now(UTC), Signer("mallory", "Mallory", "approved"))
    sign_all(work, signer.private_key, signer.signed_at)

    assert refused(work, trust=True).startswith(
        f"{plan_of(work, 'reactor-1-plc')}: signature reactor-1-plc.plan.sig is refused: note"
        " has no signature from a known key (known: plan-signing+"
    )
    code, err = run(capsys, "--plans", "plans", "--keys", "keys", "--require-signed", KEY)
    assert code == 2
    assert err == (
        "converge: error: plans/reactor-1-plc.plan.json: signature "
        "reactor-1-plc.plan.sig is refused: signature verifies with no version of "
        "the key\n"
    )


def test_a_retired_version_cannot_sign_after_its_end(work):
    start = datetime(2026, 1, 5, 9, 0, tzinfo=UTC)
    clock = Clock(start)
    store = FileKeyStore(work / "rotating", passphrase=PASSPHRASE, clock=clock)
    store.generate(KEY)
    v1 = store.signer(KEY, start)
    clock.now = rotated = start + timedelta(days=30)
    store.rotate(KEY)
    later = rotated + timedelta(days=1)
    v2 = store.signer(KEY, later)

    # what v1 signed while it was valid still verifies after the rotation
    sign_all(work, v1, rotated - timedelta(hours=1))
    assert len(load(work, require=True, keys="rotating")) == len(DEVICES)
    # v1, retired (say it leaked), dates its signature after its end: refused
    sign_all(work, v1, later)
    message = refused(work, require=True, keys="rotating")
    assert message.startswith(
        f"{plan_of(work, 'reactor-1-plc')}: signature reactor-1-plc.plan.sig is refused: "
        "signature by plan-signing v1 ("
    )
    assert "dated 2026-02-05T09:00:00+00:00 is outside its validity" in message
    # v2 dated before it began: refused too; v2 in its own validity: fine
    sign_all(work, v2, rotated - timedelta(hours=1))
    assert "signature by plan-signing v2" in refused(work, require=True, keys="rotating")
    sign_all(work, v2, later)
    assert len(load(work, require=True, keys="rotating")) == len(DEVICES)


def test_a_malformed_trust_file_is_a_one_line_error_at_its_line(work, capsys):
    (work / "bad-trust.txt").write_text("# plan keys\n\nplan-signing+00000000+AAAA\n")
    code, err = run(capsys, "--plans", "plans", "--trust", "bad-trust.txt")
    assert code == 2
    assert err.startswith("converge: error: bad-trust.txt:3: not a verifier key")
    assert err.count("\n") == 1


def test_keys_without_require_signed_is_an_error(work, capsys):
    code, err = run(capsys, "--plans", "plans", "--keys", "keys")
    assert code == 2
    assert err == (
        "converge: error: --keys is for --require-signed KEY or --db: name the key "
        "that must sign, or the store to sign into\n"
    )


def test_the_signature_file_documented_in_docs_plans_is_well_formed():
    page = (REPO / "docs" / "plans.md").read_text(encoding="utf-8")
    section = page[page.index("### The signature file") : page.index("### Checking")]
    blocks = re.findall(r"^```text\n(.*?)^```", section, re.MULTILINE | re.DOTALL)
    text, whole = blocks
    assert whole.startswith(text + "\n")
    parsed, [signature] = note.split_note(whole)
    assert parsed == text
    claim = PlanClaim.parse(text)
    assert (claim.device, claim.signed_at) == (
        "reactor-1-plc",
        datetime(2026, 11, 25, 11, 4, 47, tzinfo=UTC),
    )
    assert signature.name == KEY
    assert f"{KEY} v1 (key id {signature.key_id.hex()})" in page  # as the console example says


# --- electronic signatures (21 CFR 11.50) ---------------------------------------------------


def test_a_signature_names_its_signer_and_meaning_and_needs_both(work, monkeypatch, capsys):
    monkeypatch.chdir(REPO)
    assert plan_command(work, "--sign", KEY, "--as", "j.doe@example.com") == 2
    assert "--meaning" in capsys.readouterr().err
    assert plan_command(work, "--sign", KEY, "--meaning", "reviewed") == 2
    assert "--as PRINCIPAL" in capsys.readouterr().err
    assert (
        plan_command(work, "--sign", KEY, "--as", "nobody@example.com", "--meaning", "approved")
        == 3
    )
    assert "nobody@example.com is unknown" in capsys.readouterr().err


def test_the_meaning_is_inside_the_signed_bytes(work):
    sig = plan_of(work, "filler-2").with_name("filler-2.plan.sig")
    sig.write_text(sig.read_text().replace("meaning approved", "meaning reviewed"))
    assert "invalid signature for key plan-signing" in refused(work, trust=True)


def test_an_older_signature_without_a_signer_still_parses():
    claim = PlanClaim("d", "sha256:" + "0" * 64, datetime(2026, 6, 1, tzinfo=UTC))
    assert claim.text.startswith("converge.plan/v1\n") and claim.text.count("\n") == 4
    assert PlanClaim.parse(claim.text) == claim


def test_signing_with_a_store_records_who_signed_what_it_means(work, monkeypatch):
    monkeypatch.chdir(REPO)
    db = str(work / "evidence.db")
    assert plan_command(work, *SIGN, "--db", db) == 0
    with Store.open_existing(db) as store, store.reading() as conn:
        signed = list(auditlog.entries(conn, ["plan.signed"]))
    assert [e.payload["device"] for e in signed] == DEVICES
    first = signed[0]
    assert first.actor["id"] == "j.doe@example.com"
    assert (first.payload["meaning"], first.payload["key"]) == ("approved", KEY)
    assert first.payload["name"].startswith("Jane Doe")


def test_a_signature_recorded_after_a_checkpoint_waits_for_the_next(work, monkeypatch):
    """``plan --sign --db`` holds no audit key: its ``plan.signed`` entries wait in the
    unsigned tail, and the next checkpoint signs them (it is not refused)."""
    monkeypatch.chdir(REPO)
    db = str(work / "evidence.db")
    keys = FileKeyStore(work / "keys", passphrase=PASSPHRASE)
    keys.generate("audit-log")
    assert plan_command(work, *SIGN, "--db", db) == 0
    with Store.open_existing(db) as store:
        assert store.checkpoint(seal_with(keys, "audit-log", datetime.now(UTC))) is not None
        assert plan_command(work, *SIGN, "--db", db) == 0
        assert store.checkpoint(seal_with(keys, "audit-log", datetime.now(UTC))) is not None
        assert store.entries_since_checkpoint() == 0
