"""The access guard: default deny, deny overrides, the plan in force decides, every decision
an audit entry; `converge access check` and `converge query` as users call them."""

from __future__ import annotations

import csv
import gc
import io
import json
import os
from datetime import timedelta
from pathlib import Path

import pytest
from evidence_kit import T0, fill, verify

from engine.access.guard import Request, Target, decide
from engine.audit import Actor, os_user
from engine.cli import main
from engine.principals import Identity
from engine.sign.leaf import instant
from engine.store.store import Store
from engine.testkit import plan_of

REPO = Path(__file__).resolve().parents[1]
PRINCIPALS = REPO / "examples" / "sites" / "plant-basel" / "principals.yaml"


def plan(access: dict[str, list[str]], provenance: dict[str, list[dict[str, str]]] | None = None):
    return plan_of(
        {
            "device": {"id": "d"},
            "points": [
                {"name": "p", "address": {}, "access": access, "provenance": provenance or {}}
            ],
        }
    )


def identity(*roles: str, os_users: tuple[str, ...] = ()) -> Identity:
    return Identity("someone", "person", frozenset(roles), os_users=os_users)


def read(who: Identity | None, *plans, action="read"):
    request = Request("someone", who, os_user(), action, [Target("d", "p", list(plans))])
    return decide(request)


GMP = plan(
    {"read": ["qa", "process-engineering"], "export": ["auditor"], "deny": ["contractor"]},
    {
        "access.deny": [{"policy": "gmp", "at": "policies/gmp.yaml:58:9"}],
        "access.read": [{"policy": "gmp", "at": "policies/gmp.yaml:55:9"}],
    },
)


def test_a_grant_allows_and_names_its_policy():
    decision = read(identity("qa"), GMP)
    assert decision.outcome == "allow"
    (point,) = decision.points
    assert str(point.rules[0]).startswith("access.read grants qa")
    assert "gmp @ policies/gmp.yaml:55:9" in str(point.rules[0])


def test_deny_overrides_a_grant():
    decision = read(identity("qa", "contractor"), GMP)
    assert decision.outcome == "deny"
    assert "access.deny denies contractor" in decision.points[0].reason
    assert "policies/gmp.yaml:58:9" in decision.points[0].reason


def test_nothing_granted_is_denied_by_default():
    assert read(identity("hr-analytics"), GMP).outcome == "deny"
    reason = read(identity(), GMP).points[0].reason
    assert reason == f"no access.read grant to no role (default deny) (plan {GMP.digest[:19]}…)"
    assert read(identity("qa"), GMP, action="export").outcome == "deny"
    assert read(identity("auditor"), GMP, action="export").outcome == "allow"


def test_an_unknown_principal_and_a_wrong_account_are_denied_everything():
    unknown = read(None, GMP)
    assert unknown.outcome == "deny" and "unknown" in (unknown.refusal or "")
    elsewhere = read(identity("qa", os_users=("nobody-else",)), GMP)
    assert elsewhere.outcome == "deny" and "may not act as" in (elsewhere.refusal or "")


def test_every_plan_in_force_must_allow():
    """Data stored under the old plan stays as readable as that plan said; a range that spans
    a plan that denies is denied."""
    later = plan({"read": ["process-engineering"]})
    assert read(identity("qa"), GMP).outcome == "allow"
    assert read(identity("qa"), later).outcome == "deny"
    assert read(identity("qa"), GMP, later).outcome == "deny"
    assert read(identity("process-engineering"), GMP, later).outcome == "allow"


def test_no_plan_is_no_access():
    assert read(identity("qa")).outcome == "deny"


# --- the commands ------------------------------------------------------------------------


@pytest.fixture
def store(evidence_site, backend, tmp_path, monkeypatch) -> str:
    """A store of 70 s of the site's readings; its keys are the ones commands trust."""
    fill(evidence_site, backend, tmp_path, seconds=70).close()
    monkeypatch.setenv("CONVERGE_KEYS", str(evidence_site.keys_dir))
    return backend


@pytest.mark.parametrize("keys", ["missing", "empty"])
def test_a_query_trusting_no_key_is_refused_before_it_reads(store, tmp_path, capsys, keys):
    """A key folder that is not there, or holds no key, would show every batch as unverified:
    the query says so and exits 2 (as audit verify and report do); nothing is read, and no
    decision is logged."""
    folder = tmp_path / "no-keys"
    if keys == "empty":
        folder.mkdir()
    asked = query(store, "alice@example.com", "reactor-1-plc/TT101_PV", "--keys", str(folder))
    assert main(asked) == 2
    said = capsys.readouterr()
    assert f"the key folder {folder}" in said.err and not said.out
    assert entries(store, "access.decision") == []


def entries(target: str, kind: str) -> list[dict]:
    with Store.open_existing(target) as opened, opened.reading() as conn:
        from engine.store import auditlog

        return [{"actor": e.actor, "payload": e.payload} for e in auditlog.entries(conn, [kind])]


def query(target: str, who: str, ref: str, *extra: str) -> list[str]:
    return ["query", ref, "--db", target, "--principals", str(PRINCIPALS), "--as", who, *extra]


def test_query_reads_allowed_points_as_csv_with_their_batches(
    evidence_site, store, capsys, monkeypatch
):
    monkeypatch.setenv("CONVERGE_KEYS", str(evidence_site.keys_dir))
    code = main(query(store, "alice@example.com", "reactor-1-plc/TT101_PV", "--format", "csv"))
    out = capsys.readouterr()
    assert code == 0, out.err
    rows = list(csv.DictReader(io.StringIO(out.out)))
    assert len(rows) == 70 and {r["point"] for r in rows} == {"TT101_PV"}
    assert {r["batch_verified"] for r in rows} == {"true"}
    assert rows[0]["time"] == instant(T0)
    assert gc.isenabled()  # the command paused the garbage collector for its read alone
    (decided,) = entries(store, "access.decision")
    assert decided["payload"]["outcome"] == "allow"
    assert decided["actor"]["id"] == "alice@example.com" and decided["actor"]["roles"] == ["qa"]
    with Store.open_existing(store) as opened:
        report = verify(evidence_site, opened)
    assert report.ok, report.problems


def test_a_denied_query_reads_nothing_exits_3_and_is_in_the_log(store, capsys):
    code = main(query(store, "bob@contractor.example", "reactor-1-plc/TT101_PV", "--format", "csv"))
    out = capsys.readouterr()
    assert code == 3
    assert out.out.splitlines() == [
        ",".join(
            [
                "device",
                "point",
                "type",
                "time",
                "value",
                "quality",
                "reason",
                "detail",
                "collected_at",
                "scheduled_at",
                "source_at",
                "raw_code",
                "batch",
                "position",
                "batch_verified",
            ]
        )
    ]
    assert "access.deny denies contractor" in out.err and "decision " in out.err
    (decided,) = entries(store, "access.decision")
    assert decided["payload"]["outcome"] == "deny"
    assert decided["payload"]["points"][0]["rules"][0]["effect"] == "deny"


def test_an_unknown_principal_is_refused_and_logged(store, capsys):
    assert main(query(store, "mallory@example.com", "reactor-1-plc")) == 3
    assert "unknown to the principals" in capsys.readouterr().err
    (decided,) = entries(store, "access.decision")
    assert decided["payload"]["refusal"].startswith("principal mallory@example.com is unknown")


def test_a_device_query_serves_the_readable_points_and_refuses_the_rest(store, capsys):
    code = main(query(store, "chen@example.com", "reactor-1-plc", "--format", "json"))
    out = capsys.readouterr()
    rows = [json.loads(line) for line in out.out.splitlines()]
    (decided,) = entries(store, "access.decision")
    allowed = {p["point"] for p in decided["payload"]["points"] if p["allowed"]}
    assert {row["point"] for row in rows} == allowed
    assert code == (3 if len(allowed) < len(decided["payload"]["points"]) else 0)


def test_a_range_limits_the_records(store, capsys):
    start, end = (T0 + timedelta(seconds=10)).isoformat(), (T0 + timedelta(seconds=20)).isoformat()
    assert (
        main(
            query(
                store,
                "alice@example.com",
                "reactor-1-plc/TT101_PV",
                "--format",
                "json",
                "--from",
                start,
                "--to",
                end,
            )
        )
        == 0
    )
    times = [json.loads(line)["time"] for line in capsys.readouterr().out.splitlines()]
    assert len(times) == 10 and times[0] == instant(T0 + timedelta(seconds=10))
    assert (
        main(query(store, "alice@example.com", "reactor-1-plc", "--from", end, "--to", start)) == 2
    )


def test_access_check_says_why_and_writes_nothing(store, capsys):
    assert (
        main(
            [
                "access",
                "check",
                "alice@example.com",
                "read",
                "reactor-1-plc/TT101_PV",
                "--principals",
                str(PRINCIPALS),
                "--db",
                store,
            ]
        )
        == 0
    )
    assert "allowed: alice@example.com read reactor-1-plc/TT101_PV" in capsys.readouterr().out
    assert (
        main(
            [
                "access",
                "check",
                "bob@contractor.example",
                "read",
                "reactor-1-plc/TT101_PV",
                "--principals",
                str(PRINCIPALS),
                "--db",
                store,
            ]
        )
        == 3
    )
    assert "access.deny denies contractor" in capsys.readouterr().out
    assert entries(store, "access.decision") == []


def test_access_check_reads_a_plan_folder(evidence_site, capsys):
    assert (
        main(
            [
                "access",
                "check",
                "inspector@audit.example",
                "export",
                "reactor-1-plc/TT101_PV",
                "--principals",
                str(PRINCIPALS),
                "--plans",
                str(evidence_site.plans_dir),
            ]
        )
        == 0
    )
    assert "access.export grants auditor" in capsys.readouterr().out


def test_a_principals_file_with_a_duplicate_id_is_refused_at_its_place(store, tmp_path, capsys):
    twice = tmp_path / "principals.yaml"
    twice.write_text(
        "principals:\n  - {id: a, kind: person, roles: [qa]}\n"
        "  - {id: a, kind: person, roles: [auditor]}\n"
    )
    assert (
        main([*query(store, "a", "reactor-1-plc")[:4], "--principals", str(twice), "--as", "a"])
        == 1
    )
    assert f"{twice}:3:" in capsys.readouterr().err


def test_acting_from_an_account_the_principal_does_not_list_is_refused(store, tmp_path, capsys):
    strict = tmp_path / "principals.yaml"
    strict.write_text(
        "principals:\n  - {id: a, kind: person, roles: [qa], os_users: [someone-else]}\n"
    )
    assert (
        main(
            [
                "query",
                "reactor-1-plc/TT101_PV",
                "--db",
                store,
                "--principals",
                str(strict),
                "--as",
                "a",
            ]
        )
        == 3
    )
    assert "may not act as a" in capsys.readouterr().err
    (decided,) = entries(store, "access.decision")
    assert decided["actor"]["os_user"] == os_user()


def test_as_and_principals_come_from_the_environment(store, monkeypatch, capsys):
    monkeypatch.setenv("CONVERGE_PRINCIPALS", str(PRINCIPALS))
    monkeypatch.setenv("CONVERGE_AS", "alice@example.com")
    assert (
        main(
            [
                "query",
                "reactor-1-plc/TT101_PV",
                "--db",
                store,
                "--to",
                (T0.replace(second=5)).isoformat(),
            ]
        )
        == 0
    )
    monkeypatch.delenv("CONVERGE_AS")
    assert main(["query", "reactor-1-plc/TT101_PV", "--db", store]) == 2
    assert "--as PRINCIPAL" in capsys.readouterr().err
    assert os.environ["CONVERGE_PRINCIPALS"]


def test_audit_log_filters_by_actor_kind_time_and_device(store, capsys):
    assert (
        main(query(store, "alice@example.com", "reactor-1-plc/TT101_PV", "--to", T0.isoformat()))
        == 0
    )
    assert main(query(store, "chen@example.com", "filler-2", "--to", T0.isoformat())) in (0, 3)
    capsys.readouterr()

    def listed(*extra: str) -> list[dict]:
        assert main(["audit", "log", "--db", store, "--format", "json", *extra]) == 0
        return [json.loads(line) for line in capsys.readouterr().out.splitlines()]

    by_alice = listed("--actor", "alice@example.com")
    assert [e["kind"] for e in by_alice] == ["access.decision"]
    about_filler = listed("--device", "filler-2", "--kind", "access.decision")
    assert [e["actor"]["id"] for e in about_filler] == ["chen@example.com"]
    assert (
        listed("--device", "reactor-1-plc", "--point", "TT101_PV", "--kind", "access.decision")[0][
            "actor"
        ]["id"]
        == "alice@example.com"
    )
    stored = listed("--kind", "batch.stored", "--device", "reactor-1-plc")
    assert stored and {e["payload"]["device"] for e in stored} == {"reactor-1-plc"}
    assert listed("--to", "2000-01-01") == []
    assert main(["audit", "log", "--db", store, "--point", "TT101_PV"]) == 2
    capsys.readouterr()
    assert main(["audit", "log", "--db", store, "--actor", "alice@example.com"]) == 0
    line = capsys.readouterr().out  # a person reads it: JSON for members, no Python reprs
    assert "decision=" in line and "None" not in line and "{'" not in line


def test_a_review_is_an_entry_of_the_reviewer(store, capsys):
    assert (
        main(
            [
                "audit",
                "review",
                "--db",
                store,
                "--principals",
                str(PRINCIPALS),
                "--as",
                "inspector@audit.example",
                "--note",
                "no findings",
            ]
        )
        == 0
    )
    assert "recorded as audit entry" in capsys.readouterr().out
    (reviewed,) = entries(store, "audit.reviewed")
    assert reviewed["actor"]["id"] == "inspector@audit.example"
    assert reviewed["actor"]["roles"] == ["auditor"]
    assert reviewed["payload"]["note"] == "no findings" and reviewed["payload"]["entries"] > 10
    assert (
        main(
            [
                "audit",
                "review",
                "--db",
                store,
                "--principals",
                str(PRINCIPALS),
                "--as",
                "nobody@example.com",
            ]
        )
        == 3
    )
    assert "unknown to the principals" in capsys.readouterr().err
    (refused,) = entries(store, "access.decision")
    assert refused["payload"]["action"] == "review" and refused["payload"]["outcome"] == "deny"


def test_a_key_is_attributed_to_whoever_made_it_not_the_collector(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("CONVERGE_KEY_PASSPHRASE", "correct horse battery staple")
    keys, db = str(tmp_path / "keys"), str(tmp_path / "evidence.db")
    assert (
        main(
            [
                "keys",
                "generate",
                "qa-signing",
                "--keys",
                keys,
                "--as",
                "alice@example.com",
                "--principals",
                str(PRINCIPALS),
            ]
        )
        == 0
    )
    assert main(["keys", "generate", "audit-log", "--keys", keys]) == 0
    with Store.open(db, actor=Actor.job("collector")) as store:  # a collector imports them later
        from engine.keys import open_key_store
        from engine.plugin_manager import make_plugin_manager

        found = open_key_store(make_plugin_manager(), {"kind": "file", "path": Path(keys)})
        store.record_keys([v for name in found.names() for v in found.versions(name)])
    by = {e["payload"]["name"]: e["actor"] for e in entries(db, "key.generated")}
    assert by["qa-signing"]["id"] == "alice@example.com" and by["qa-signing"]["roles"] == ["qa"]
    assert by["audit-log"] == {**by["audit-log"], "kind": "job", "id": "keys"}
    assert (
        main(
            [
                "keys",
                "rotate",
                "qa-signing",
                "--keys",
                keys,
                "--as",
                "mallory",
                "--principals",
                str(PRINCIPALS),
            ]
        )
        == 3
    )
    assert "mallory is unknown" in capsys.readouterr().err
