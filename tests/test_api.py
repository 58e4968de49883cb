"""The read API for real: a uvicorn server on loopback, an HTTP client, plain HTTP and TLS
with a throwaway CA, on SQLite and PostgreSQL. Every request is a guard decision in the
audit log, named in the answer; nothing is read that should not be."""

from __future__ import annotations

import csv
import hashlib
import io
import json
import re
import secrets
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
import sqlalchemy as sa
from evidence_kit import T0, fill
from mosquitto import free_port
from waiting import wait_until

from engine.api.app import make_app
from engine.api.auth import Principals
from engine.api.metrics import ApiMetrics
from engine.api.openapi import KEPT, render
from engine.api.server import Tls, bind, make_server
from engine.api.service import Service
from engine.api.tokens import TokenFile, tokens_path
from engine.cli import main
from engine.errors import ConvergeError
from engine.keys import verify_signature
from engine.plugin_manager import make_plugin_manager
from engine.sign import note
from engine.sign.batch import Statement
from engine.sign.leaf import instant
from engine.sign.merkle import leaf_hash, verify_inclusion
from engine.store import auditlog
from engine.store.store import Store
from engine.verify.trust import instant as stored_instant

REPO = Path(__file__).resolve().parents[1]
PRINCIPALS = REPO / "examples" / "sites" / "plant-basel" / "principals.yaml"
DOCS_ACCESS = REPO / "docs" / "access.md"
POINT = "reactor-1-plc/TT101_PV"
RECORDED = f"/v1/points/{POINT}/recorded"
SECONDS = 70


# --- a server on loopback ----------------------------------------------------------------


@dataclass
class Served:
    url: str
    target: str
    principals: Path
    tokens: dict[str, str]
    metrics: ApiMetrics | None = None

    def get(self, path: str, who: str | None = "alice@example.com", **kwargs) -> httpx.Response:
        headers = kwargs.pop("headers", {})
        if who is not None:
            headers["Authorization"] = f"Bearer {self.tokens[who]}"
        return httpx.get(self.url + path, headers=headers, timeout=60, **kwargs)

    def entry(self, decision: str) -> dict:
        """The access.decision audit entry of ``decision``."""
        with Store.open_existing(self.target) as store, store.reading() as conn:
            found = [
                {"actor": e.actor, "payload": e.payload}
                for e in auditlog.entries(conn, ["access.decision"])
                if e.payload["decision"] == decision
            ]
        assert len(found) == 1, f"{len(found)} entries for decision {decision}"
        return found[0]

    def decisions(self) -> int:
        """How many access.decision entries the log holds."""
        with Store.open_existing(self.target) as store, store.reading() as conn:
            return sum(1 for _ in auditlog.entries(conn, ["access.decision"]))

    def unauthenticated(self, status: str, credential: str) -> float:
        """Requests the server counted as refused before the guard."""
        assert self.metrics is not None
        sample = self.metrics.registry.get_sample_value(
            "converge_api_unauthenticated_total", {"status": status, "credential": credential}
        )
        return sample or 0.0


@contextmanager
def serving(
    site, target: str, principals: Path, tls: Tls | None = None, metrics: ApiMetrics | None = None
) -> Iterator[str]:
    """A real uvicorn server for ``target`` on a free loopback port, in a thread."""
    service = Service(
        Store.open_existing(target),
        Principals(make_plugin_manager(), principals),
        site.trust(),
        metrics or ApiMetrics(),
    )
    server = make_server(make_app(service), tls)
    sock = bind("127.0.0.1", 0)
    port = sock.getsockname()[1]
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        wait_until(lambda: server.started, "the server to start")
        yield f"{'https' if tls else 'http'}://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(30)
        service.store.close()
        sock.close()


def principals_copy(folder: Path, extra: str = "") -> Path:
    path = folder / "principals.yaml"
    path.write_text(PRINCIPALS.read_text() + extra, encoding="utf-8")
    return path


def mint(principals: Path, *who: str) -> dict[str, str]:
    tokens = TokenFile(tokens_path(principals))
    now = datetime.now(UTC)
    return {w: tokens.mint(w, timedelta(days=1), now).text for w in who}


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def store_target(request, tmp_path_factory, evidence_site) -> Iterator[str]:
    """A store of the plant's records, on SQLite or a fresh PostgreSQL database (one per
    module: the tests only add audit entries to it)."""
    folder = tmp_path_factory.mktemp("api-store")
    if request.param == "sqlite":
        target = str(folder / "evidence.db")
        fill(evidence_site, target, folder, seconds=SECONDS).close()
        yield target
        return
    url = request.getfixturevalue("postgres_url")
    name = f"converge_t_{secrets.token_hex(8)}"
    admin = sa.create_engine(url, isolation_level="AUTOCOMMIT", poolclass=sa.NullPool)
    with admin.connect() as connection:
        connection.execute(sa.text(f'CREATE DATABASE "{name}"'))
    target = sa.make_url(url).set(database=name).render_as_string(hide_password=False)
    try:
        fill(evidence_site, target, folder, seconds=SECONDS).close()
        yield target
    finally:
        with admin.connect() as connection:
            connection.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@pytest.fixture(scope="module")
def api(store_target, evidence_site, tmp_path_factory) -> Iterator[Served]:
    principals = principals_copy(tmp_path_factory.mktemp("api-principals"))
    tokens = mint(principals, "alice@example.com", "bob@contractor.example", "chen@example.com")
    metrics = ApiMetrics()
    with serving(evidence_site, store_target, principals, metrics=metrics) as url:
        yield Served(url, store_target, principals, tokens, metrics)


def refusal(response: httpx.Response, status: int) -> dict:
    """The body of a refusal: its status, and the decision in body and header alike; no
    record in it."""
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"decision", "status", "error", "message", "points"}
    assert body["decision"] == response.headers["X-Converge-Decision"]
    return body


def unauthenticated(response: httpx.Response, status: int = 401) -> dict:
    """The body of a refusal before the guard: no decision, in body or header; no points."""
    assert response.status_code == status, response.text
    body = response.json()
    assert body["decision"] is None and body["points"] == [], body
    assert "X-Converge-Decision" not in response.headers
    return body


# --- reading ---------------------------------------------------------------------------


def test_an_allowed_read_streams_what_converge_query_writes(api, evidence_site, capsys):
    start, end = instant(T0), instant(T0 + timedelta(seconds=SECONDS))
    response = api.get(f"{RECORDED}?format=csv&start={start}&end={end}")
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/csv")
    code = main(
        [
            "query",
            POINT,
            "--db",
            api.target,
            "--principals",
            str(api.principals),
            "--as",
            "alice@example.com",
            "--from",
            start,
            "--to",
            end,
            "--format",
            "csv",
            "--keys",
            str(evidence_site.keys_dir),
        ]
    )
    assert code == 0
    assert response.text == capsys.readouterr().out
    rows = list(csv.DictReader(io.StringIO(response.text)))
    assert len(rows) == SECONDS and {r["batch_verified"] for r in rows} == {"true"}
    assert {r["type"] for r in rows} == {"reading", "gap"}  # gap records in line
    entry = api.entry(response.headers["X-Converge-Decision"])
    assert entry["payload"]["outcome"] == "allow"
    assert entry["payload"]["from"] == start and entry["payload"]["to"] == end
    assert entry["actor"]["id"] == "alice@example.com" and entry["actor"]["roles"] == ["qa"]
    assert entry["payload"]["via"]["api"] == f"GET {RECORDED}"
    assert entry["payload"]["via"]["credential"].startswith("token ")


def test_json_is_the_default_and_csv_is_negotiated(api):
    start = instant(T0)
    answer = api.get(f"{RECORDED}?start={start}")
    assert answer.headers["content-type"] == "application/json"
    body = answer.json()
    assert body["decision"] == answer.headers["X-Converge-Decision"]
    assert len(body["items"]) == SECONDS and body["start"] == start
    assert body["items"][0]["batch_verified"] is True and body["items"][0]["position"] >= 0
    negotiated = api.get(f"{RECORDED}?start={start}", headers={"Accept": "text/csv"})
    assert negotiated.text.splitlines()[0].startswith("device,point,type,time,value")
    assert len(negotiated.text.splitlines()) == SECONDS + 1


def test_a_range_without_records_is_an_empty_answer(api):
    """With no batch in the range, the device's latest plan decides (docs/access.md)."""
    recent = api.get(f"{RECORDED}?start={instant(datetime.now(UTC) - timedelta(minutes=1))}")
    assert recent.json()["items"] == []
    old = api.get(f"{RECORDED}?start=2020-01-01&end=2020-01-02")
    assert old.status_code == 200 and old.json()["items"] == []
    assert api.entry(old.headers["X-Converge-Decision"])["payload"]["outcome"] == "allow"


def test_a_denied_read_is_403_with_the_reason_and_reads_nothing(api):
    answer = api.get(f"{RECORDED}?start={instant(T0)}", who="bob@contractor.example")
    body = refusal(answer, 403)
    assert "access.deny denies contractor" in body["message"]
    assert body["points"] == [
        {
            "device": "reactor-1-plc",
            "point": "TT101_PV",
            "allowed": False,
            "reason": body["points"][0]["reason"],
        }
    ]
    entry = api.entry(body["decision"])
    assert entry["payload"]["outcome"] == "deny"
    assert entry["actor"]["id"] == "bob@contractor.example"
    assert "value" not in answer.text and "collected_at" not in answer.text


def test_the_points_listed_are_those_the_guard_allows(api):
    alice = api.get("/v1/points").json()
    chen = api.get("/v1/points", who="chen@example.com").json()
    bob = api.get("/v1/points", who="bob@contractor.example").json()
    assert "reactor-1-plc/TT101_PV" in {f"{p['device']}/{p['point']}" for p in alice["points"]}
    assert all(p["plan"].startswith("sha256:") for p in alice["points"])
    assert {p["device"] for p in bob["points"]} <= {p["device"] for p in alice["points"]}
    assert "reactor-1-plc/TT101_PV" not in {f"{p['device']}/{p['point']}" for p in bob["points"]}
    for body in (alice, chen, bob):
        entry = api.entry(body["decision"])
        listed = {(p["device"], p["point"]) for p in body["points"]}
        allowed = {(p["device"], p["point"]) for p in entry["payload"]["points"] if p["allowed"]}
        assert listed == allowed
    only = api.get("/v1/points?device=reactor-1-plc").json()
    assert {p["device"] for p in only["points"]} == {"reactor-1-plc"}


def test_a_summary_counts_readings_and_gaps_per_interval(api):
    start, end = instant(T0), instant(T0 + timedelta(seconds=SECONDS))
    answer = api.get(f"/v1/points/{POINT}/summary?start={start}&end={end}&interval=10s")
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["decision"] == answer.headers["X-Converge-Decision"]
    assert len(body["items"]) == 7 and body["interval"] == "10s"
    records = api.get(f"{RECORDED}?start={start}&end={end}").json()["items"]
    gaps = sum(1 for r in records if r["type"] == "gap")
    assert sum(i["gaps"] for i in body["items"]) == gaps > 0
    assert sum(i["count"] for i in body["items"]) == SECONDS - gaps
    values = [r["value"] for r in records if r["type"] == "reading"][: body["items"][0]["count"]]
    first = body["items"][0]
    assert first["min"] == min(values) and first["max"] == max(values)
    assert first["mean"] == pytest.approx(sum(values) / len(values))
    assert {i["unverified"] for i in body["items"]} == {0}


# --- the proof of one record -----------------------------------------------------------


def test_a_record_checks_out_without_trusting_the_server(api, evidence_site):
    some = api.get(f"{RECORDED}?start={instant(T0)}").json()["items"][3]
    answer = api.get(f"/v1/records/{some['batch']}/{some['position']}/proof")
    assert answer.status_code == 200, answer.text
    proof = answer.json()
    assert proof["decision"] == answer.headers["X-Converge-Decision"]
    # the record is the one read, and its leaf hashes into the signed root
    leaf = proof["record"]["leaf"].encode()
    assert json.loads(leaf)["point"] == "TT101_PV" and json.loads(leaf)["salt"]
    statement_bytes = proof["batch"]["statement"].encode()
    statement = Statement.parse(statement_bytes)
    inclusion = proof["inclusion"]
    verify_inclusion(
        leaf_hash(leaf),
        inclusion["leaf_index"],
        statement.count,
        [bytes.fromhex(h) for h in inclusion["hashes"]],
        statement.root,
    )
    # every required key signed the statement, with a version valid when it was stored
    log = proof["log"]
    entry = json.loads(log["entry"])
    assert entry["kind"] == "batch.stored" and entry["payload"]["root"] == statement.root.hex()
    trust = evidence_site.trust()
    signatures = {s["key"]: bytes.fromhex(s["signature"]) for s in proof["batch"]["signatures"]}
    for key in proof["batch"]["required_keys"]:
        verify_signature(
            trust.keys[key], statement_bytes, signatures[key], stored_instant(entry["time"])
        )
    # the batch's audit entry is in the log the audit key's checkpoint signs
    origin = log["checkpoint"].splitlines()[0]
    verifiers = [note.verifier_key(origin, v.key) for v in trust.keys["audit-log"]]
    checkpoint = note.open_checkpoint(log["checkpoint"], verifiers, origin)
    assert checkpoint.size == log["tree_size"]
    verify_inclusion(
        leaf_hash(log["entry"].encode()),
        log["seq"],
        checkpoint.size,
        [bytes.fromhex(h) for h in log["hashes"]],
        checkpoint.root_hash,
    )
    assert api.entry(proof["decision"])["payload"]["points"][0]["point"] == "TT101_PV"


def test_the_hand_check_of_docs_access_md_accepts_a_proof_and_rejects_a_changed_one(
    api, evidence_site
):
    [code] = [
        body
        for lang, body in re.findall(r"^```(\w*)\n(.*?)^```", DOCS_ACCESS.read_text(), re.M | re.S)
        if lang == "python" and "def check_record" in body
    ]
    namespace: dict = {}
    exec(compile(code, "docs/access.md", "exec"), namespace)
    check = namespace["check_record"]
    keys = {
        name: [v.public_key for v in versions]
        for name, versions in evidence_site.trust().keys.items()
    }
    some = api.get(f"{RECORDED}?start={instant(T0)}").json()["items"][5]
    proof = api.get(f"/v1/records/{some['batch']}/{some['position']}/proof").json()
    assert check(proof, keys, "audit-log")["salt"]
    changed = json.loads(json.dumps(proof))
    changed["record"]["leaf"] = changed["record"]["leaf"].replace('"value":', '"value":1')
    with pytest.raises(ValueError, match="not in the signed batch"):
        check(changed, keys, "audit-log")
    forged = json.loads(json.dumps(proof))
    size = str(proof["log"]["tree_size"])
    forged["log"]["checkpoint"] = proof["log"]["checkpoint"].replace(f"\n{size}\n", "\n1\n", 1)
    with pytest.raises(ValueError, match="not signed by the audit key"):
        check(forged, keys, "audit-log")


def test_a_proof_is_refused_as_a_read_is(api):
    some = api.get(f"{RECORDED}?start={instant(T0)}").json()["items"][0]
    where = f"/v1/records/{some['batch']}/{some['position']}/proof"
    denied = refusal(api.get(where, who="bob@contractor.example"), 404)
    missing = refusal(api.get("/v1/records/999999/0/proof", who="bob@contractor.example"), 404)
    # the same answer: which device and point a batch holds is not the caller's to learn
    assert denied["message"] == (
        f"no record you may read is stored at batch {some['batch']} position {some['position']}"
    )
    assert missing["message"] == "no record you may read is stored at batch 999999 position 0"
    assert denied["points"] == missing["points"] == []
    assert "TT101" not in json.dumps(denied) and "leaf" not in json.dumps(denied)
    # the auditor still sees what was asked and why it was denied
    (asked,) = api.entry(denied["decision"])["payload"]["points"]
    assert (asked["point"], asked["allowed"]) == ("TT101_PV", False)
    assert "contractor" in json.dumps(asked["rules"])
    assert "a number" in refusal(api.get("/v1/records/abc/0/proof"), 400)["message"]
    assert "a number" in refusal(api.get("/v1/records/1/-1/proof"), 400)["message"]


# --- authentication --------------------------------------------------------------------


def test_no_token_a_wrong_one_or_an_unknown_one_is_401_counted_and_no_audit_entry(api):
    """Anyone who reaches the port can send these: counted by the server, not in the log."""
    entries = api.decisions()
    for headers, said, credential in (
        ({}, "no credentials", "none"),
        ({"Authorization": "Basic YWxpY2U6c2VjcmV0"}, "not 'Bearer TOKEN'", "malformed"),
        ({"Authorization": "Bearer nonsense"}, "not one this server issued", "token"),
        (
            {"Authorization": "Bearer " + wrong_secret(api.tokens["alice@example.com"])},
            "wrong secret",
            "token",
        ),
    ):
        counted = api.unauthenticated("401", credential)
        long_name = "/v1/points/" + "%1B[2K" * 300 + "/TT101_PV/recorded"
        for path in (RECORDED, "/v1/points", long_name, "/v1/records/1/0/proof"):
            answer = api.get(path, who=None, headers=headers)
            assert said in unauthenticated(answer)["message"]
            assert answer.headers["WWW-Authenticate"].startswith("Bearer")
            assert "value" not in answer.text
        assert api.unauthenticated("401", credential) == counted + 4
    assert api.decisions() == entries


def test_an_authenticated_refusal_is_an_entry_by_its_principal_quoting_what_was_sent(api):
    """A token holder's refusal is a decision on a principal: logged, with the principal as
    its actor; what the request carried is quoted and bounded, never raw."""
    fake = "\x1b[1A\x1b[2K\x1b[32mverified\x1b[0m"
    answer = api.get("/v1/points", who="bob@contractor.example", params={fake: "1"})
    body = refusal(answer, 400)
    assert f"unknown query parameter {fake!r}" in body["message"], body["message"]
    entry = api.entry(body["decision"])
    assert entry["actor"]["id"] == "bob@contractor.example"
    assert entry["payload"]["outcome"] == "deny"
    assert "\x1b" not in entry["payload"]["refusal"] and repr(fake) in entry["payload"]["refusal"]
    device = "d" * 5000
    body = refusal(api.get(f"/v1/points/{device}/TT101_PV/recorded"), 400)
    entry = api.entry(body["decision"])
    assert entry["actor"]["id"] == "alice@example.com"
    assert [p["device"] for p in entry["payload"]["points"]] == ["d" * 200 + "…"]
    assert len(entry["payload"]["via"]["api"]) <= len("GET ") + 465
    assert len(json.dumps(entry)) < 3000


def wrong_secret(token: str) -> str:
    head, _, secret = token.rpartition(".")
    return f"{head}.{secret[::-1]}"


def test_an_expired_token_a_revoked_one_and_a_deleted_principal_are_401(
    store_target, evidence_site, tmp_path, capsys
):
    principals = principals_copy(tmp_path)
    tokens = TokenFile(tokens_path(principals))
    expired = tokens.mint(
        "alice@example.com", timedelta(hours=1), datetime.now(UTC) - timedelta(hours=2)
    )
    good = mint(principals, "alice@example.com", "chen@example.com")
    with serving(evidence_site, store_target, principals) as url:
        served = Served(url, store_target, principals, {**good, "expired": expired.text})
        entries = served.decisions()
        body = unauthenticated(served.get(RECORDED, who="expired"))
        assert f"token {expired.stored.id} expired at" in body["message"]
        assert served.get("/v1/points", who="chen@example.com").status_code == 200
        # revoked: refused from the next request on
        chen = good["chen@example.com"].split(".")[1]
        assert main(["principals", "revoke", chen, "--principals", str(principals)]) == 0
        assert f"revoked token {chen}" in capsys.readouterr().out
        body = unauthenticated(served.get("/v1/points", who="chen@example.com"))
        assert "not one this server issued" in body["message"]
        # deleted from the principals file: its token is refused, the entry names it
        assert served.get("/v1/points").status_code == 200
        principals.write_text(
            PRINCIPALS.read_text().replace(
                "  - id: alice@example.com\n", "  - id: alicia@example.com\n"
            ),
            encoding="utf-8",
        )
        body = unauthenticated(served.get("/v1/points"))
        assert "alice@example.com is no longer in the principals file" in body["message"]
        # a principals file that no longer loads refuses everyone, and says so
        principals.write_text("principals: [", encoding="utf-8")
        body = unauthenticated(served.get("/v1/points", who="chen@example.com"), 503)
        assert "does not load" in body["message"]
        # the 200s were entries; none of the refusals before the guard was
        assert served.decisions() == entries + 2


def test_two_commands_at_once_neither_lose_a_token_nor_bring_a_revoked_one_back(tmp_path):
    """Each opened the tokens file before the other changed it: each change is made to the
    file as it is then, under its lock."""
    principals = principals_copy(tmp_path)
    day, now = timedelta(days=1), datetime.now(UTC)
    kept = TokenFile(tokens_path(principals)).mint("chen@example.com", day, now).stored.id
    minting, revoking = TokenFile(tokens_path(principals)), TokenFile(tokens_path(principals))
    revoking.revoke(kept)
    minted = minting.mint("alice@example.com", day, now)  # it read the file before the revoke
    other = revoking.mint("chen@example.com", day, now)  # it read it before that mint
    on_disk = TokenFile(tokens_path(principals))
    assert set(on_disk.tokens) == {minted.stored.id, other.stored.id}
    assert on_disk.check(minted.text, now).problem is None
    with pytest.raises(ConvergeError, match=f"keeps no token {kept}"):
        minting.revoke(kept)


def test_minting_keeps_only_a_salted_hash_beside_the_principals_file(tmp_path, capsys):
    principals = principals_copy(tmp_path)
    code = main(
        [
            "principals",
            "token",
            "chen@example.com",
            "--principals",
            str(principals),
            "--valid-for",
            "30d",
        ]
    )
    out = capsys.readouterr().out.splitlines()
    assert code == 0
    token = out[-1]
    assert token.startswith("cvg1.") and " " not in token
    kept = tokens_path(principals)
    assert kept == tmp_path / "principals.tokens.json"
    assert kept.stat().st_mode & 0o777 == 0o600
    text = kept.read_text()
    assert token.split(".")[2] not in text and token not in text
    (stored,) = json.loads(text)["tokens"]
    assert stored["principal"] == "chen@example.com" and len(bytes.fromhex(stored["salt"])) == 16
    assert stored["kdf"]["name"] == "scrypt"
    assert stored["expires"] > instant(datetime.now(UTC) + timedelta(days=29))
    assert (
        main(["principals", "token", "mallory@example.com", "--principals", str(principals)]) == 2
    )
    assert "not in the principals file" in capsys.readouterr().err


# --- bad requests ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("query", "said"),
    [
        ("start=2026-06-02&end=2026-06-01", "must be after start"),
        ("start=yesterday", "is not a time"),
        ("end=2026-06-01T12:00:00", "has no time zone"),
        ("start=2016-01-01&end=2026-01-01", "longer than 366 days"),
        ("format=xml", "json or csv"),
        ("from=2026-06-01", "unknown query parameter 'from'"),
        ("start=2026-06-01&start=2026-06-02", "given more than once"),
    ],
)
def test_a_malformed_range_is_400_with_a_clear_message(api, query, said):
    body = refusal(api.get(f"{RECORDED}?{query}"), 400)
    assert said in body["message"]
    entry = api.entry(body["decision"])
    assert entry["payload"]["outcome"] == "deny" and said in entry["payload"]["refusal"]


@pytest.mark.parametrize(
    ("interval", "said"),
    [("500ms", "shorter than 1 s"), ("1s", "more than 10,000 intervals"), ("soon", "interval")],
)
def test_a_bad_interval_is_400(api, interval, said):
    query = f"start={instant(T0)}&end={instant(T0 + timedelta(days=1))}&interval={interval}"
    body = refusal(api.get(f"/v1/points/{POINT}/summary?{query}"), 400)
    assert said in body["message"]


@pytest.mark.parametrize(
    "path",
    [
        "/v1/points/..%2F..%2Fetc/passwd/recorded",
        "/v1/points/reactor-1-plc/..%2F..%2FTT101_PV/recorded",
        "/v1/points/%2E%2E/TT101_PV/recorded",
        "/v1/points/reactor-1-plc/TT101_PV%00/recorded",
        "/v1/points/" + "x" * 300 + "/TT101_PV/recorded",
    ],
)
def test_names_that_try_to_traverse_read_nothing(api, path):
    answer = httpx.get(
        api.url + path,
        headers={"Authorization": f"Bearer {api.tokens['alice@example.com']}"},
        timeout=60,
    )
    assert answer.status_code in (400, 403, 404), answer.text
    assert "collected_at" not in answer.text and "root" not in answer.text
    if answer.status_code != 404:  # 404: no endpoint has that path; no decision to name
        refusal(answer, answer.status_code)


def test_a_very_long_query_string_is_refused_and_the_server_goes_on(api):
    body = refusal(api.get(f"{RECORDED}?start={'9' * 3000}"), 414)
    assert "longer than 2048 bytes" in body["message"]
    token = api.tokens["alice@example.com"]
    long = raw_get(api.url, f"{RECORDED}?start={'9' * 10_000}", token)  # past what httpx sends
    assert long.startswith(b"HTTP/1.1 414 ") and b"longer than 2048 bytes" in long
    # a head past h11's 16 KiB is refused before it is parsed whenever it arrives in parts
    # (400, no decision), else by the guard (414): refused either way, and the server goes on
    huge = raw_get(api.url, f"{RECORDED}?start={'9' * 100_000}", token)
    assert huge.startswith((b"HTTP/1.1 400 ", b"HTTP/1.1 414 ")), huge[:100]
    assert api.get("/v1/points").status_code == 200


def raw_get(url: str, target: str, token: str) -> bytes:
    """What the server answers a GET of ``target`` sent as it is (no client checks it)."""
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=60) as sock:
        head = f"GET {target} HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {token}\r\n"
        sock.sendall(f"{head}Connection: close\r\n\r\n".encode())
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
        return answer


def test_the_openapi_document_is_served_and_kept_in_docs(api):
    served = api.get("/openapi.json", who=None).json()
    assert json.loads(render()) == served
    assert KEPT.read_text(encoding="utf-8") == render(), (
        "docs/openapi.json is stale: run python -m engine.api.openapi"
    )
    assert set(served["paths"]) == {
        "/v1/points",
        "/v1/points/{device}/{point}/recorded",
        "/v1/points/{device}/{point}/summary",
        "/v1/records/{batch}/{position}/proof",
    }


# --- TLS, client certificates ----------------------------------------------------------


@dataclass
class Pki:
    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    client_fingerprint: str
    stranger_cert: Path
    stranger_key: Path
    outsider_cert: Path
    outsider_key: Path


def make_pki(folder: Path) -> Pki:
    """A throwaway CA, a server certificate for 127.0.0.1, and client certificates: one the
    principals file lists, one it does not, one from another CA."""
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = datetime.now(UTC)

    def name(text: str) -> x509.Name:
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, text)])

    def write(stem: str, cert: x509.Certificate, key: ec.EllipticCurvePrivateKey):
        (folder / f"{stem}.crt").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        (folder / f"{stem}.key").write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
        return folder / f"{stem}.crt", folder / f"{stem}.key"

    def authority(label: str):
        key = ec.generate_private_key(ec.SECP256R1())
        cert = (
            x509.CertificateBuilder()
            .subject_name(name(label))
            .issuer_name(name(label))
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - timedelta(minutes=5))
            .not_valid_after(now + timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256())
        )
        return cert, key

    def issued(ca, label: str, usage, san=None):
        ca_cert, ca_key = ca
        key = ec.generate_private_key(ec.SECP256R1())
        builder = (
            x509.CertificateBuilder()
            .subject_name(name(label))
            .issuer_name(ca_cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - timedelta(minutes=5))
            .not_valid_after(now + timedelta(days=1))
            .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        )
        if san is not None:
            builder = builder.add_extension(x509.SubjectAlternativeName(san), critical=False)
        return builder.sign(ca_key, hashes.SHA256()), key

    ca = authority("converge test CA")
    other = authority("someone else's CA")
    write("ca", *ca)
    server = issued(
        ca,
        "converge serve",
        ExtendedKeyUsageOID.SERVER_AUTH,
        [x509.IPAddress(ipaddress.ip_address("127.0.0.1"))],
    )
    client = issued(ca, "historian-sync", ExtendedKeyUsageOID.CLIENT_AUTH)
    stranger = issued(ca, "stranger", ExtendedKeyUsageOID.CLIENT_AUTH)
    outsider = issued(other, "outsider", ExtendedKeyUsageOID.CLIENT_AUTH)
    der = client[0].public_bytes(serialization.Encoding.DER)
    return Pki(
        folder / "ca.crt",
        *write("server", *server),
        *write("client", *client),
        "sha256:" + hashlib.sha256(der).hexdigest(),
        *write("stranger", *stranger),
        *write("outsider", *outsider),
    )


def tls_client(pki: Pki, cert: Path | None = None, key: Path | None = None) -> httpx.Client:
    context = ssl.create_default_context(cafile=str(pki.ca))
    if cert is not None:
        context.load_cert_chain(str(cert), str(key))
    return httpx.Client(verify=context, timeout=60)


def test_tls_with_tokens_and_client_certificates(store_target, evidence_site, tmp_path):
    pki = make_pki(tmp_path)
    principals = principals_copy(
        tmp_path,
        "  - id: lims-gateway\n    kind: service\n    roles: [qa]\n"
        f"    certificates: [{pki.client_fingerprint}]\n",
    )
    tokens = mint(principals, "alice@example.com")
    tls = Tls(pki.server_cert, pki.server_key, pki.ca)
    with serving(evidence_site, store_target, principals, tls) as url:
        served = Served(url, store_target, principals, tokens)
        path = f"{RECORDED}?start={instant(T0)}"
        with tls_client(pki, pki.client_cert, pki.client_key) as client:
            answer = client.get(url + path)
        assert answer.status_code == 200, answer.text
        assert len(answer.json()["items"]) == SECONDS
        entry = served.entry(answer.headers["X-Converge-Decision"])
        assert entry["actor"]["id"] == "lims-gateway"
        assert entry["payload"]["via"]["credential"] == f"certificate {pki.client_fingerprint}"
        with tls_client(pki) as client:  # a token over TLS, no client certificate
            headers = {"Authorization": f"Bearer {tokens['alice@example.com']}"}
            assert client.get(url + path, headers=headers).status_code == 200
            assert client.get(url + path).status_code == 401
        with tls_client(pki, pki.stranger_cert, pki.stranger_key) as client:
            body = unauthenticated(client.get(url + path))
        assert "no principal lists the client certificate sha256:" in body["message"]
        with (
            tls_client(pki, pki.outsider_cert, pki.outsider_key) as client,
            pytest.raises(httpx.HTTPError),
        ):
            client.get(url + path)  # the handshake refuses a certificate of another CA
        with pytest.raises(httpx.HTTPError):
            httpx.get(url.replace("https", "http") + path, timeout=30)


# --- the command -----------------------------------------------------------------------


def test_converge_serve_serves_until_it_is_stopped(store_target, evidence_site, tmp_path):
    """... and counts and logs the requests it refuses before the guard."""
    principals = principals_copy(tmp_path)
    tokens = mint(principals, "alice@example.com")
    metrics = free_port()
    converge = shutil.which("converge", path=str(Path(sys.executable).parent))
    process = subprocess.Popen(
        [
            converge or "converge",
            "serve",
            "--db",
            store_target,
            "--principals",
            str(principals),
            "--port",
            "0",
            "--keys",
            str(evidence_site.keys_dir),
            "--metrics",
            f"127.0.0.1:{metrics}",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        line = read_line(process)
        assert line.startswith("serving http://127.0.0.1:"), line
        url = line.split()[1].removesuffix("/v1/points")
        served = Served(url, store_target, principals, tokens)
        assert served.get(f"{RECORDED}?start={instant(T0)}").status_code == 200
        assert served.get("/v1/points", who=None).status_code == 401
        scraped = httpx.get(f"http://127.0.0.1:{metrics}/metrics", timeout=30).text
        counted = 'converge_api_unauthenticated_total{credential="none",status="401"} 1.0'
        assert counted in scraped, scraped
    finally:
        process.send_signal(signal.SIGTERM)
        _, err = process.communicate(timeout=60)
    assert process.returncode == 0, err
    assert "Traceback" not in err
    assert "engine.api.service: 401 'GET /v1/points' from 127.0.0.1:" in err, err


def read_line(process: subprocess.Popen) -> str:
    """The first line the process writes, waited for with a bound."""
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.append(process.stdout.readline()), daemon=True)
    reader.start()
    wait_until(lambda: lines or process.poll() is not None, "converge serve to say where")
    assert lines, process.stderr.read()
    return lines[0].strip()


def test_serve_refuses_half_a_tls_configuration(tmp_path, capsys):
    db = str(tmp_path / "none.db")
    assert main(["serve", "--db", db, "--tls-cert", str(tmp_path / "c.pem")]) == 2
    assert "--tls-cert and --tls-key go together" in capsys.readouterr().err
    assert main(["serve", "--db", db, "--client-ca", str(tmp_path / "ca.pem")]) == 2
    assert "--client-ca needs --tls-cert" in capsys.readouterr().err


def test_serve_trusting_no_key_is_refused_before_it_serves(store_target, tmp_path, capsys):
    """A key folder that holds no key would answer every read as unverified: the server says
    so and exits 2 before it opens the store or a port."""
    empty = tmp_path / "keys"
    empty.mkdir()
    asked = ["serve", "--db", store_target, "--principals", str(principals_copy(tmp_path))]
    assert main([*asked, "--port", "0", "--keys", str(empty)]) == 2
    said = capsys.readouterr()
    assert f"the key folder {empty} holds no key" in said.err and "serving" not in said.out


def test_a_plan_swapped_in_the_store_stops_every_read_of_its_device(evidence_site, tmp_path):
    """Someone who can write the database puts another plan's bytes (one granting more) under
    the digest the device's batches name: the API decides nothing on that device's data and
    says which plan, rather than deciding on the swapped plan or the device's latest."""
    target = str(tmp_path / "evidence.db")
    fill(evidence_site, target, tmp_path, seconds=SECONDS).close()
    device = POINT.partition("/")[0]
    (own,) = (p.digest for p in evidence_site.plans if p.device.id == device)
    other = next(p.digest for p in evidence_site.plans if p.device.id != device)
    tamper = sa.create_engine(f"sqlite:///{target}", poolclass=sa.NullPool)
    with tamper.begin() as conn:
        body = conn.execute(sa.text("SELECT body FROM plans WHERE digest = :d"), {"d": other})
        swap = "UPDATE plans SET body = :body WHERE digest = :digest"
        conn.execute(sa.text(swap), {"body": body.scalar_one(), "digest": own})
    principals = principals_copy(tmp_path)
    with serving(evidence_site, target, principals) as url:
        served = Served(url, target, principals, mint(principals, "alice@example.com"))
        answer = served.get(RECORDED)
    assert answer.status_code == 503, answer.text
    assert f"the plan {own} its batches name is not stored as its digest says" in answer.text
    assert "value" not in answer.text
