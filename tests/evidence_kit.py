"""Fixtures for evidence tests: real keys, real plans of the example plant, filled stores.

Loaded by conftest.py as a pytest plugin. ``backend`` runs a test once on a
SQLite file and once on a fresh PostgreSQL database.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import os
from collections import defaultdict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import docs_verifier
import pytest
from sqlalchemy import select

from engine.audit import Actor
from engine.cli import main
from engine.evidence import EvidenceConfig, EvidenceSink
from engine.export import verifier
from engine.plans.body import PlanBody
from engine.plans.folder import load_plans
from engine.records import Gap, GapReason, Reading, Record
from engine.sign.batch import epoch_ms
from engine.store import auditlog
from engine.store.spool import Spool
from engine.store.store import Store
from engine.store.tables import GAPS, READINGS
from engine.verify import checkpoints
from engine.verify.report import Report
from engine.verify.trust import Trust
from engine.verify.whole import verify_store
from plugins.filekeys.store import FileKeyStore

REPO = Path(__file__).resolve().parents[1]
PASSPHRASE = "correct horse battery staple"
KEY_NAMES = ("qa-signing", "site-integrity", "ops-signing", "audit-log")
T0 = datetime.now(UTC).replace(minute=0, second=0, microsecond=0) - timedelta(hours=1)
"""Records start on the hour, one to two hours ago. On the hour, so that what a test counts does
not depend on the time it runs: a 15 min point has a slot in the first seconds after T0, and
none in any span of the next hour that does not start at T0."""


@dataclass
class Site:
    """Keys and compiled plans of examples/sites/plant-basel, made once per session."""

    keys_dir: Path
    plans_dir: Path
    plans: list[PlanBody]

    def key_store(self) -> FileKeyStore:
        return FileKeyStore(self.keys_dir, passphrase=PASSPHRASE)

    def trust(self) -> Trust:
        return Trust.from_key_store(self.key_store())


@pytest.fixture(scope="session")
def evidence_site(tmp_path_factory: pytest.TempPathFactory) -> Site:
    root = tmp_path_factory.mktemp("evidence-site")
    keys = FileKeyStore(root / "keys", passphrase=PASSPHRASE)
    for name in KEY_NAMES:
        keys.generate(name)
    os.environ.setdefault("CONVERGE_KEY_PASSPHRASE", PASSPHRASE)
    site = REPO / "examples/sites/plant-basel"
    code = main(
        [
            "plan",
            "-p",
            str(REPO / "policies"),
            "-s",
            str(site),
            "-o",
            str(root / "plans"),
            "--keys",
            str(root / "keys"),
        ]
    )
    assert code == 0
    plans = load_plans(root / "plans", T0.timestamp())
    return Site(root / "keys", root / "plans", plans)


@pytest.fixture(params=["sqlite", "postgresql"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """Where a store lives: a SQLite file, or a fresh PostgreSQL database."""
    if request.param == "sqlite":
        return str(tmp_path / "evidence.db")
    url: str = request.getfixturevalue("fresh_postgres_url")
    return url


def records(site: Site, seconds: int, start: datetime = T0, gap_every: int = 7) -> Iterator[Record]:
    """One record per point per second: a reading, or every ``gap_every``-th a timeout gap."""
    for s in range(seconds):
        at = start + timedelta(seconds=s)
        for plan in site.plans:
            device = plan.device.id
            for i, point in enumerate(plan.points):
                if (s + i) % gap_every == 0:
                    yield Gap(device, point.name, at, GapReason.TIMEOUT, "no answer in 1000 ms")
                else:
                    yield Reading(
                        device, point.name, at, round(20 + s * 0.25 + i, 2), scheduled_at=at
                    )


def open_store(site: Site, target: str, witness: Path | None = None) -> Store:
    store = Store.open(target, actor=Actor.job("test"), witness=witness)
    store.deploy_plans([(p, None) for p in site.plans])
    keys = site.key_store()
    store.record_keys([v for name in keys.names() for v in keys.versions(name)])
    return store


async def collect(
    site: Site,
    store: Store,
    spool: Spool,
    items: list[Record],
    config: EvidenceConfig | None = None,
) -> EvidenceSink:
    sink = EvidenceSink(site.plans, store, site.key_store(), spool, config=config)
    for record in items:
        await sink.put(record)
    await sink.close()
    return sink


def fill(site: Site, target: str, tmp_path: Path, seconds: int = 150, gap_every: int = 7) -> Store:
    """A store holding ``seconds`` of the plant's records, in signed batches, checkpointed."""
    store = open_store(site, target, witness=tmp_path / "witness.jsonl")
    spool = Spool(tmp_path / "spool.db")
    asyncio.run(collect(site, store, spool, list(records(site, seconds, gap_every=gap_every))))
    spool.close()
    return store


def checking_clocks_later(monkeypatch: pytest.MonkeyPatch, later: datetime) -> None:
    """The clocks that judge checkpoint times (signers' and verifiers') read ``later`` as now,
    moving on as time does: for a test whose store was sealed by a clock set later on
    purpose (a restart that comes an hour after), checked by an auditor who comes after it."""
    shift = later - datetime.now(UTC)

    class Later(datetime):
        @classmethod
        def now(cls, tz: Any = None) -> Any:
            return datetime.now(tz) + shift

    for module in (auditlog, checkpoints, verifier, docs_verifier):
        monkeypatch.setattr(module, "datetime", Later)


def verify(site: Site, store: Store, tmp_path: Path | None = None) -> Report:
    """``verify_store``'s report, after the docs verifier agreed with its verdict."""
    witness = tmp_path / "witness.jsonl" if tmp_path else None
    witness = witness if witness and witness.exists() else None
    report = verify_store(store, site.trust(), witness=witness)
    agree(report, target_of(store), public_keys(site.keys_dir), witness=witness)
    return report


# --- the docs verifier beside `converge audit verify` ---------------------------------------


def target_of(store: Store) -> str:
    """What the docs verifier opens: the SQLite file, or the PostgreSQL URL, of ``store``."""
    url = store.engine.url
    if url.get_backend_name() == "sqlite":
        return str(url.database)
    return url.render_as_string(hide_password=False)


_EXPORTS: dict[tuple[object, ...], list[object]] = {}


def public_keys(keys_dir: Path) -> list[object]:
    """``converge keys export-public NAME --format json`` of every key in ``keys_dir``, as an
    auditor is given them (keys.md: one ``NAME.json`` of metadata per key)."""
    files = sorted(keys_dir.glob("*.json"))
    stamp = (keys_dir, *((f.name, f.stat().st_mtime_ns, f.stat().st_size) for f in files))
    if stamp not in _EXPORTS:
        exports = []
        for name in (f.stem for f in files):
            out = io.StringIO()
            with contextlib.redirect_stdout(out):
                code = main(
                    ["keys", "export-public", name, "--format", "json", "--keys", str(keys_dir)]
                )
            assert code == 0, f"export-public {name}"
            exports.append(json.loads(out.getvalue()))
        _EXPORTS[stamp] = exports
    return _EXPORTS[stamp]


def agree(
    verified: Report | bool,
    target: str,
    keys: list[object],
    *,
    witness: Path | None = None,
    audit_key: str = "audit-log",
    plan_key: str | None = None,
) -> docs_verifier.Verdict:
    """Run the verifier written from docs/ alone on the store ``converge audit verify`` (or
    ``verify_store``) judged ``verified``, and require the same verdict."""
    ok = verified if isinstance(verified, bool) else verified.ok
    verdict = docs_verifier.verify(
        target, keys, audit_key=audit_key, plan_key=plan_key, witness=witness
    )
    said = verified.problems if isinstance(verified, Report) else []
    assert verdict.ok == ok, (
        f"audit verify says ok={ok} {said}; the docs verifier says {verdict.problems}"
    )
    return verdict


def agree_with_cli(code: int, target: str, options: list[str]) -> None:
    """``agree`` with ``converge audit verify --db TARGET OPTIONS``, which exited ``code``
    (2, a store it could not open, is left alone)."""
    if code == 2:
        return
    given: dict[str, list[str]] = {}
    name = ""
    for option in options:
        if option.startswith("--"):
            name = option
        else:
            given.setdefault(name, []).append(option)
    exports: list[object] = [
        json.loads(Path(f).read_text()) for f in given.get("--public-keys", [])
    ]
    if "--public-keys" not in given:
        exports = public_keys(
            Path(given.get("--keys", [os.environ.get("CONVERGE_KEYS", "keys")])[0])
        )
    agree(
        code == 0,
        target,
        exports,
        witness=Path(given["--witness"][0]) if "--witness" in given else None,
        audit_key=given.get("--audit-key", ["audit-log"])[0],
        plan_key=given.get("--plan-key", [None])[0],
    )


# --- slots: what a store accounts for ----------------------------------------------------


def missed_slots(
    plans: Iterable[PlanBody], last: datetime, until: datetime
) -> dict[tuple[str, str], list[int]]:
    """Each point's slots (epoch ms) after ``last`` and before ``until``: every ``every_ms``
    of its polled group, or of its own capture when it is subscribed."""
    slots: dict[tuple[str, str], list[int]] = {}
    for plan in plans:
        for group in plan.read_groups:
            for point in group.points:
                every = (
                    group.spec["every_ms"] if group.polled else plan.point[point].capture.every_ms
                )
                if every is None:
                    continue  # subscribed on change only: no slots
                first = (epoch_ms(last) // every + 1) * every
                if first < epoch_ms(until):
                    slots[(plan.device.id, point)] = list(range(first, epoch_ms(until), every))
    return slots


def slots_of(gap: dict[str, Any]) -> list[int]:
    """The slots (epoch ms) a stored gap record stands for: its one slot, or its run's (the
    interval schedules of the example plant space a run's slots evenly)."""
    first = epoch_ms(datetime.fromisoformat(gap["scheduled_at"]))
    if "slots" not in gap:
        return [first]
    last = epoch_ms(datetime.fromisoformat(gap["last_scheduled_at"]))
    step, rest = divmod(last - first, gap["slots"] - 1)
    assert rest == 0 and step > 0, gap
    return list(range(first, last + 1, step))


def shutdown_gaps(store: Store) -> dict[tuple[str, str], list[int]]:
    """The slots (epoch ms) of every stored ``shutdown`` gap record, by device and point."""
    found: dict[tuple[str, str], list[int]] = defaultdict(list)
    with store.reading() as conn:
        for (leaf,) in conn.execute(select(GAPS.c.leaf)):
            gap = json.loads(bytes(leaf))
            if gap["reason"] == "shutdown":
                found[(gap["device"], gap["point"])].extend(slots_of(gap))
    return {key: sorted(slots) for key, slots in found.items()}


def stored_leaves(store: Store) -> list[dict[str, Any]]:
    """Every record in the store, as the JSON of its leaf."""
    with store.reading() as conn:
        return [
            json.loads(bytes(leaf))
            for table in (READINGS, GAPS)
            for (leaf,) in conn.execute(select(table.c.leaf))
        ]


def slots_taken(leaves: Iterable[dict[str, Any]]) -> dict[tuple[str, str], list[int]]:
    """Per point, each slot (epoch ms) a record accounts for, as often as one does: a
    reading's ``scheduled_at``, every slot of a gap record."""
    found: dict[tuple[str, str], list[int]] = defaultdict(list)
    for leaf in leaves:
        key = (leaf["device"], leaf["point"])
        if leaf["type"] == "gap":
            found[key].extend(slots_of(leaf))
        elif "scheduled_at" in leaf:
            found[key].append(epoch_ms(datetime.fromisoformat(leaf["scheduled_at"])))
    return {key: sorted(slots) for key, slots in found.items()}
