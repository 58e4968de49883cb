"""Audit entries and payload members of a shape no writer makes: named, never a crash.

Anyone who can write the database can append an entry whose payload is a list, or whose
actor is a number; a key holder's buggy command can sign one, or a receipt whose archive
names its entries by a list. ``audit verify``, the docs verifier and the bundle verifiers
name each (docs/audit.md, "The audit log"); no checkpoint signs an entry that does not parse;
a command that reads the log's entries (a retention run or forecast, ``audit log``) stops
with one line naming it, not a traceback.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Any

import pytest
import test_export
import test_retention_bundle
from evidence_kit import fill, verify
from retention_kit import job, kinds, run
from test_export import Members, failed, forged, read

from engine.audit import Actor, seal_with
from engine.cli import main
from engine.errors import CheckpointRefused, StoreError
from engine.retention import StoreUnverified, apply
from engine.retention import run as runs
from engine.store import auditlog
from engine.store.store import Store
from engine.verify.whole import verify_store

clean_python, both, plant = test_export.clean_python, test_export.both, test_export.plant
archive_site = test_retention_bundle.archive_site


@dataclass(frozen=True)
class Raw:
    """An entry's actor as stored, whatever JSON value it is."""

    value: Any

    def as_json(self) -> Any:
        return self.value


JOB = Actor.job("x")
MISSHAPEN = {
    "a decision whose payload is a list": ("access.decision", JOB, []),
    "a dropped batch whose payload is a list": ("batch.dropped", JOB, []),
    "a stored batch whose payload is a string": ("batch.stored", JOB, "x"),
    "a quarantined message whose payload is a number": ("message.quarantined", JOB, 5),
    "a cosigning whose payload is null": ("checkpoint.cosigned", JOB, None),
    "a release whose payload is a list": ("hold.released", JOB, []),
    "a deployment whose payload is a list": ("plan.deployed", JOB, []),
    "a receipt whose payload is a list": ("retention.deleted", JOB, []),
    "an archive whose payload is a list": ("retention.archived", JOB, []),
    "an ingester's start whose payload is a list": ("ingest.started", JOB, []),
    "a placing whose actor is a list": ("hold.placed", Raw([]), {}),
    "a decision whose actor is a number": ("access.decision", Raw(5), {}),
}


def sealer(site: Any, store: Store) -> Any:
    return partial(seal_with, site.key_store(), store.audit_key)


@pytest.fixture
def store(retention_site, backend, tmp_path):
    filled = fill(retention_site, backend, tmp_path, 30)
    yield filled
    filled.close()


@pytest.mark.parametrize("backend", ["sqlite"], indirect=True)
@pytest.mark.parametrize("case", list(MISSHAPEN))
def test_a_signed_entry_of_no_entrys_shape_is_named_by_both_store_verifiers(
    retention_site, store, tmp_path, case
):
    """Signed in its own transaction, as a key holder's buggy command would: ``audit verify``
    (and the docs verifier, which must agree) names it, and goes on."""
    kind, actor, payload = MISSHAPEN[case]
    with store.signed(sealer(retention_site, store)) as conn:
        seq = auditlog.append(conn, kind, actor, payload)
    report = verify(retention_site, store, tmp_path)
    assert any(
        p.item == f"audit entry {seq}" and "not a canonical entry" in p.message
        for p in report.problems
    ), report.problems


@pytest.mark.parametrize("backend", ["sqlite"], indirect=True)
def test_no_checkpoint_signs_an_entry_that_does_not_parse(retention_site, store):
    """An access.decision may wait for the next checkpoint; one whose payload is a list is
    refused by it, and named."""
    with store.transaction() as conn:
        seq = auditlog.append(conn, "access.decision", JOB, [])  # type: ignore[arg-type]
    with pytest.raises(CheckpointRefused, match=rf"audit entry {seq} does not parse \(its payl"):
        store.checkpoint(sealer(retention_site, store)(datetime.now(UTC)))


@pytest.mark.parametrize("backend", ["sqlite"], indirect=True)
def test_commands_that_read_the_log_name_an_entry_that_does_not_parse(
    retention_site, store, backend, capsys
):
    with store.transaction() as conn:
        seq = auditlog.append(conn, "hold.released", JOB, [])  # type: ignore[arg-type]
    with pytest.raises(StoreUnverified, match=rf"audit entry {seq}: not a canonical entry"):
        run(retention_site, store)
    keys = ["--keys", str(retention_site.keys_dir)]
    assert main(["audit", "verify", "--db", backend, *keys]) == 1
    assert f"audit entry {seq}: not a canonical entry" in capsys.readouterr().out
    not_parsing = f"audit entry {seq} does not parse (its payload is not an object)"
    for command in (
        ["retention", "apply", "--db", backend, "--dry-run"],
        ["audit", "log", "--db", backend],
    ):
        assert main(command) == 2  # could not run: one line, no traceback (docs/cli.md)
        (line,) = capsys.readouterr().err.splitlines()
        assert line.startswith("converge: error: ") and not_parsing in line, command


@pytest.mark.parametrize("backend", ["sqlite"], indirect=True)
def test_an_entry_appended_after_a_runs_check_stops_it_with_its_name(
    retention_site, store, monkeypatch
):
    checked = runs._verified

    def then_append(*args: Any, **kwargs: Any) -> Any:
        digests = checked(*args, **kwargs)
        with store.transaction() as conn:
            auditlog.append(conn, "hold.released", JOB, [])  # type: ignore[arg-type]
        return digests

    monkeypatch.setattr(runs, "_verified", then_append)
    with pytest.raises(StoreError, match="does not parse"):
        run(retention_site, store)
    assert not kinds(store, "retention.deleted")


# --- in a bundle ---------------------------------------------------------------------------


def _entry_line(change: Any) -> Any:
    """A bundle change: the last entry line's entry changed by ``change``."""

    def edit(members: Members) -> Members:
        lines = members["log/entries.jsonl"].split(b"\n")
        line = json.loads(lines[-2])
        change(line["entry"])
        lines[-2] = json.dumps(line, separators=(",", ":")).encode()
        members["log/entries.jsonl"] = b"\n".join(lines)
        return members

    return edit


@pytest.mark.parametrize(
    "change",
    [
        lambda e: e.update(payload=[]),
        lambda e: e.update(actor=7),
        lambda e: e.update(actor=[]),
        lambda e: e.update(kind=["hold.placed"]),
    ],
    ids=["payload list", "actor number", "actor list", "kind list"],
)
def test_a_bundled_entry_of_no_entrys_shape_is_named_by_both_verifiers(
    plant, tmp_path: Path, both, change
):
    line = len(read(plant.bundle)["log/entries.jsonl"].split(b"\n")) - 1
    bundle = forged(plant.site, plant.bundle, tmp_path / "e.zip", _entry_line(change))
    problems = failed(both(bundle, plant.trust))
    named = f"FAIL log/entries.jsonl:{line}: not an audit entry ("
    assert any(p.startswith(named) for p in problems), problems


# --- hostile members of a key holder's receipts and archives --------------------------------


def _hostile(kind: str, change: Any) -> Any:
    """``auditlog.append``, with each ``kind`` payload changed by ``change`` first."""
    append = auditlog.append

    def hostile(conn: Any, what: str, actor: Any, payload: Any, at: Any = None) -> int:
        if what == kind:
            change(payload)
        return append(conn, what, actor, payload, at)

    return hostile


HOSTILE = {
    "an archive's written entry named by a list": (
        "retention.deleted",
        lambda said: said["archive"] and said["archive"].update(written=[1]),
        "naming an archive no earlier retention.archive.written entry says was written",
    ),
    "an archive's entry named by an object": (
        "retention.deleted",
        lambda said: said["archive"] and said["archive"].update(entry={"seq": 1}),
        "which its plan archives, without its archive",
    ),
    "an archive's batches holding a number": (
        "retention.archived",
        lambda said: said["batches"].insert(0, 5),
        "whose batches are not a list of objects",
    ),
}


@pytest.mark.parametrize("backend", ["sqlite"], indirect=True)
@pytest.mark.parametrize("case", list(HOSTILE))
def test_a_receipts_archive_of_no_archives_shape_is_named(
    archive_site, backend, tmp_path, monkeypatch, case
):
    """A run that holds the key writes them (a bug, or a key holder's forgery); ``audit
    verify`` names each arch-e receipt, and the docs verifier agrees."""
    kind, change, message = HOSTILE[case]
    store = fill(archive_site, backend, tmp_path, 60)
    monkeypatch.setattr(auditlog, "append", _hostile(kind, change))
    apply(store, replace(job(archive_site), archives=tmp_path / "archives"))
    monkeypatch.undo()
    report = verify(archive_site, store, tmp_path)
    receipts = [r.seq for r in kinds(store, "retention.deleted") if r.payload["device"] == "arch-e"]
    store.close()
    assert receipts
    for seq in receipts:
        assert any(
            p.item == f"receipt (audit entry {seq})" and message in p.message
            for p in report.problems
        ), report.problems


MEMBERS = {
    "a dropped batch whose root is a list": ("batch.dropped", {"device": "line-a", "root": []}),
    "a dropped batch whose root is not hex": ("batch.dropped", {"device": "line-a", "root": "zz"}),
    "a dropped batch whose device is a list": ("batch.dropped", {"device": [], "root": "0" * 64}),
    "a cosigning whose origin is a list": ("checkpoint.cosigned", {"origin": ["o"]}),
    "an ingester named by a list": ("ingest.started", {"ingester": ["i"]}),
    "an ingester's cadence of text": ("ingest.started", {"ingester": "i", "checkpoint_s": "x"}),
    "a collector's cadence of a list": ("collector.started", {"checkpoint_entries": [1]}),
}


@pytest.mark.parametrize("backend", ["sqlite"], indirect=True)
@pytest.mark.parametrize("case", list(MEMBERS))
def test_a_signed_payload_member_of_another_type_is_no_crash(retention_site, store, case):
    """Each check reads what it needs of a payload; a member of another type than a writer's
    is never a TypeError or ValueError out of ``audit verify``."""
    kind, payload = MEMBERS[case]
    with store.signed(sealer(retention_site, store)) as conn:
        auditlog.append(conn, kind, JOB, payload)
    with store.transaction() as conn:  # after the checkpoint: the tail reads the cadence
        auditlog.append(conn, "batch.stored", JOB, {"device": "line-a"})
    verify_store(store, retention_site.trust())
