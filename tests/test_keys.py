"""Signing keys: the file key store, rotation and validity, the CLI and the compile check.

Everything uses real Ed25519 keys and real files in ``tmp_path``; time is a
fake clock only where a test needs to step past a validity period.
"""

from __future__ import annotations

import json
import os
import stat
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.serialization import load_pem_private_key, load_pem_public_key

from engine.cli import main
from engine.compile.validate.references import check_signing_keys
from engine.errors import KeyStoreError, PluginError
from engine.keys import KeyEvent, KeyStore, SignatureRejected, open_key_store
from engine.plugin_manager import make_plugin_manager
from engine.sign import note
from engine.testkit import ProjectBuilder
from plugins.filekeys.store import FileKeyStore

PASSPHRASE = "correct horse battery staple"
T0 = datetime(2026, 6, 1, 8, 0, tzinfo=UTC)


class Clock:
    """A clock the test moves by hand."""

    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock(T0)


@pytest.fixture
def store(tmp_path: Path, clock: Clock) -> FileKeyStore:
    return FileKeyStore(tmp_path / "keys", passphrase=PASSPHRASE, clock=clock)


@pytest.fixture
def keys_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("CONVERGE_KEY_PASSPHRASE", PASSPHRASE)
    monkeypatch.delenv("CONVERGE_KEYS", raising=False)
    return tmp_path / "keys"


def converge(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    try:
        code = main(list(argv))
    except SystemExit as exit_:
        code = int(exit_.code or 0)
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err
    return code, out, err


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


# --- the command ------------------------------------------------------------------------


def test_generate_list_export_rotate_through_the_cli(keys_env, capsys):
    folder = str(keys_env)
    code, out, _ = converge(
        capsys, "keys", "generate", "qa-signing", "--valid-for", "2y", "--keys", folder
    )
    assert code == 0 and "qa-signing v1  current" in out
    code, out, _ = converge(capsys, "keys", "rotate", "qa-signing", "--keys", folder)
    assert code == 0 and "qa-signing v1  retired" in out and "qa-signing v2  current" in out

    code, out, _ = converge(capsys, "keys", "list", "--format", "json", "--keys", folder)
    v1, v2 = json.loads(out)
    assert (v1["version"], v2["version"]) == (1, 2)
    assert v1["not_after"] == v2["not_before"]  # handed over at one instant, no gap
    assert v2["not_after"] is not None  # the 2y period carries over to the new version

    code, out, _ = converge(capsys, "keys", "export-public", "qa-signing", "--keys", folder)
    verifiers = [note.parse_verifier_key(line) for line in out.splitlines()]
    assert [v.key_id.hex() for v in verifiers] == [v1["key_id"], v2["key_id"]]

    code, out, _ = converge(
        capsys, "keys", "export-public", "qa-signing", "--format", "pem", "--keys", folder
    )
    blocks = out.split("-----END PUBLIC KEY-----\n")[:-1]
    assert len(blocks) == 2
    assert load_pem_public_key((blocks[0] + "-----END PUBLIC KEY-----\n").encode())

    code, out, _ = converge(
        capsys, "keys", "export-public", "qa-signing", "--format", "json", "--keys", folder
    )
    assert [v["sha256"] for v in json.loads(out)] == [v1["sha256"], v2["sha256"]]


def test_the_key_folder_comes_from_the_environment(keys_env, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("CONVERGE_KEYS", str(tmp_path / "elsewhere"))
    assert converge(capsys, "keys", "generate", "ops-signing")[0] == 0
    assert (tmp_path / "elsewhere" / "ops-signing.json").is_file()
    code, out, _ = converge(capsys, "keys", "list")
    assert code == 0 and "ops-signing v1  current  valid" in out and "until rotated" in out


def test_private_key_files_are_0600_and_encrypted(keys_env, capsys):
    old = os.umask(0)  # even with a permissive umask
    try:
        assert converge(capsys, "keys", "generate", "qa-signing", "--keys", str(keys_env))[0] == 0
    finally:
        os.umask(old)
    pem = keys_env / "qa-signing.v1.pem"
    assert mode(pem) == 0o600
    assert mode(keys_env) == 0o700
    data = pem.read_bytes()
    assert data.startswith(b"-----BEGIN ENCRYPTED PRIVATE KEY-----")
    with pytest.raises(TypeError):  # "password was not given but private key is encrypted"
        load_pem_private_key(data, password=None)
    with pytest.raises(ValueError):
        load_pem_private_key(data, password=b"wrong")
    assert load_pem_private_key(data, password=PASSPHRASE.encode())
    assert not [p for p in keys_env.iterdir() if p.name.endswith(".tmp")]


def test_a_wrong_passphrase_is_a_one_line_error(keys_env, monkeypatch, capsys):
    converge(capsys, "keys", "generate", "qa-signing", "--keys", str(keys_env))
    monkeypatch.setenv("CONVERGE_KEY_PASSPHRASE", "not it")
    code, _, err = converge(capsys, "keys", "rotate", "qa-signing", "--keys", str(keys_env))
    assert code == 2
    # the message is one line; the error console of main() wraps it at 80 columns in a pipe
    assert err.count("converge: error:") == 1
    assert "wrong passphrase" in " ".join(err.split())
    assert len(json.loads((keys_env / "qa-signing.json").read_text())["versions"]) == 1


def test_without_a_passphrase_and_a_terminal_it_says_how_to_give_one(keys_env, monkeypatch, capsys):
    monkeypatch.delenv("CONVERGE_KEY_PASSPHRASE")
    monkeypatch.setattr("sys.stdin.isatty", lambda: False)
    code, _, err = converge(capsys, "keys", "generate", "qa-signing", "--keys", str(keys_env))
    assert code == 2 and "CONVERGE_KEY_PASSPHRASE" in err
    assert not (keys_env / "qa-signing.json").exists()


def test_a_short_passphrase_seals_no_key(keys_env, monkeypatch, capsys):
    monkeypatch.setenv("CONVERGE_KEY_PASSPHRASE", "short")
    code, _, err = converge(capsys, "keys", "generate", "qa-signing", "--keys", str(keys_env))
    assert code == 2 and "shorter than 16" in err


def test_on_a_terminal_the_passphrase_is_asked_twice_for_a_new_key(tmp_path, monkeypatch):
    monkeypatch.delenv("CONVERGE_KEY_PASSPHRASE", raising=False)
    monkeypatch.setattr("sys.stdin.isatty", lambda: True)
    answers = iter([PASSPHRASE, PASSPHRASE + "!"])
    monkeypatch.setattr("getpass.getpass", lambda prompt: next(answers))
    with pytest.raises(KeyStoreError, match="passphrases differ"):
        FileKeyStore(tmp_path / "keys").generate("qa-signing")
    answers = iter([PASSPHRASE, PASSPHRASE])
    assert FileKeyStore(tmp_path / "keys").generate("qa-signing").version == 1


def test_listing_and_exporting_need_no_passphrase(keys_env, monkeypatch, capsys):
    converge(capsys, "keys", "generate", "qa-signing", "--keys", str(keys_env))
    monkeypatch.delenv("CONVERGE_KEY_PASSPHRASE")
    assert converge(capsys, "keys", "list", "--keys", str(keys_env))[0] == 0
    assert converge(capsys, "keys", "export-public", "qa-signing", "--keys", str(keys_env))[0] == 0


@pytest.mark.parametrize(
    "argv, message",
    [
        (["generate", "QA_signing"], "must be a kebab-case id"),
        (["rotate", "missing"], "no key missing in"),
        (["export-public", "missing"], "converge keys generate missing"),
    ],
)
def test_bad_names_are_errors(keys_env, capsys, argv, message):
    code, _, err = converge(capsys, "keys", *argv, "--keys", str(keys_env))
    assert code == 2 and message in " ".join(err.split())


def test_a_zero_validity_is_a_usage_error(keys_env, capsys):
    code, _, err = converge(capsys, "keys", "generate", "k", "--valid-for", "0s")
    assert code == 2 and "longer than 0" in err


# --- the store --------------------------------------------------------------------------


def test_generating_an_existing_key_is_refused(store):
    store.generate("qa-signing")
    with pytest.raises(KeyStoreError, match="rotate it instead"):
        store.generate("qa-signing")


def test_a_group_readable_private_key_is_refused(tmp_path, store):
    store.generate("qa-signing")
    pem = tmp_path / "keys" / "qa-signing.v1.pem"
    pem.chmod(0o640)
    fresh = FileKeyStore(tmp_path / "keys", passphrase=PASSPHRASE)  # nothing unlocked yet
    with pytest.raises(KeyStoreError, match="chmod 600"):
        fresh.signer("qa-signing", T0)


def test_a_private_key_that_does_not_match_its_metadata_is_refused(tmp_path, store):
    store.generate("qa-signing")
    store.generate("other")
    keys = tmp_path / "keys"
    (keys / "qa-signing.v1.pem").write_bytes((keys / "other.v1.pem").read_bytes())
    fresh = FileKeyStore(keys, passphrase=PASSPHRASE)
    with pytest.raises(KeyStoreError, match="does not hold the public key"):
        fresh.signer("qa-signing", T0)


def test_rotation_keeps_old_signatures_valid_and_rejects_the_retired_key_after_its_end(
    store, clock
):
    v1 = store.generate("qa-signing", timedelta(days=365))
    early = T0 + timedelta(hours=1)
    old_key = store.signer("qa-signing", early)
    old_signature = old_key.sign(b"batch 1")

    clock.now = T0 + timedelta(days=30)
    v2 = store.rotate("qa-signing")
    retired, current = store.versions("qa-signing")
    assert retired.public_key == v1.public_key and retired.not_after == clock.now
    assert current == v2 and v2.not_before == clock.now
    assert v2.not_after == clock.now + timedelta(days=365)

    verify = store.verifier("qa-signing")
    verify(b"batch 1", old_signature, early)  # inside v1's validity: still good
    late = clock.now + timedelta(minutes=1)
    with pytest.raises(SignatureRejected, match="outside its validity"):
        verify(b"batch 2", old_key.sign(b"batch 2"), late)  # a retired (leaked?) key, now
    with pytest.raises(SignatureRejected, match="outside its validity"):
        verify(b"batch 0", old_key.sign(b"batch 0"), T0 - timedelta(seconds=1))
    with pytest.raises(SignatureRejected, match="no version"):
        verify(b"batch 1", old_signature[:-1] + bytes([old_signature[-1] ^ 1]), early)

    new_key = store.signer("qa-signing", late)
    assert new_key.public_key().public_bytes_raw() == v2.public_key
    verify(b"batch 2", new_key.sign(b"batch 2"), late)


def test_an_expired_key_signs_nothing(store):
    store.generate("qa-signing", timedelta(days=30))
    with pytest.raises(KeyStoreError, match="no version valid at"):
        store.signer("qa-signing", T0 + timedelta(days=30))  # the end is exclusive
    with pytest.raises(KeyStoreError, match="no time zone"):
        store.signer("qa-signing", datetime(2026, 6, 2))


def test_rotating_an_expired_key_keeps_its_end(store, clock):
    store.generate("qa-signing", timedelta(days=30))
    clock.now = T0 + timedelta(days=40)
    events: list[KeyEvent] = []
    store.subscribe(events.append)
    store.rotate("qa-signing")
    old, _ = store.versions("qa-signing")
    assert old.not_after == T0 + timedelta(days=30)
    assert [e.kind for e in events] == ["rotated"]  # nothing newly retired


def test_key_events_are_given_to_listeners(store, clock):
    events: list[KeyEvent] = []
    store.subscribe(events.append)
    v1 = store.generate("qa-signing")
    clock.now = T0 + timedelta(days=1)
    v2 = store.rotate("qa-signing")
    assert [(e.kind, e.version, e.key_id, e.at) for e in events] == [
        ("generated", 1, v1.key_id, T0),
        ("retired", 1, v1.key_id, clock.now),
        ("rotated", 2, v2.key_id, clock.now),
    ]
    assert events[0].as_dict()["sha256"] == v1.sha256
    assert store.events.history == events


def test_the_signed_note_verifier_key_round_trips(store):
    version = store.generate("qa-signing")
    verifier = note.parse_verifier_key(version.verifier_key)
    assert (verifier.name, verifier.key_id.hex()) == ("qa-signing", version.key_id)
    signed = note.sign_note("batch root\n", "qa-signing", store.signer("qa-signing", T0))
    assert note.verify_note(signed, [version.verifier_key]) == "batch root\n"
    assert len(version.sha256) == 64 and version.fingerprint.startswith(version.key_id)


def test_the_store_comes_from_the_key_store_hook(tmp_path):
    pm = make_plugin_manager()
    store = open_key_store(pm, {"kind": "file", "path": tmp_path / "keys", "passphrase": "p"})
    assert isinstance(store, FileKeyStore) and isinstance(store, KeyStore)
    assert store.names() == []
    with pytest.raises(PluginError, match="kind 'hsm'"):
        open_key_store(pm, {"kind": "hsm"})


# --- the compile check ------------------------------------------------------------------

SITE = """
    site: test-plant
    timezone: Europe/Zurich
    devices:
      - id: reactor-1
        class: reactor
        protocol: modbus
        endpoint: {host: 127.0.0.1}
        points:
          - {name: TT1_PV, signal: temperature, address: {table: holding, register: 0, type: int16}}
    """

POLICY = """
    policy: gmp-data
    title: GMP data
    owner: quality-assurance
    applies:
      devices: {class: reactor}
      points: {signal: temperature}
    capture:
      every: 10s
    signing:
      required: true
      keys: [qa-signing, lab-key]
    """


def test_a_policy_naming_a_key_no_store_holds_is_an_error_at_the_name(
    converge_project: ProjectBuilder, store
):
    store.generate("qa-signing")
    outcome = converge_project.write(
        {"policies/gmp.yaml": POLICY, "sites/test/site.yaml": SITE}
    ).compile()
    outcome.assert_success()
    [finding] = check_signing_keys(outcome.compilation.project, store)
    assert (finding.location.path, finding.location.line, finding.location.col) == (
        "policies/gmp.yaml",
        11,
        22,
    )
    assert finding.code == "signing-key-unknown" and finding.severity.value == "error"
    assert "'lab-key'" in finding.message and "gmp-data" in finding.message
    store.generate("lab-key")
    assert check_signing_keys(outcome.compilation.project, store) == []


def test_check_with_a_key_folder_names_each_unknown_key_at_its_place(keys_env, capsys, monkeypatch):
    monkeypatch.chdir(Path(__file__).resolve().parent.parent)
    converge(capsys, "keys", "generate", "site-integrity", "--keys", str(keys_env))
    check = (
        "check",
        "-p",
        "policies/gmp",
        "-s",
        "examples/sites/plant-basel",
        "--keys",
        str(keys_env),
    )
    code, out, _ = converge(capsys, *check)
    assert code == 1
    assert (
        "policies/gmp/critical-process-data.yaml:53:10: error[signing-key-unknown]: "
        "signing key 'qa-signing' of policy gmp-critical-process-data is in no key store"
        " (held: site-integrity); converge keys generate qa-signing"
    ) in out.splitlines()
    converge(capsys, "keys", "generate", "qa-signing", "--keys", str(keys_env))
    code, out, _ = converge(capsys, *check)
    assert code == 0, out


def test_check_without_a_key_folder_does_not_check_keys(capsys, monkeypatch):
    monkeypatch.delenv("CONVERGE_KEYS", raising=False)
    monkeypatch.chdir(Path(__file__).resolve().parent.parent)
    code, out, _ = converge(
        capsys,
        "check",
        "-p",
        "policies",
        "-s",
        "examples/sites/plant-basel",
        "examples/sites/water-works",
    )
    assert code == 0, out
    assert "key store" not in out
