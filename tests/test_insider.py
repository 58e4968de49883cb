"""An insider attacks the evidence store: write access to the database, and one, some or all
of the signing keys (tests/forger.py is what they would write).

Each attack is a test named by what the attacker holds and does. It either
fails verification, naming what was touched, or it is a limit of what a
store can show by itself (docs/audit.md, "What only the witness shows" and
"The unsigned tail"): then the test asserts the documented behaviour, which
is mostly that it passes without the witness file and fails with it.

The store is the example plant's, made once per backend for this module
(each test attacks a copy) and written as a real site's would be: keys made
three hours ago, plans signed by ``ops-signing``, a first run of two minutes
two hours ago, the ``audit-log`` key rotated 90 minutes ago, a second run of
a minute an hour ago; a checkpoint every four entries, at each start and
stop, each one in the witness file. The reactor PLC's plan requires
``qa-signing`` and ``site-integrity``; the boiler gateway's ``site-integrity``
only. Every verdict is ``converge audit verify``'s, through the command line.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import shutil
from collections.abc import Iterator
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from evidence_kit import KEY_NAMES, PASSPHRASE, Site, agree_with_cli, records
from forger import Forger, Holder, clone, database, drop, retire
from waiting import until

from engine.access import Question, Range, ask
from engine.audit import Actor, AuditEntry
from engine.canonical import canonical_json
from engine.cli import main
from engine.evidence import EvidenceConfig, EvidenceSink
from engine.evidence.deferred import Deferred
from engine.export import Target, export, verifier
from engine.plans.signature import PlanClaim, Signer, sign_claim, signature_name
from engine.plugin_manager import make_plugin_manager
from engine.principals import open_principals
from engine.sign.batch import record_time
from engine.sign.leaf import instant
from engine.store.spool import Spool
from engine.store.store import Store
from engine.verify.trust import Trust
from plugins.filekeys.store import FileKeyStore

NOW = datetime.now(UTC).replace(second=0, microsecond=0)
MADE = NOW - timedelta(hours=3)
"""When the plant's keys were made."""
SIGNED = MADE + timedelta(minutes=1)
"""When its plans were signed (by :data:`PLAN_KEY`)."""
FIRST = NOW - timedelta(hours=2)
"""The first run's records: two minutes from here."""
ROTATED = NOW - timedelta(minutes=90)
"""When ``audit-log`` v1 was retired and v2 made."""
SECOND = NOW - timedelta(hours=1)
"""The second run's records: a minute from here."""
KILLED = NOW - timedelta(minutes=30)
"""A third run's records (in the tests that kill it)."""
MINUTE = timedelta(minutes=1)
PLAN_KEY = "ops-signing"
APPROVER = Signer("qa@example.com", "Quinn Assurance", "approved")
"""Who signed the plans, as their signatures say."""
CADENCE = EvidenceConfig(checkpoint_entries=4)
REACTOR = "reactor-1-plc"
PRINCIPALS = Path(__file__).resolve().parents[1] / "examples/sites/plant-basel/principals.yaml"
AUDITOR = "inspector@audit.example"
"""A device whose plan requires two keys."""


# --- the plant's store, made once per backend -------------------------------------------


@dataclass(frozen=True)
class Plant:
    """The plant's store as made (copied for each test, never changed) and what it needs."""

    target: str
    keys_dir: Path
    plans_dir: Path
    witness: Path
    admin: str | None = None
    """The PostgreSQL server's URL (copies are made and dropped there), or None for SQLite."""

    def key_store(self) -> FileKeyStore:
        return FileKeyStore(self.keys_dir, passphrase=PASSPHRASE)


def signed_plans(site: Site, keys: FileKeyStore, folder: Path) -> Path:
    """The site's plans, each with its ``.plan.sig`` by :data:`PLAN_KEY`."""
    shutil.copytree(site.plans_dir, folder)
    for plan in site.plans:
        claim = PlanClaim(plan.device.id, plan.digest, SIGNED, APPROVER)
        signed = sign_claim(claim, PLAN_KEY, keys.signer(PLAN_KEY, SIGNED))
        (folder / signature_name(plan.device.id)).write_bytes(signed)
    return folder


def started(site: Site, plans_dir: Path, keys: FileKeyStore, spool: Spool, at: datetime) -> bytes:
    """What ``converge run`` records as it starts (engine.evidence.open_evidence), dated ``at``."""
    run = {
        "plans": [p.digest for p in site.plans],
        "spool": str(spool.path),
        "checkpoint_s": CADENCE.checkpoint_s,
        "checkpoint_entries": CADENCE.checkpoint_entries,
    }
    return Deferred(
        instant(at),
        plans=tuple(
            (p.data, (plans_dir / signature_name(p.device.id)).read_text()) for p in site.plans
        ),
        keys=tuple(v for name in keys.names() for v in keys.versions(name)),
        entries=(("collector.started", run),),
    ).to_bytes()


def collector_run(
    site: Site,
    plant: Plant,
    target: str,
    start: datetime,
    seconds: int,
    *,
    witness: Path | None = None,
    killed_after: int | None = None,
) -> None:
    """A run of ``converge run --db`` putting ``seconds`` of the plant's records from ``start``,
    its clock a second after each record's time (its checkpoints say so). ``killed_after``:
    killed (nothing more written) once it has stored that many batches."""

    async def collect() -> None:
        clock = [start]
        store = Store.attach(target, Actor.job("collector"), witness or plant.witness)
        store.prepare()
        keys = plant.key_store()
        spool = Spool(plant.keys_dir.parent / f"spool-{secrets.token_hex(4)}.db")
        spool.defer(started(site, plant.plans_dir, keys, spool, start))
        sink = EvidenceSink(site.plans, store, keys, spool, config=CADENCE, now=lambda: clock[0])
        for record in records(site, seconds, start):
            clock[0] = record_time(record) + timedelta(seconds=1)
            await sink.put(record)
        if killed_after is None:
            await sink.close()
        else:
            await until(lambda: sink.stats["stored"] == killed_after, "the run's batches stored")
            sink.task.cancel()
            # the writer's thread may be inside a delivery: let it end before the store is
            # closed under it (a PostgreSQL connection closed mid-use can crash the process)
            await asyncio.get_running_loop().shutdown_default_executor()
        spool.close()
        store.close()

    asyncio.run(collect())


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def plant(
    request: pytest.FixtureRequest, evidence_site: Site, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Plant]:
    folder = tmp_path_factory.mktemp("plant")
    keys = FileKeyStore(folder / "keys", passphrase=PASSPHRASE, clock=lambda: MADE)
    for name in KEY_NAMES:
        keys.generate(name)
    plant = Plant(
        str(folder / "evidence.db"),
        folder / "keys",
        signed_plans(evidence_site, keys, folder / "plans"),
        folder / "witness.jsonl",
    )
    if request.param == "postgresql":
        admin = request.getfixturevalue("postgres_url")
        url = sa.make_url(admin).set(database=f"converge_plant_{secrets.token_hex(6)}")
        plant = replace(plant, target=url.render_as_string(hide_password=False), admin=admin)
        with database(admin).connect() as conn:
            conn.execution_options(isolation_level="AUTOCOMMIT")
            conn.execute(sa.text(f'CREATE DATABASE "{url.database}"'))
    collector_run(evidence_site, plant, plant.target, FIRST, 120)
    retire(keys, "audit-log", ROTATED)
    collector_run(evidence_site, plant, plant.target, SECOND, 60)
    yield plant
    if plant.admin is not None:
        drop(plant.target, plant.admin)


@pytest.fixture
def store(plant: Plant, tmp_path: Path) -> Iterator[str]:
    """A copy of the plant's store for one test to attack."""
    copy = clone(plant.target, tmp_path)
    yield copy
    if plant.admin is not None:
        drop(copy, plant.admin)


@pytest.fixture
def killed(evidence_site: Site, plant: Plant, store: str, tmp_path: Path) -> Path:
    """The copy after a third run, half an hour ago, was killed once it had stored its first
    minute's six batches: the last two after its last checkpoint. Its witness file."""
    witness = tmp_path / "witness.jsonl"
    shutil.copy(plant.witness, witness)
    collector_run(evidence_site, plant, store, KILLED, 90, witness=witness, killed_after=6)
    return witness


# --- what the attacker holds, and what verify says ----------------------------------------


def holding(plant: Plant, *names: str) -> Holder:
    """Every version of the keys ``names`` (none: write access to the database only)."""
    return Holder.of(plant.key_store(), *names)


def leaked_v1(plant: Plant) -> Holder:
    """``audit-log`` v1, retired by the rotation, leaked."""
    return Holder.version(plant.key_store(), "audit-log", 1)


@dataclass(frozen=True)
class Verdict:
    """What ``converge audit verify --format json`` said: its exit code, problems and notes."""

    code: int
    problems: list[tuple[str, str]]
    notes: list[str]

    def names(self, item: str, message: str = "") -> bool:
        return any(i == item and message in m for i, m in self.problems)


def audit_verify(capsys: pytest.CaptureFixture[str], target: str, *options: str) -> Verdict:
    code = main(["audit", "verify", "--db", target, "--format", "json", *options])
    said = json.loads(capsys.readouterr().out)
    agree_with_cli(code, target, list(options))
    return Verdict(code, [(p["item"], p["message"]) for p in said["problems"]], said["notes"])


def fails(verdict: Verdict, *named: tuple[str, str]) -> None:
    """Exit 1, and each (item, part of its message) among the problems."""
    assert verdict.code == 1, verdict
    for item, message in named:
        assert verdict.names(item, message), f"{item}: {message!r} not in {verdict.problems}"


def passes(verdict: Verdict) -> None:
    assert (verdict.code, verdict.problems) == (0, []), verdict


def keys(plant: Plant) -> list[str]:
    return ["--keys", str(plant.keys_dir)]


def witness(path: Path) -> list[str]:
    return ["--witness", str(path)]


def public_keys(plant: Plant, capsys: pytest.CaptureFixture[str], folder: Path) -> list[str]:
    """``--public-keys`` with ``converge keys export-public NAME --format json`` of each key."""
    files = []
    for name in KEY_NAMES:
        export = ["keys", "export-public", name, "--keys", str(plant.keys_dir), "--format", "json"]
        assert main(export) == 0
        files.append(folder / f"{name}.json")
        files[-1].write_text(capsys.readouterr().out)
    return ["--public-keys", *map(str, files)]


def trusts(plant: Plant, capsys: pytest.CaptureFixture[str], folder: Path) -> list[list[str]]:
    """The three ways an auditor trusts keys: the key folder, exported public keys, and the
    key folder with the witness file."""
    return [keys(plant), public_keys(plant, capsys, folder), [*keys(plant), *witness_of(plant)]]


def witness_of(plant: Plant) -> list[str]:
    return witness(plant.witness)


def batch_label(row: sa.Row) -> str:
    return f"batch {row.id} ({row.device} {row.window_start})"


def checkpoint_label(row: sa.Row) -> str:
    return f"checkpoint {row.id} (size {row.size})"


def witness_lines(f: Forger, covering: int) -> list[str]:
    """The witness file's lines of the checkpoints that sign entry ``covering`` (one line per
    checkpoint, in the order they were made)."""
    return [
        f"witness witness.jsonl:{line}"
        for line, row in enumerate(f.checkpoints(), 1)
        if row.size > covering
    ]


# --- the attacks' moves ------------------------------------------------------------------


def rewrite_reading(f: Forger, batch_id: int, keys: list[str] | None = None) -> list[int]:
    """Change the first reading of a batch, rebuild its root and the chain after it, re-sign
    those batches with ``keys`` (default: each with its own) and make their audit entries and
    the log's saved state agree; the ids of the batches changed."""
    f.change_record("readings", f.first_reading(batch_id), value=-273.15)
    changed = f.reroot(batch_id)
    f.rewrite_batches(changed, keys)
    return changed


def require_only_site_integrity(plan: dict[str, Any]) -> None:
    for point in plan["points"]:
        point["signing"]["keys"] = ["site-integrity"]


def require_no_signature(plan: dict[str, Any]) -> None:
    for point in plan["points"]:
        point["signing"] = {**point["signing"], "required": False, "keys": []}


def next_window(leaves: list[bytes], by: timedelta) -> list[bytes]:
    """Records like ``leaves``, a window later, with new salts: a forged batch's records."""
    forged = []
    for leaf in leaves:
        record = json.loads(leaf)
        for name in ("scheduled_at", "collected_at"):
            if name in record:
                record[name] = instant(datetime.fromisoformat(record[name]) + by)
        forged.append(canonical_json({**record, "salt": secrets.token_hex(16)}))
    return forged


def forge_next_batch(f: Forger, device: str, keys: list[str]) -> sa.Row:
    """A batch of ``device``'s next window, following its newest, signed by ``keys``."""
    newest = f.batches(device)[-1]
    f.add_batch(newest.id, next_window(f.leaves(newest.id), MINUTE), keys)
    return f.batches(device)[-1]


def signed_before_rotation(f: Forger) -> list[sa.Row]:
    return [c for c in f.checkpoints() if f.signed_at(c.note) < ROTATED]


def signed_after_rotation(f: Forger) -> list[sa.Row]:
    return [c for c in f.checkpoints() if f.signed_at(c.note) >= ROTATED]


# --- the untouched store -------------------------------------------------------------------


def test_the_plants_store_verifies_with_every_kind_of_trust(plant, store, capsys, tmp_path):
    for trust in trusts(plant, capsys, tmp_path):
        verdict = audit_verify(capsys, store, *trust, "--plan-key", PLAN_KEY)
        passes(verdict)
        assert verdict.notes == []


# --- hole 1: the keys a batch must carry are its plan's ------------------------------------


def test_site_integrity_alone_rewrites_a_reading_of_a_two_key_plan_and_sets_keys_to_match(
    plant, store, capsys, tmp_path
):
    """Holding only ``site-integrity``, the insider changes a reading of the reactor PLC
    (its plan requires ``qa-signing`` and ``site-integrity``), re-signs the batch with
    ``site-integrity`` alone, sets its ``keys`` column and its ``batch.stored`` entry to match
    and saves the log's state. The plan says which keys must sign, not the row: it fails with
    the key folder, with exported public keys and with the witness."""
    with Forger.on(store, holding(plant, "site-integrity")) as f:
        batch = f.batches(REACTOR)[-1]
        rewrite_reading(f, batch.id, ["site-integrity"])
        covering = [c for c in f.checkpoints() if c.size > batch.audit_seq]
        witnessed = witness_lines(f, batch.audit_seq)
    forged = [
        (batch_label(batch), "its plan requires ['qa-signing', 'site-integrity']"),
        (batch_label(batch), "signature of key 'qa-signing' is missing"),
        *((checkpoint_label(c), "do not hash to the signed root") for c in covering),
    ]
    for trust in trusts(plant, capsys, tmp_path):
        fails(audit_verify(capsys, store, *trust), *forged)
    fails(
        audit_verify(capsys, store, *keys(plant), *witness_of(plant)),
        *((line, "differs from the witnessed one") for line in witnessed),
    )


def test_the_audit_key_and_site_integrity_rewrite_a_two_key_batch_and_re_sign_the_log(
    plant, store, capsys
):
    """With ``audit-log`` too, the insider re-signs every checkpoint of the rewritten log: the
    log is whole again, but the reactor's plan still requires ``qa-signing``. Only the batch
    fails."""
    with Forger.on(store, holding(plant, "site-integrity", "audit-log")) as f:
        batch = f.batches(REACTOR)[-1]
        rewrite_reading(f, batch.id, ["site-integrity"])
        f.resign_checkpoints("audit-log")
    verdict = audit_verify(capsys, store, *keys(plant))
    fails(verdict, (batch_label(batch), "signature of key 'qa-signing' is missing"))
    assert {item for item, _ in verdict.problems} == {batch_label(batch)}


def test_write_access_alone_declares_a_two_key_batch_unsigned_under_another_plans_waiver(
    evidence_site, plant, store, capsys
):
    """No key: strip the reactor batch's signatures, set its ``keys`` to ``[]`` and its
    ``waiver`` to the signing waiver of reactor-7's plan, and its entry to match. The
    reactor's plan waives nothing and requires two keys."""
    reactor_7 = next(p for p in evidence_site.plans if p.device.id == "reactor-7")
    with Forger.on(store, holding(plant)) as f:
        batch = f.batches(REACTOR)[-1]
        f.resign_batch(batch.id, [], waiver=list(reactor_7.signing_waivers))
        f.record_batch(batch.id)
    fails(
        audit_verify(capsys, store, *keys(plant)),
        (batch_label(batch), "its plan requires ['qa-signing', 'site-integrity']"),
        (batch_label(batch), "its waiver is not the one its plan records"),
        (batch_label(batch), "signature of key 'qa-signing' is missing"),
    )


# --- hole 2: checkpoints verify under the log's own key only ---------------------------------


def test_site_integrity_alone_re_signs_every_checkpoint_of_the_rewritten_log_under_its_origin(
    plant, store, capsys, tmp_path
):
    """Holding only ``site-integrity``, the insider rewrites the reactor's reading as above and
    re-signs every checkpoint with ``site-integrity`` under the log's origin. Checkpoints
    verify under the log's key only (``--audit-key``, default ``audit-log``): every one fails,
    named, whichever way the auditor trusts keys (``site-integrity`` among them)."""
    with Forger.on(store, holding(plant, "site-integrity")) as f:
        batch = f.batches(REACTOR)[-1]
        rewrite_reading(f, batch.id, ["site-integrity"])
        resigned = f.resign_checkpoints("site-integrity")
    named = [(checkpoint_label(c), "no signature by the log's key audit-log") for c in resigned]
    for trust in trusts(plant, capsys, tmp_path):
        fails(audit_verify(capsys, store, *trust, "--audit-key", "audit-log"), *named)


@pytest.mark.parametrize("key", ["qa-signing", "ops-signing"])
def test_any_other_trusted_key_re_signs_every_checkpoint(plant, store, capsys, key):
    """One trusted key that is not the log's (a plan key, the plan-signing key) signs every
    checkpoint under the origin, with the time lines they had: each fails."""
    with Forger.on(store, holding(plant, key)) as f:
        resigned = f.resign_checkpoints(key)
    fails(
        audit_verify(capsys, store, *keys(plant)),
        *((checkpoint_label(c), "no signature by the log's key audit-log") for c in resigned),
    )


def test_the_audit_key_re_signs_every_checkpoint_under_its_own_name_not_the_origin(
    plant, store, capsys
):
    """The log's key signs, but under the key name ``audit-log``: a signed note's key ID
    covers the name, and a checkpoint is signed under the origin."""
    with Forger.on(store, holding(plant, "audit-log")) as f:
        resigned = f.resign_checkpoints("audit-log", name="audit-log")
    fails(
        audit_verify(capsys, store, *keys(plant)),
        *((checkpoint_label(c), "no signature by the log's key") for c in resigned),
    )


def test_site_integrity_alone_renames_the_log_after_itself(plant, store, capsys):
    """``site-integrity`` makes the log its own: a new origin naming it, entry 0 to match,
    every checkpoint re-signed under that origin. The auditor names the log's key."""
    with Forger.on(store, holding(plant, "site-integrity")) as f:
        origin = "converge/audit/site-integrity/" + f.origin().rsplit("/", 1)[1]
        f.run("UPDATE meta SET value = :o WHERE key = 'audit.origin'", o=origin)
        first = f.entry(0)
        f.set_entry(replace(first, payload={"audit_key": "site-integrity", "origin": origin}))
        resigned = f.resign_checkpoints("site-integrity")
    fails(
        audit_verify(capsys, store, *keys(plant), "--audit-key", "audit-log"),
        ("audit log", "its origin names the key site-integrity, not audit-log"),
        ("audit entry 0", "names the key site-integrity"),
        *((checkpoint_label(c), "no signature by the log's key audit-log") for c in resigned),
    )


def test_site_integrity_alone_passes_the_log_off_as_one_made_before_logs_named_their_key(
    plant, store, capsys
):
    """``site-integrity`` drops entry 0 (``log.created``), gives the log an origin of the
    old form (``converge/audit/<uuid>``, no key in it) and re-signs every checkpoint under
    it. Such a log is checked under ``--audit-key`` still: a note, and every checkpoint
    fails."""
    with Forger.on(store, holding(plant, "site-integrity")) as f:
        origin = "converge/audit/" + f.origin().rsplit("/", 1)[1]
        f.run("UPDATE meta SET value = :o WHERE key = 'audit.origin'", o=origin)
        f.relog(f.entries()[1:])
        resigned = f.resign_checkpoints("site-integrity")
    verdict = audit_verify(capsys, store, *keys(plant))
    fails(
        verdict,
        *((checkpoint_label(c), "no signature by the log's key audit-log") for c in resigned),
    )
    assert any("does not name its key" in note for note in verdict.notes), verdict.notes


# --- one or more plan keys without the audit key -----------------------------------------------


def test_every_plan_key_without_the_audit_key_rewrites_a_reading_with_both_signatures(
    plant, store, capsys
):
    """``qa-signing`` and ``site-integrity``: the reactor's first batch changed and properly
    signed, the chain after it too, their entries rewritten. The checkpoints sign the old
    log, and so does the witness."""
    with Forger.on(store, holding(plant, "qa-signing", "site-integrity")) as f:
        first = f.batches(REACTOR)[0]
        rewrite_reading(f, first.id)
        covering = [c for c in f.checkpoints() if c.size > first.audit_seq]
        witnessed = witness_lines(f, first.audit_seq)
    verdict = audit_verify(capsys, store, *keys(plant), *witness_of(plant))
    fails(
        verdict,
        *((checkpoint_label(c), "do not hash to the signed root") for c in covering),
        *((line, "differs from the witnessed one") for line in witnessed),
    )
    assert not any(item.startswith("batch") for item, _ in verdict.problems)


# --- plans: what a batch must carry rests on them ------------------------------------------


def test_write_access_alone_strips_a_plans_signature(plant, store, capsys):
    """No key: the reactor plan's signature is deleted (the ``plans`` row only). Its
    ``plan.deployed`` entry, which the checkpoints sign, says it was signed."""
    with Forger.on(store, holding(plant)) as f:
        digest = f.batches(REACTOR)[-1].plan_digest
        f.run("UPDATE plans SET signature = NULL WHERE digest = :d", d=digest)
    fails(audit_verify(capsys, store, *keys(plant)), (f"plan {digest} ({REACTOR})", "signed"))
    fails(
        audit_verify(capsys, store, *keys(plant), "--plan-key", PLAN_KEY),
        (f"plan {digest} ({REACTOR})", "not signed, and plans must be signed by ops-signing"),
    )


def sign_plan_instead(f: Forger, key: str, signer: Signer) -> str:
    """Replace the reactor plan's signature by one of ``key``, dated as the original, naming
    ``signer``; the plan's digest."""
    row = f.one("SELECT * FROM plans WHERE device = :d", d=REACTOR)
    claim = PlanClaim(REACTOR, row.digest, SIGNED, signer)
    signed = sign_claim(claim, key, f.holder.signer(key, SIGNED))
    f.run("UPDATE plans SET signature = :s WHERE digest = :d", s=signed.decode(), d=row.digest)
    return str(row.digest)


def test_site_integrity_alone_signs_a_plan_in_place_of_the_plan_key(plant, store, capsys):
    """``site-integrity`` replaces the reactor plan's signature by its own, over the same
    claim (device, digest, time, signer). Any trusted key's signature is accepted unless the
    auditor names the plan key."""
    with Forger.on(store, holding(plant, "site-integrity")) as f:
        digest = sign_plan_instead(f, "site-integrity", APPROVER)
    verdict = audit_verify(capsys, store, *keys(plant))
    passes(verdict)
    assert any("--plan-key" in note for note in verdict.notes), verdict.notes
    fails(
        audit_verify(capsys, store, *keys(plant), "--plan-key", PLAN_KEY),
        (f"plan {digest} ({REACTOR})", "not signed by the plan key ops-signing"),
    )


def test_site_integrity_alone_re_signs_a_plan_naming_another_signer(plant, store, capsys):
    """``site-integrity`` replaces the reactor plan's signature by its own naming another
    signer and meaning. The plan's ``plan.deployed`` entry, which the checkpoints sign, names
    the signer it was deployed with: it fails even without ``--plan-key``."""
    with Forger.on(store, holding(plant, "site-integrity")) as f:
        digest = sign_plan_instead(f, "site-integrity", Signer("me@example.com", "Me", "reviewed"))
    fails(
        audit_verify(capsys, store, *keys(plant)),
        (f"plan {digest} ({REACTOR})", "not the signature the plan was deployed with"),
    )


def test_the_audit_key_alone_rewrites_a_reading_under_its_plan_rewritten_to_require_no_key(
    plant, store, capsys
):
    """Holding only ``audit-log``: the reactor's plan rewritten so that no point requires
    signing (a new digest, unsigned, its ``plan.deployed`` entry to match), its batches made
    unsigned, a reading changed, every checkpoint re-signed. Nothing in the store contradicts
    it: it passes, unless the auditor requires plans signed by the plan key (``--plan-key``),
    or brings the witness (docs/audit.md, "What only the witness shows")."""
    with Forger.on(store, holding(plant, "audit-log")) as f:
        new = f.rewrite_plan(f.batches(REACTOR)[-1].plan_digest, require_no_signature)
        batches = f.batches(REACTOR)
        f.change_record("readings", f.first_reading(batches[-1].id), value=-273.15)
        f.reroot(batches[-1].id)
        f.rewrite_batches([b.id for b in batches], keys=[])
        f.resign_checkpoints("audit-log")
        deployed = next(e.seq for e in f.of_kind("plan.deployed") if e.payload["digest"] == new)
        witnessed = witness_lines(f, deployed)
    passes(audit_verify(capsys, store, *keys(plant)))
    fails(
        audit_verify(capsys, store, *keys(plant), "--plan-key", PLAN_KEY),
        (f"plan {new} ({REACTOR})", "not signed, and plans must be signed by ops-signing"),
    )
    fails(
        audit_verify(capsys, store, *keys(plant), *witness_of(plant)),
        *((line, "differs from the witnessed one") for line in witnessed),
    )


# --- every key: what still shows it ------------------------------------------------------------


def test_every_key_rewrites_a_reading_and_everything_that_signs_it(plant, store, capsys):
    """``qa-signing``, ``site-integrity`` and ``audit-log`` (every version): the reactor's
    first reading changed, its batch and the chain after it re-signed, their entries and the
    saved state rewritten, every checkpoint re-signed as dated. The store is consistent again:
    it passes (the plans are untouched, so with ``--plan-key`` too). The witness, kept away
    from the database, still holds the checkpoints of the log as it was: it fails."""
    with Forger.on(store, holding(plant, "qa-signing", "site-integrity", "audit-log")) as f:
        first = f.batches(REACTOR)[0]
        rewrite_reading(f, first.id)
        f.resign_checkpoints("audit-log")
        witnessed = witness_lines(f, first.audit_seq)
    passes(audit_verify(capsys, store, *keys(plant), "--plan-key", PLAN_KEY))
    fails(
        audit_verify(capsys, store, *keys(plant), *witness_of(plant)),
        *((line, "differs from the witnessed one") for line in witnessed),
    )


def test_every_key_rewrites_the_plan_to_drop_a_key_and_re_signs_it_with_the_plan_key(
    plant, store, capsys
):
    """``site-integrity``, ``ops-signing`` (the plan key) and ``audit-log``: the reactor's
    plan rewritten to require ``site-integrity`` only and signed by the plan key, its batches
    re-signed by ``site-integrity`` alone, a reading changed, every checkpoint re-signed. It
    passes even with ``--plan-key``; only the witness shows it."""
    with Forger.on(store, holding(plant, "site-integrity", PLAN_KEY, "audit-log")) as f:
        digest = f.batches(REACTOR)[-1].plan_digest
        new = f.rewrite_plan(digest, require_only_site_integrity, sign_with=PLAN_KEY)
        batches = f.batches(REACTOR)
        f.change_record("readings", f.first_reading(batches[-1].id), value=-273.15)
        f.reroot(batches[-1].id)
        f.rewrite_batches([b.id for b in batches], keys=["site-integrity"])
        f.resign_checkpoints("audit-log")
        deployed = next(e.seq for e in f.of_kind("plan.deployed") if e.payload["digest"] == new)
        witnessed = witness_lines(f, deployed)
    passes(audit_verify(capsys, store, *keys(plant), "--plan-key", PLAN_KEY))
    fails(
        audit_verify(capsys, store, *keys(plant), *witness_of(plant)),
        *((line, "differs from the witnessed one") for line in witnessed),
    )


def test_the_audit_key_alone_deletes_the_newest_batch_of_a_device(plant, store, capsys):
    """``audit-log``: the boiler gateway's newest batch deleted with its entry, the log
    renumbered, every checkpoint re-signed over it. Nothing in the store shows the batch
    was there (it ended its chain); the witness does."""
    with Forger.on(store, holding(plant, "audit-log")) as f:
        gone = f.batches("boiler-gateway")[-1]
        witnessed = witness_lines(f, gone.audit_seq)
        f.delete_batch(gone.id)
        f.relog([e for e in f.entries() if e.seq != gone.audit_seq])
        f.resign_checkpoints("audit-log")
    passes(audit_verify(capsys, store, *keys(plant)))
    fails(
        audit_verify(capsys, store, *keys(plant), *witness_of(plant)),
        *((line, "witnessed") for line in witnessed),
    )


def test_the_audit_key_alone_reorders_two_batches_in_the_log(plant, store, capsys):
    """``audit-log``: the entries of the second run's first two batches swapped (the batches
    follow their entries), every checkpoint re-signed. Only the witness shows it."""
    with Forger.on(store, holding(plant, "audit-log")) as f:
        a, b = (row.audit_seq for row in f.batches()[-6:-4])
        entries = f.entries()
        entries[a], entries[b] = entries[b], entries[a]
        f.relog(entries)
        f.resign_checkpoints("audit-log")
    passes(audit_verify(capsys, store, *keys(plant)))
    fails(audit_verify(capsys, store, *keys(plant), *witness_of(plant)))


def test_write_access_alone_reorders_two_entries_of_the_signed_log(plant, store, capsys):
    """No key: the same swap, the saved state recomputed, the checkpoints left as they are."""
    with Forger.on(store, holding(plant)) as f:
        a, b = (row.audit_seq for row in f.batches()[-6:-4])
        entries = f.entries()
        entries[a], entries[b] = entries[b], entries[a]
        f.relog(entries)
        covering = [c for c in f.checkpoints() if c.size > a]
    fails(
        audit_verify(capsys, store, *keys(plant)),
        *((checkpoint_label(c), "do not hash to the signed root") for c in covering),
    )


def test_write_access_alone_inserts_an_entry_into_the_signed_log(plant, store, capsys):
    """No key: a ``key.rotated`` entry inserted before the second run's start, the log
    renumbered and its state saved."""
    with Forger.on(store, holding(plant)) as f:
        entries = f.entries()
        start = [e.seq for e in entries if e.kind == "collector.started"][-1]
        forged = AuditEntry(
            -1, entries[start].time, "key.rotated", entries[start].actor, {"name": "qa-signing"}
        )
        f.relog([*entries[:start], forged, *entries[start:]])
        covering = [c for c in f.checkpoints() if c.size > start]
    fails(
        audit_verify(capsys, store, *keys(plant)),
        *((checkpoint_label(c), "do not hash to the signed root") for c in covering),
    )


def test_write_access_alone_rolls_the_store_back_to_an_earlier_checkpoint(plant, store, capsys):
    """No key: everything after the second run's start checkpoint deleted (its batches, its
    stop, the checkpoints after), as a restored older copy would be. Nothing in the store
    shows it; the witness does."""
    with Forger.on(store, holding(plant)) as f:
        start = signed_after_rotation(f)[0]
        f.roll_back(start.size)
    passes(audit_verify(capsys, store, *keys(plant)))
    fails(
        audit_verify(capsys, store, *keys(plant), *witness_of(plant)),
        ("witness witness.jsonl:8", "the store is older than the witnessed log"),
    )


def change_the_stop(f: Forger) -> AuditEntry:
    """Rewrite the counts of the last ``collector.stopped`` entry."""
    stop = f.of_kind("collector.stopped")[-1]
    f.set_entry(replace(stop, payload={**stop.payload, "records": 0}))
    return stop


def test_the_audit_key_forks_the_log_and_keeps_the_old_checkpoints(plant, store, capsys):
    """``audit-log``: the last entry rewritten and a new checkpoint of the same size signed
    over it, the old checkpoints kept. Two roots for one size: a fork."""
    with Forger.on(store, holding(plant, "audit-log")) as f:
        stop = change_the_stop(f)
        last = f.checkpoints()[-1]
        fork = f.add_checkpoint(last.size, "audit-log", f.signed_at(last.note))
    fails(
        audit_verify(capsys, store, *keys(plant)),
        (checkpoint_label(last), "do not hash to the signed root"),
        (f"checkpoint {fork} (size {stop.seq + 1})", ""),
    )


def test_the_audit_key_forks_the_log_and_replaces_its_checkpoints(plant, store, capsys):
    """``audit-log``: the last entry rewritten and the checkpoints that sign it re-signed.
    The store holds one log again; the witness holds the other."""
    with Forger.on(store, holding(plant, "audit-log")) as f:
        stop = change_the_stop(f)
        f.resign_checkpoints("audit-log")
        witnessed = witness_lines(f, stop.seq)
    passes(audit_verify(capsys, store, *keys(plant)))
    fails(
        audit_verify(capsys, store, *keys(plant), *witness_of(plant)),
        *((line, "differs from the witnessed one") for line in witnessed),
    )


# --- hole 3: a retired audit key --------------------------------------------------------------


def test_a_leaked_retired_audit_key_with_the_plan_keys_rewrites_a_reading_signed_before_it_retired(
    plant, store, capsys
):
    """``audit-log`` v1 (retired by the rotation), ``qa-signing`` and ``site-integrity``: the
    reactor's first reading changed, its batch and the chain after it re-signed, and every
    checkpoint v1 signed re-signed as dated, before the rotation. The checkpoints v2 signed
    after the rotation cover the rewrite: they fail, and only they."""
    holder = leaked_v1(plant) | holding(plant, "qa-signing", "site-integrity")
    with Forger.on(store, holder) as f:
        rewrite_reading(f, f.batches(REACTOR)[0].id)
        f.resign_checkpoints("audit-log", ids=[c.id for c in signed_before_rotation(f)])
        newer = signed_after_rotation(f)
        older = signed_before_rotation(f)
    verdict = audit_verify(capsys, store, *keys(plant))
    fails(verdict, *((checkpoint_label(c), "do not hash to the signed root") for c in newer))
    assert not any(verdict.names(checkpoint_label(c)) for c in older), verdict.problems


def test_a_leaked_retired_audit_key_signs_checkpoints_dated_after_it_retired(plant, store, capsys):
    """``audit-log`` v1 re-signs the checkpoints v2 signed, with their time lines (after the
    rotation): v1 was not valid then."""
    with Forger.on(store, leaked_v1(plant)) as f:
        newer = signed_after_rotation(f)
        f.resign_checkpoints("audit-log", version=1, ids=[c.id for c in newer])
    fails(
        audit_verify(capsys, store, *keys(plant)),
        *((checkpoint_label(c), "audit-log v1 at") for c in newer),
        *((checkpoint_label(c), "outside its validity") for c in newer),
    )


def test_a_leaked_retired_audit_key_back_dates_every_checkpoint_of_a_rewritten_log(
    plant, store, capsys
):
    """``audit-log`` v1 with the plan keys rewrites a reading and re-signs every checkpoint,
    those v2 signed dated a minute before the rotation (in order, inside v1's validity),
    keeping everything logged since. The log still records the second run's batches, whose
    windows began after the rotation: the checkpoints that sign them cannot be dated before
    it."""
    holder = leaked_v1(plant) | holding(plant, "qa-signing", "site-integrity")
    with Forger.on(store, holder) as f:
        rewrite_reading(f, f.batches(REACTOR)[0].id)
        sealed_since = min(b.audit_seq for b in f.batches() if b.window_start >= instant(SECOND))
        newer = [c for c in signed_after_rotation(f) if c.size > sealed_since]
        f.resign_checkpoints("audit-log", when=lambda at: min(at, ROTATED - MINUTE))
    fails(
        audit_verify(capsys, store, *keys(plant)),
        *((checkpoint_label(c), "window began after it was signed") for c in newer),
    )


def test_a_leaked_retired_audit_key_rolls_the_store_back_to_before_the_rotation(
    plant, store, capsys
):
    """``audit-log`` v1 and write access: everything logged since the rotation deleted with
    the checkpoints v2 signed, then the boiler gateway's newest remaining batch deleted and the
    log re-signed with v1, dated as before. Nothing left in the store contradicts it: it
    passes, with the note that the log's key was rotated after its newest checkpoint. Only
    the witness tells it from a log no longer written since (docs/audit.md)."""
    with Forger.on(store, leaked_v1(plant)) as f:
        f.roll_back(max(c.size for c in signed_before_rotation(f)))
        gone = f.batches("boiler-gateway")[-1]
        f.delete_batch(gone.id)
        f.relog([e for e in f.entries() if e.seq != gone.audit_seq])
        f.resign_checkpoints("audit-log")
    verdict = audit_verify(capsys, store, *keys(plant))
    passes(verdict)
    assert any("was rotated at" in note and "rolled back" in note for note in verdict.notes)
    fails(
        audit_verify(capsys, store, *keys(plant), *witness_of(plant)),
        ("witness witness.jsonl:8", "the store is older than the witnessed log"),
    )


# --- hole 4: the unsigned tail ---------------------------------------------------------------


def test_write_access_alone_appends_a_forged_plan_deployment_after_the_last_checkpoint(
    plant, store, capsys
):
    """No key: a plan for the reactor requiring ``site-integrity`` only, stored unsigned
    with a ``plan.deployed`` entry after the last checkpoint. A deployment is always signed
    with the run's start: it fails without the witness."""
    with Forger.on(store, holding(plant)) as f:
        digest = f.batches(REACTOR)[-1].plan_digest
        f.deploy_plan(digest, require_only_site_integrity)
        seq = f.entries()[-1].seq
    fails(
        audit_verify(capsys, store, *keys(plant)),
        (f"audit entry {seq}", "a plan.deployed entry after the last checkpoint"),
    )


@pytest.mark.parametrize("which", ["newest", "every"])
def test_write_access_alone_deletes_checkpoints_of_a_stopped_run(plant, store, capsys, which):
    """No key: the newest checkpoint (the one signed with the run's stop), or every one. Both
    are as loud: the stop is then an unsigned tail, or nothing signs the log."""
    with Forger.on(store, holding(plant)) as f:
        rows = f.checkpoints()
        f.delete_checkpoints(c.id for c in (rows[-1:] if which == "newest" else rows))
        stop = f.of_kind("collector.stopped")[-1].seq
    named = {
        "newest": (f"audit entry {stop}", "a collector.stopped entry after the last checkpoint"),
        "every": ("audit log", "no checkpoint: nothing signs the log"),
    }
    fails(audit_verify(capsys, store, *keys(plant)), named[which])


def test_a_run_killed_between_checkpoints_leaves_a_tail_that_passes_with_a_note(
    plant, store, killed, capsys
):
    """No attacker: a third run was killed two batches after its last checkpoint."""
    for trust in (keys(plant), [*keys(plant), *witness(killed)]):
        verdict = audit_verify(capsys, store, *trust)
        passes(verdict)
        assert any("(2) are not signed yet" in note for note in verdict.notes), verdict.notes


def test_write_access_alone_deletes_a_killed_runs_unsigned_tail(plant, store, killed, capsys):
    """No key: the two batches of the killed run after its last checkpoint deleted with their
    entries. Nothing signed them: nothing shows it, not the witness either (docs/audit.md,
    "The unsigned tail")."""
    with Forger.on(store, holding(plant)) as f:
        tail = [b for b in f.batches() if b.audit_seq >= f.checkpoints()[-1].size]
        for batch in tail:
            f.delete_batch(batch.id)
        f.relog(f.entries()[: -len(tail)])
    assert len(tail) == 2
    for trust in (keys(plant), [*keys(plant), *witness(killed)]):
        verdict = audit_verify(capsys, store, *trust)
        passes(verdict)
        assert not any("not signed yet" in note for note in verdict.notes), verdict.notes


def test_write_access_alone_deletes_the_newest_checkpoint_of_a_killed_run(
    plant, store, killed, capsys
):
    """No key: the killed run's newest (periodic) checkpoint deleted, less than an interval
    before the kill. The store alone cannot show it (docs/audit.md); the witness holds it."""
    with Forger.on(store, holding(plant)) as f:
        newest = f.checkpoints()[-1]
        f.delete_checkpoints([newest.id])
        line = len(f.checkpoints()) + 1
    passes(audit_verify(capsys, store, *keys(plant)))
    fails(
        audit_verify(capsys, store, *keys(plant), *witness(killed)),
        (f"witness witness.jsonl:{line}", "not stored"),
    )


def test_site_integrity_alone_appends_a_forged_batch_after_a_stopped_run(plant, store, capsys):
    """``site-integrity``, the one key the boiler gateway's plan requires: a batch of its
    next window forged, following its newest, its ``batch.stored`` entry appended after the
    checkpoint signed with the run's stop. No collector runs after its stop."""
    with Forger.on(store, holding(plant, "site-integrity")) as f:
        forged = forge_next_batch(f, "boiler-gateway", ["site-integrity"])
    fails(
        audit_verify(capsys, store, *keys(plant)),
        (f"audit entries {forged.audit_seq}..{forged.audit_seq}", "stopped (audit entry"),
    )


def test_site_integrity_alone_appends_a_forged_batch_to_a_killed_runs_tail(
    plant, store, killed, capsys
):
    """``site-integrity`` forges the boiler gateway's next batch after the killed run's last
    one, in its unsigned tail. A tail is only as good as the batch keys that signed it: it
    passes, with the note, even with the witness (docs/audit.md, "The unsigned tail")."""
    with Forger.on(store, holding(plant, "site-integrity")) as f:
        forge_next_batch(f, "boiler-gateway", ["site-integrity"])
    for trust in (keys(plant), [*keys(plant), *witness(killed)]):
        verdict = audit_verify(capsys, store, *trust)
        passes(verdict)
        assert any("(3) are not signed yet" in note for note in verdict.notes), verdict.notes


def test_write_access_alone_appends_a_forged_review_that_the_next_run_signs(
    evidence_site, plant, store, tmp_path, capsys
):
    """No key: an ``audit.reviewed`` entry by a QA principal appended after the last
    checkpoint, as ``converge audit review`` appends one (it holds no audit key). It passes
    as an unsigned tail, and the next run's start checkpoint signs it as if genuine: a
    checkpoint says what the log held, not who wrote it (docs/audit.md, "The unsigned
    tail")."""
    qa = {"kind": "principal", "id": "qa@example.com", "os_user": "qa", "host": "qa-pc"}
    with Forger.on(store, holding(plant)) as f:
        said = {"from": None, "to": None, "note": "all fine", "entries": 34, "last_seq": 33}
        seq = f.append("audit.reviewed", said, datetime.now(UTC), {**qa, "roles": ["qa"]})
    verdict = audit_verify(capsys, store, *keys(plant), *witness_of(plant))
    passes(verdict)
    assert any(f"audit entries {seq}..{seq} (1) are not signed yet" in n for n in verdict.notes)
    kept = tmp_path / "witness.jsonl"
    shutil.copy(plant.witness, kept)
    collector_run(evidence_site, plant, store, KILLED, 60, witness=kept)
    verdict = audit_verify(capsys, store, *keys(plant), *witness(kept))
    passes(verdict)
    assert not any("not signed yet" in note for note in verdict.notes), verdict.notes


def test_every_key_appends_a_forged_batch_after_the_end_and_signs_it(plant, store, capsys):
    """``site-integrity`` and ``audit-log``: the boiler gateway's next batch forged after the
    end of the log, within a forged run (a start before it, a stop after), and a checkpoint
    signed over it. The witness holds the log up to its newest line; what came after, it
    cannot vouch for: verify notes the stored checkpoints it does not hold."""
    with Forger.on(store, holding(plant, "site-integrity", "audit-log")) as f:
        start = f.of_kind("collector.started")[-1]
        f.append("collector.started", start.payload, datetime.now(UTC))
        forge_next_batch(f, "boiler-gateway", ["site-integrity"])
        f.append("collector.stopped", f.of_kind("collector.stopped")[-1].payload)
        extra = f.add_checkpoint(len(f.entries()), "audit-log", datetime.now(UTC))
    passes(audit_verify(capsys, store, *keys(plant)))
    verdict = audit_verify(capsys, store, *keys(plant), *witness_of(plant))
    passes(verdict)
    assert any(f"checkpoint {extra}" in note for note in verdict.notes), verdict.notes


# --- a batch under another device's plan; one site's key on another site's batches ------------


def boiler_plan(site: Site) -> str:
    return next(p.digest for p in site.plans if p.device.id == "boiler-gateway")


def test_site_integrity_alone_cannot_put_a_reactor_batch_under_the_boilers_weaker_plan(
    evidence_site, plant, store, killed, capsys
):
    """The boiler's plan asks for site-integrity only, the reactor's for qa-signing too: a
    reactor batch that names the boiler's plan must not get by with the one key."""
    with Forger.on(store, holding(plant, "site-integrity")) as f:
        newest = f.batches(REACTOR)[-1]
        forged = f.add_batch(newest.id, next_window(f.leaves(newest.id), MINUTE), [])
        f.restate(forged, plan_digest=boiler_plan(evidence_site))
        f.resign_batch(forged, ["site-integrity"])
        f.record_batch(forged)
        label = batch_label(f.batch(forged))
    for options in ([], witness(killed)):
        verdict = audit_verify(capsys, store, *keys(plant), "--plan-key", PLAN_KEY, *options)
        fails(verdict, (label, "is of device boiler-gateway"))


def test_the_audit_key_cannot_rewrite_a_reactor_reading_under_the_boilers_plan(
    evidence_site, plant, store, capsys, tmp_path
):
    """Neither in the store nor in a bundle exported from it (the export decided before the
    forgery: the boiler's plan grants no reactor point)."""
    resolver = open_principals(make_plugin_manager(), {"kind": "file", "path": PRINCIPALS})
    with Store.open_existing(store) as opened, opened.reading() as conn:
        decision = ask(conn, resolver, Question(AUDITOR, "export", [REACTOR]))
    assert decision.allowed and not decision.denied
    with Forger.on(store, holding(plant, "site-integrity", "audit-log")) as f:
        batch = f.batches(REACTOR)[-1]
        f.change_record("readings", f.first_reading(batch.id), value=-273.15)
        f.reroot(batch.id)
        f.restate(batch.id, plan_digest=boiler_plan(evidence_site))
        f.resign_batch(batch.id, ["site-integrity"])
        f.record_batch(batch.id)
        f.resign_checkpoints("audit-log")
        label = batch_label(f.batch(batch.id))
    verdict = audit_verify(capsys, store, *keys(plant), "--plan-key", PLAN_KEY)
    fails(verdict, (label, "is of device boiler-gateway"))

    out, trust = tmp_path / "forged.zip", tmp_path / "trust.json"
    with Store.open_existing(store) as opened:
        export(opened, decision, Range(), plant.key_store(), Target(out, lambda s, d, **_: b""))
    made = ["keys", "trust", "--db", store, *keys(plant), "--plan-key", PLAN_KEY, "-o", str(trust)]
    assert main(made) == 0
    said = verifier.verify(str(out), trust.read_bytes())
    assert not said.ok
    assert any("is of device boiler-gateway" in line for line in said.lines()), said.lines()


def test_the_audit_key_cannot_move_a_device_to_another_site(plant, store, capsys):
    """Batches are judged by the keys of their plan's site (--site-trust): a plan deployed for
    the reactor under another site would put its evidence under that site's keys."""
    with Forger.on(store, holding(plant, "audit-log")) as f:
        digest = f.batches(REACTOR)[-1].plan_digest
        f.deploy_plan(digest, lambda plan: plan.update(site="other-site"))
        f.resign_checkpoints("audit-log")
    fails(
        audit_verify(capsys, store, *keys(plant)),
        (f"device {REACTOR}", "its plans name several sites: other-site, plant-basel"),
    )


def site_b_signs_the_boilers_newest_batch(plant: Plant, store: str, site_b: FileKeyStore) -> None:
    """A boiler reading changed, its batch re-signed by site B's site-integrity (the log
    re-signed by the centre's audit key)."""
    with Forger.on(store, holding(plant, "audit-log")) as f:
        batch = f.batches("boiler-gateway")[-1]
        f.change_record("readings", f.first_reading(batch.id), value=-273.15)
        for changed in f.reroot(batch.id):
            row = f.batch(changed)
            at = datetime.fromisoformat(f.entry(row.audit_seq).time)
            signature = site_b.signer("site-integrity", at).sign(bytes(row.statement))
            f.run(
                "UPDATE batch_signatures SET signature = :s WHERE batch_id = :b AND key = :k",
                s=signature,
                b=changed,
                k="site-integrity",
            )
            f.record_batch(changed)
        f.resign_checkpoints("audit-log")


def test_one_sites_key_does_not_verify_another_sites_batches(plant, store, tmp_path, capsys):
    """Sites share key names (policies name keys): a central store is verified with each
    site's keys for that site's plans and batches only, and same-named keys of two sites are
    never merged into one trust."""
    site_b = FileKeyStore(tmp_path / "site-b-keys", passphrase=PASSPHRASE, clock=lambda: MADE)
    site_b.generate("site-integrity")
    trust = tmp_path / "trust"
    (trust / "plant-basel").mkdir(parents=True)
    (trust / "other-site").mkdir()
    mine = public_keys(plant, capsys, trust / "plant-basel")[1:]
    assert main(["keys", "export-public", "site-integrity", "--keys", str(tmp_path / "site-b-keys"),
                 "--format", "json"]) == 0  # fmt: skip
    theirs = trust / "other-site" / "site-integrity.json"
    theirs.write_text(capsys.readouterr().out)

    assert main(["audit", "verify", "--db", store, "--public-keys", *mine, str(theirs)]) == 2
    assert "--site-trust" in capsys.readouterr().err
    by_site = [
        "--site-trust",
        str(trust),
        "--public-keys",
        str(trust / "plant-basel" / "audit-log.json"),
    ]
    assert main(["audit", "verify", "--db", store, *by_site]) == 0
    capsys.readouterr()
    site_b_signs_the_boilers_newest_batch(plant, store, site_b)
    code = main(["audit", "verify", "--db", store, "--format", "json", *by_site])
    said = json.loads(capsys.readouterr().out)
    assert code == 1
    assert any("site-integrity" in p["message"] for p in said["problems"]), said


def test_an_older_export_does_not_widen_a_retired_versions_validity(tmp_path):
    """An auditor handed an export from before a rotation and one from after: the version the
    rotation retired is trusted until it ended, whichever file comes first."""
    keys = FileKeyStore(tmp_path / "keys", passphrase=PASSPHRASE, clock=lambda: MADE)
    keys.generate("site-integrity")
    before, after = tmp_path / "before.json", tmp_path / "after.json"
    before.write_text(json.dumps([v.as_dict() for v in keys.versions("site-integrity")]))
    retire(keys, "site-integrity", ROTATED)
    after.write_text(json.dumps([v.as_dict() for v in keys.versions("site-integrity")]))
    ended = {v.version: v.not_after for v in keys.versions("site-integrity")}[1]
    assert ended is not None
    for files in ([before, after], [after, before]):
        trusted = Trust.from_json(files).keys["site-integrity"]
        assert {v.version: v.not_after for v in trusted}[1] == ended
