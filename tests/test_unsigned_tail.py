"""What may wait for a checkpoint, and what a database writer without the audit key can no
longer pass for lawful: a hold released, an archive that was never written (the attacks of
the hold, archive and read-API reviews), on SQLite and PostgreSQL.

A hold's entries, a deletion receipt and an archive's entries are signed in the transaction
that writes them; in the unsigned tail they are a failure of ``audit verify``, and no
checkpoint signs them (docs/audit.md, "The unsigned tail"). Signed or not, a hold entry must
name the decision that allowed it on the hold's scope as placed, and an archiving receipt the
entry that signed its archive's SHA-256 (docs/retention.md).
"""

from __future__ import annotations

import logging
import shutil
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import partial
from pathlib import Path

import pytest
import sqlalchemy as sa
import test_export
from evidence_kit import Site, fill, verify
from retention_kit import kinds, remaining, run, signed_sizes
from test_export import failed, trust_file
from test_retention_bundle import export
from test_tamper import database

from engine import export as export_module
from engine.audit import Actor, seal_with
from engine.errors import CheckpointRefused
from engine.evidence.config import EvidenceConfig
from engine.evidence.deferred import Deferred
from engine.evidence.writer import Writer
from engine.evidence.writer import log as writer_log
from engine.retention import StoreUnverified
from engine.retention import run as retention_run
from engine.retention.holds import place, release
from engine.sign.leaf import instant
from engine.store import auditlog
from engine.store import store as store_module
from engine.store.retention import Scope
from engine.store.spool import Spool
from engine.store.store import Store
from plugins.fileprincipals import PrincipalsFile

SECONDS = 60
LENA = "lena@example.com"
clean_python, both = test_export.clean_python, test_export.both


@pytest.fixture
def store(retention_site, backend, tmp_path):
    filled = fill(retention_site, backend, tmp_path, SECONDS)
    yield filled
    filled.close()


@dataclass(frozen=True)
class Insider:
    """Someone who can write the database (``backend``) and name lena as an entry's actor;
    and hold ``hold``, on line-b, placed by lena (whom the guard allows)."""

    backend: str
    actor: Actor
    principals: Path
    hold: int

    def release(self, store: Store) -> int:
        """What a database writer with no key can do: a ``hold.released`` entry naming a
        decision nobody made, appended to the log, and the hold's row changed to match; its
        entry number."""
        now = instant(datetime.now(UTC))
        said = {"hold": self.hold, "reason": "settled", "decision": str(uuid.uuid4())}
        with store.transaction() as conn:
            seq = auditlog.append(conn, "hold.released", self.actor, said, now)
        self.match_row(seq, now)
        return seq

    def match_row(self, seq: int, now: str) -> None:
        """The hold's row, released by lena at ``now`` by entry ``seq``."""
        with database(self.backend).begin() as conn:
            conn.execute(
                sa.text(
                    "UPDATE holds SET released_by = :by, released_at = :t,"
                    " release_reason = 'settled', released_seq = :s WHERE id = :h"
                ),
                {"by": LENA, "t": now, "s": seq, "h": self.hold},
            )


@pytest.fixture
def insider(retention_site, store, backend, principals_file) -> Insider:
    people = PrincipalsFile(principals_file)
    keys = retention_site.key_store()
    hold = place(store, people, LENA, Scope(("line-b",)), "dispute", keys=keys).id
    actor = Actor("principal", LENA, "lena", "laptop", ("legal",), people.digest)
    return Insider(backend, actor, principals_file, hold)


def sealer(site, store: Store):
    return partial(seal_with, site.key_store(), store.audit_key)


# --- a release written without the key ------------------------------------------------------


def test_a_release_in_the_unsigned_tail_is_named_and_no_checkpoint_signs_it(
    retention_site, store, insider, tmp_path
):
    seq = insider.release(store)
    report = verify(retention_site, store, tmp_path)
    unsigned = "a hold.released entry after the last checkpoint"
    assert any(p.item == f"audit entry {seq}" and unsigned in p.message for p in report.problems)
    with pytest.raises(CheckpointRefused, match=rf"audit entry {seq} \(hold\.released\)"):
        store.checkpoint(sealer(retention_site, store)(datetime.now(UTC)))
    records = remaining(store)
    with pytest.raises(StoreUnverified):  # the nightly job deletes nothing, held data included
        run(retention_site, store)
    assert remaining(store) == records


def test_a_forged_entry_after_the_runs_check_stops_its_batch(
    retention_site, store, insider, monkeypatch
):
    """Written between the run's check and a batch: the run folds it in, and the checkpoint
    of that batch's transaction refuses it, so the batch's deletion is rolled back."""
    from engine.retention import run as runs

    checked = runs._verified

    def then_forge(*args, **kwargs):
        digests = checked(*args, **kwargs)
        insider.release(store)
        return digests

    monkeypatch.setattr(runs, "_verified", then_forge)
    records = remaining(store)
    with pytest.raises(CheckpointRefused, match=r"\(hold\.released\)"):
        run(retention_site, store)
    assert remaining(store) == records
    assert not kinds(store, "retention.deleted")


def test_a_collector_logs_a_refused_checkpoint_and_goes_on(
    retention_site, store, insider, caplog, tmp_path, *, monkeypatch
):
    """Logged once, and tried again an interval later, not on every batch (each try reads
    the whole tail)."""
    insider.release(store)
    signed = signed_sizes(store)
    spool = Spool(tmp_path / "collector-spool.db")
    config = EvidenceConfig(checkpoint_entries=1)  # due on every batch, but for the refusal
    writer = Writer(store, spool, retention_site.key_store(), config)
    tries = []
    sign = store.checkpoint
    monkeypatch.setattr(store, "checkpoint", lambda seal: tries.append(1) or sign(seal))
    with caplog.at_level(logging.ERROR, logger=writer_log.name):
        writer._checkpoint(datetime.now(UTC))
        writer._maybe_checkpoint(datetime.now(UTC))  # a batch later: not tried
        writer._checkpoint(datetime.now(UTC))  # an interval later: tried, not logged again
    spool.close()
    (line,) = [r.getMessage() for r in caplog.records if r.name == writer_log.name]
    assert "no checkpoint signed" in line and "(hold.released)" in line
    assert len(tries) == 2 and "(hold.released)" in str(writer.refusal)
    assert signed_sizes(store) == signed  # nothing signed; collecting goes on


# --- what the signer trusts: nothing the database says of what is signed -----------------------


def _sign(retention_site, store: Store) -> str | None:
    return store.checkpoint(sealer(retention_site, store)(datetime.now(UTC)))


def _newest(backend: str) -> tuple[int, str]:
    with database(backend).begin() as conn:
        row = conn.execute(
            sa.text("SELECT size, note FROM checkpoints ORDER BY size DESC LIMIT 1")
        ).one()
    return int(row.size), str(row.note)


def _execute(backend: str, sql: str, **values: object) -> None:
    with database(backend).begin() as conn:
        conn.execute(sa.text(sql), values)


def test_a_checkpoint_row_the_log_key_did_not_sign_is_refused(
    retention_site, store, insider, backend
):
    """A database writer inserts a checkpoint row of the log's size over a forged release (the
    newest real note copied, or any text): the signer checks the newest note, and refuses."""
    seq = insider.release(store)
    size, note = _newest(backend)
    insert = "INSERT INTO checkpoints (size, note, created_at) VALUES (:s, :n, :t)"
    _execute(backend, insert, s=seq + 1, n=note, t=instant(datetime.now(UTC)))
    with pytest.raises(CheckpointRefused, match=rf"row says size {seq + 1}, its note signs {size}"):
        _sign(retention_site, store)
    forged = note.replace("\n\n", "\n\n\u2014 forged AAAA\n", 1)
    _execute(backend, "UPDATE checkpoints SET note = :n WHERE size = :s", n=forged, s=seq + 1)
    with pytest.raises(CheckpointRefused, match="is not signed by a version of the log's key"):
        _sign(retention_site, store)
    assert max(signed_sizes(store)) == seq + 1  # only the forged row: nothing more signed


def test_a_tail_row_changed_while_the_saved_state_holds_another_is_refused(
    retention_site, store, insider, backend
):
    """The forged release's row made a harmless decision for the signer to read, the saved
    state still its hash (to put the release back once signed): the entries' root is not the
    state's, and the signer refuses."""
    seq = insider.release(store)
    with database(backend).begin() as conn:
        raw = bytes(conn.execute(sa.text("SELECT entry FROM audit_entries WHERE seq = :s"),
                                 {"s": seq}).scalar_one())  # fmt: skip
    harmless = raw.replace(b'"hold.released"', b'"access.decision"')
    update = "UPDATE audit_entries SET kind = 'access.decision', entry = :e WHERE seq = :s"
    _execute(backend, update, e=harmless, s=seq)
    with pytest.raises(CheckpointRefused, match=r"saved state \(size \d+\) is not that of its"):
        _sign(retention_site, store)


@pytest.mark.parametrize("backend", ["postgresql"], indirect=True)
def test_no_one_else_writes_the_saved_state_while_a_transaction_signs(
    retention_site, store, insider, backend
):
    """PostgreSQL: Converge's writers order themselves with an advisory lock, which plain SQL
    never takes, and each statement sees what others committed before it. The saved state is
    locked for update as a transaction begins, so a database writer's release, appended while
    a hold's transaction runs, cannot commit in time to be numbered among its entries (and
    signed with them): it waits until the transaction has signed and committed."""
    said = {"hold": insider.hold, "reason": "settled", "decision": str(uuid.uuid4())}
    with store.signed(sealer(retention_site, store)) as conn, database(backend).connect() as other:
        with pytest.raises(sa.exc.OperationalError, match="lock timeout"), other.begin():
            other.exec_driver_sql("SET LOCAL lock_timeout = '300ms'")
            auditlog.append(other, "hold.released", insider.actor, said)  # before any of ours
        auditlog.append(conn, "audit.reviewed", Actor.job("test"), {"note": "honest"})
    assert not kinds(store, "hold.released")


def test_a_log_whose_checkpoints_were_deleted_is_refused(retention_site, store, insider, backend):
    """Every checkpoint row deleted, so that nothing looks signed: a log with a hold, a run's
    stop and no checkpoint lost its checkpoints, and the signer refuses."""
    insider.release(store)
    _execute(backend, "DELETE FROM checkpoints")
    with pytest.raises(CheckpointRefused, match=r"\(collector\.stopped\) is in a log with no"):
        _sign(retention_site, store)
    assert not signed_sizes(store)


def test_a_signer_rebuilds_a_missing_or_changed_signed_state_from_the_entries(
    retention_site, store, backend
):
    """The state kept at the newest checkpoint (``audit.signed``) changed, or gone as in a
    store from before it was kept: rebuilt from the entries that checkpoint signed."""
    _execute(backend, "UPDATE meta SET value = '{\"size\": 1, \"hashes\": [\"00\"]}'"
             " WHERE key = 'audit.signed'")  # fmt: skip
    store.log("access.decision", {"id": "d1"})
    assert _sign(retention_site, store) is not None
    _execute(backend, "DELETE FROM meta WHERE key = 'audit.signed'")
    store.log("access.decision", {"id": "d2"})
    assert _sign(retention_site, store) is not None
    _execute(backend, "UPDATE audit_entries SET entry = :e WHERE seq = 1", e=b"{}")
    store.log("access.decision", {"id": "d3"})
    _execute(backend, "DELETE FROM meta WHERE key = 'audit.signed'")
    with pytest.raises(CheckpointRefused, match=r"first \d+ entries are not those its newest"):
        _sign(retention_site, store)


# --- a release signed, that no decision allowed -------------------------------------------------


def test_a_signed_release_no_decision_allowed_is_named_by_every_verifier(
    retention_site, store, insider, tmp_path, both
):
    """As if a signer had signed it blindly: the release names a decision nobody recorded;
    ``audit verify`` and both bundle verifiers name it (and keep the hold in force, so that
    what it holds is still judged held)."""
    now = instant(datetime.now(UTC))
    said = {"hold": insider.hold, "reason": "settled", "decision": str(uuid.uuid4())}
    with store.signed(sealer(retention_site, store)) as conn:
        seq = auditlog.append(conn, "hold.released", insider.actor, said, now)
    insider.match_row(seq, now)
    report = verify(retention_site, store, tmp_path)
    assert any(
        p.item == f"audit entry {seq}" and "no earlier access.decision entry" in p.message
        for p in report.problems
    ), report.problems
    store.close()
    keys = retention_site.keys_dir
    bundle = export(insider.backend, keys, insider.principals, tmp_path / "b.zip")
    trust = trust_file(insider.backend, keys, tmp_path / "trust.json")
    said_by = both(bundle, trust)
    assert said_by.code != 0
    assert any(f"audit entry {seq}" in line and "releases hold" in line for line in said_by.lines)


def test_a_hold_decided_on_another_scope_is_named(retention_site, store, insider, tmp_path):
    """A hold placed on line-a naming the decision of the hold on line-b."""
    (decided,) = kinds(store, "access.decision")
    said = {"hold": insider.hold + 1, **Scope(("line-a",)).as_json(), "reason": "a",
            "decision": decided.payload["decision"]}  # fmt: skip
    with store.signed(sealer(retention_site, store)) as conn:
        seq = auditlog.append(conn, "hold.placed", insider.actor, said)
    report = verify(retention_site, store, tmp_path)
    assert any(
        p.item == f"audit entry {seq}" and "another scope than the hold's as placed" in p.message
        for p in report.problems
    ), report.problems


def test_a_release_by_a_principal_is_judged_on_the_hold_as_placed(retention_site, store, insider):
    """The hold's row narrowed by a database writer does not narrow what a release decides."""
    with database(insider.backend).begin() as conn:
        conn.execute(sa.text("UPDATE holds SET devices = '[\"vault-d\"]' WHERE id = :h"),
                     {"h": insider.hold})  # fmt: skip
    people = PrincipalsFile(insider.principals)
    keys = retention_site.key_store()
    was = release(store, people, LENA, insider.hold, "settled", keys=keys)
    assert was.scope.devices == ("line-b",)
    (decision,) = [e for e in kinds(store, "access.decision") if e.seq > was.placed_seq]
    assert {p["device"] for p in decision.payload["points"]} == {"line-b"}


# --- one decision, one hold entry -------------------------------------------------------------


def test_a_decision_id_logged_again_after_a_lawful_release_changes_nothing(
    retention_site, store, insider, tmp_path, both
):
    """A database writer appends an access.decision reusing the id of a lawful release's
    decision (a tail kind: the collector's next checkpoint signs it). A hold entry's decision
    is the first of its id before it: every verifier still finds the release lawful, and the
    deletions after it too (attacks5, finding 4)."""
    keys = retention_site.key_store()
    release(store, PrincipalsFile(insider.principals), LENA, insider.hold, "settled", keys=keys)
    assert run(retention_site, store).deleted["line-b", "P1"] == SECONDS
    decision = kinds(store, "hold.released")[0].payload["decision"]
    with store.transaction() as conn:
        auditlog.append(conn, "access.decision", Actor.job("api"),
                        {"decision": decision, "action": "read", "outcome": "deny",
                         "principal": "nobody", "points": []})  # fmt: skip
    store.checkpoint(sealer(retention_site, store)(datetime.now(UTC)))
    report = verify(retention_site, store, tmp_path)  # the docs verifier agrees
    assert report.ok, report.problems
    store.close()
    bundle = export(insider.backend, retention_site.keys_dir, insider.principals, tmp_path / "b")
    said = both(bundle, trust_file(insider.backend, retention_site.keys_dir, tmp_path / "t"))
    assert said.code == 0, said.lines


def test_a_release_naming_the_decision_that_placed_the_hold_is_named_by_every_verifier(
    retention_site, store, insider, tmp_path, both
):
    """The placing decision allowed lena a hold on the hold's scope as placed, but it allowed
    that placing: a decision allows one placing or one release, so a release naming it (even
    signed, as if a signer signed it blindly) is named, and the hold stays in force."""
    (placed,) = kinds(store, "hold.placed")
    now = instant(datetime.now(UTC))
    said = {"hold": insider.hold, "reason": "settled", "decision": placed.payload["decision"]}
    with store.signed(sealer(retention_site, store)) as conn:
        seq = auditlog.append(conn, "hold.released", insider.actor, said, now)
    insider.match_row(seq, now)
    reused = f"its decision was named already, by audit entry {placed.seq}"
    report = verify(retention_site, store, tmp_path)
    assert any(
        p.item == f"audit entry {seq}" and p.message.startswith(f"releases hold 1, but {reused}")
        for p in report.problems
    ), report.problems
    store.close()
    keys = retention_site.keys_dir
    bundle = export(insider.backend, keys, insider.principals, tmp_path / "b.zip")
    said_by = both(bundle, trust_file(insider.backend, keys, tmp_path / "trust.json"))
    assert f"FAIL audit entry {seq}: releases hold 1, but {reused}: a decision allows one" in (
        "\n".join(said_by.lines)
    )


def test_holds_place_and_release_on_a_decision_each(retention_site, store, insider, tmp_path):
    keys = retention_site.key_store()
    release(store, PrincipalsFile(insider.principals), LENA, insider.hold, "settled", keys=keys)
    named = [e.payload["decision"] for e in kinds(store, "hold.placed", "hold.released")]
    assert len(named) == len(set(named)) == 2
    assert verify(retention_site, store, tmp_path).ok


# --- an archive that was never written ----------------------------------------------------------


def test_an_archive_and_receipts_in_the_unsigned_tail_are_named_and_not_signed(
    retention_site, store, tmp_path
):
    receipt = next(r for r in _lawful(retention_site, store))
    archived = {"decision": str(uuid.uuid4()), "file": "converge-archive-x.zip", "from": None,
                "to": None, "points": [], "batches": []}  # fmt: skip
    with store.transaction() as conn:
        first = auditlog.append(conn, "retention.archived", Actor.job("retention"), archived)
        again = auditlog.append(conn, "retention.deleted", Actor.job("retention"), receipt)
    report = verify(retention_site, store, tmp_path)
    for seq, kind in ((first, "retention.archived"), (again, "retention.deleted")):
        assert any(
            p.item == f"audit entry {seq}" and f"a {kind} entry after the last checkpoint"
            in p.message for p in report.problems
        ), report.problems  # fmt: skip
    with pytest.raises(CheckpointRefused, match=rf"audit entry {first} \(retention\.archived\)"):
        store.checkpoint(sealer(retention_site, store)(datetime.now(UTC)))


def _lawful(retention_site, store) -> list[dict]:
    run(retention_site, store)
    return [r.payload for r in kinds(store, "retention.deleted")]


# --- the read API's decisions do not pass for a deleted checkpoint ---------------------------


def test_many_decisions_in_the_tail_are_no_deleted_checkpoint(retention_site, store, tmp_path):
    """1,100 refused API requests (one ``access.decision`` each, unsigned: serve holds no key)
    are more entries than a run writes between two checkpoints, but not the run's."""
    refused = {"decision": "x", "action": "read", "outcome": "deny", "points": []}
    with store.transaction() as conn:
        for _ in range(1100):
            auditlog.append(conn, "access.decision", Actor.job("api"), refused)
    report = verify(retention_site, store, tmp_path)
    assert report.ok, report.problems
    assert any("are not signed yet" in n for n in report.notes)


# --- a signer's clock set ahead -------------------------------------------------------------


class _Ahead(datetime):
    """The clock of a run whose host is set four hours ahead."""

    @classmethod
    def now(cls, tz=None):
        return datetime.now(tz) + timedelta(hours=4)


def test_a_run_with_its_clock_set_ahead_is_named_by_every_verifier(
    retention_site, store, backend, principals_file, tmp_path, *, monkeypatch, both
):
    """A run (with the audit key) on a host four hours ahead deletes lab-c's P1 hours before
    its keep_at_least, its receipts and checkpoints dated ahead, so they look lawful to each
    other; the verifier's own clock names the checkpoints dated in the future."""
    with monkeypatch.context() as ahead:
        ahead.setattr(retention_run, "datetime", _Ahead)
        ahead.setattr(store_module, "datetime", _Ahead)
        ahead.setattr(auditlog, "datetime", _Ahead)
        early = run(retention_site, store)
    assert early.deleted["lab-c", "P1"] == SECONDS  # kept at least 3 hours: written just now
    report = verify(retention_site, store, tmp_path)
    assert any("dated in the future" in p.message for p in report.problems), report.problems
    with pytest.raises(CheckpointRefused, match="ahead of this signer's clock"):
        _sign(retention_site, store)  # an honest signer signs nothing after it
    store.close()
    out = tmp_path / "ahead.zip"
    with monkeypatch.context() as ahead:  # exported on the same host: its bundle, checked now
        ahead.setattr(export_module, "datetime", _Ahead)
        ahead.setattr(auditlog, "datetime", _Ahead)
        bundle = export(backend, retention_site.keys_dir, principals_file, out)
    said = both(bundle, trust_file(backend, retention_site.keys_dir, tmp_path / "trust.json"))
    assert any("dated in the future" in line for line in failed(said)), said.lines


@pytest.mark.parametrize("backend", ["sqlite"], indirect=True)
def test_rotating_the_audit_key_right_after_a_checkpoint_keeps_the_store_verifying(
    retention_site, backend, principals_file, tmp_path
):
    """A checkpoint states its time rounded up to the second; a rotation within that second
    ends the version that signed it before the time it states. It was valid within that
    second, so the checkpoint, and the hold it signed, still verify."""
    shutil.copytree(retention_site.keys_dir, tmp_path / "keys")
    site = Site(tmp_path / "keys", retention_site.plans_dir, retention_site.plans)
    store = fill(site, backend, tmp_path, 30)
    place(
        store, PrincipalsFile(principals_file), LENA, Scope(("line-a",)), "x", keys=site.key_store()
    )
    keys = site.key_store()
    keys.rotate("audit-log")  # at once, as a script would
    store.record_keys([v for name in keys.names() for v in keys.versions(name)])
    report = verify(site, store, tmp_path)
    store.close()
    assert report.ok, [str(p) for p in report.problems]


def test_a_spool_entry_other_than_a_runs_start_or_stop_is_not_signed(
    retention_site, store, insider
):
    """The spool is a file on the collector's host: a release written into it as a deferred
    entry is refused by the run that replays it, and nothing of it reaches the log."""
    said = {"hold": insider.hold, "reason": "settled", "decision": str(uuid.uuid4())}
    forged = Deferred(instant(datetime.now(UTC)), entries=(("hold.released", said),))
    signed = signed_sizes(store)
    with pytest.raises(CheckpointRefused, match="a run keeps only its start and stop there"):
        forged.record(store, sealer(retention_site, store)(datetime.now(UTC)))
    assert not kinds(store, "hold.released") and signed_sizes(store) == signed
