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
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import docs_verifier
import pytest

from engine.audit import Actor
from engine.cli import main
from engine.evidence import EvidenceConfig, EvidenceSink
from engine.plans.body import PlanBody
from engine.plans.folder import load_plans
from engine.records import Gap, GapReason, Reading, Record
from engine.store.spool import Spool
from engine.store.store import Store
from engine.verify import Report, Trust, verify_store
from plugins.filekeys.store import FileKeyStore

REPO = Path(__file__).resolve().parents[1]
PASSPHRASE = "correct horse battery staple"
KEY_NAMES = ("qa-signing", "site-integrity", "ops-signing", "audit-log")
T0 = datetime.now(UTC).replace(second=0, microsecond=0) - timedelta(hours=1)
"""Records start an hour ago, on a minute: after the keys made for the session, if not by much."""


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


def fill(site: Site, target: str, tmp_path: Path, seconds: int = 150) -> Store:
    """A store holding ``seconds`` of the plant's records, in signed batches, checkpointed."""
    store = open_store(site, target, witness=tmp_path / "witness.jsonl")
    spool = Spool(tmp_path / "spool.db")
    asyncio.run(collect(site, store, spool, list(records(site, seconds))))
    spool.close()
    return store


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
