"""Plans with retention, a store filled an hour ago, and the principals who may hold it.

Four devices, each point read every second into 30-second signed batches:

- ``line-a`` and ``line-b``: both points kept at most 10 minutes (expired);
- ``lab-c``: ``P1`` kept at least 3 hours (not expired), ``P2`` at most 10 minutes;
- ``vault-d``: no retention at all (kept for ever).

Holds are granted to ``legal``; ``contractor`` is denied everything.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from evidence_kit import Site

from engine.audit import Actor, AuditEntry
from engine.canonical import canonical_json
from engine.plans.body import PlanBody
from engine.plans.format import PLAN_FORMAT, read_plan, seal
from engine.retention import Job, Outcome, apply
from engine.retention.holds import Placed, place
from engine.store import auditlog, reads
from engine.store.retention import Scope
from engine.store.store import Store
from plugins.fileprincipals import PrincipalsFile

WINDOW_MS = 30_000
TEN_MINUTES = {"keep_at_most_ms": 600_000, "on_expiry": "delete"}
THREE_HOURS = {"keep_at_least_ms": 3 * 3_600_000, "on_expiry": "delete"}
DEVICES: dict[str, dict[str, dict[str, Any]]] = {
    "line-a": {"P1": TEN_MINUTES, "P2": TEN_MINUTES},
    "line-b": {"P1": TEN_MINUTES, "P2": TEN_MINUTES},
    "lab-c": {"P1": THREE_HOURS, "P2": TEN_MINUTES},
    "vault-d": {"P1": {}},
}
PRINCIPALS = """\
principals:
  - {id: lena@example.com, kind: person, name: Lena Graf, roles: [legal]}
  - {id: alice@example.com, kind: person, roles: [qa]}
  - {id: bob@contractor.example, kind: person, roles: [legal, contractor]}
  - {id: dana@audit.example, kind: person, roles: [auditor]}
"""
SOURCE = [{"policy": "test-retention", "at": "policies/test.yaml:12:3"}]


def point(name: str, retention: Mapping[str, Any], source: Any = SOURCE) -> dict[str, Any]:
    facets = [f"retention.{key}" for key in retention] + [
        "access.read",
        "access.export",
        "access.hold",
        "access.deny",
        "signing.required",
        "signing.keys",
        "signing.batch_window_ms",
    ]
    return {
        "name": name,
        "address": {},
        "capture": {"every_ms": 1000},
        "retention": dict(retention),
        "signing": {"required": True, "keys": ["qa-signing"], "batch_window_ms": WINDOW_MS},
        "access": {
            "read": ["qa"],
            "export": ["auditor"],
            "hold": ["legal"],
            "deny": ["contractor"],
        },
        "policies": ["test-retention"],
        "provenance": dict.fromkeys(facets, source),
    }


def sealed(
    device: str, points: Mapping[str, Mapping[str, Any]], sources: Mapping[str, Any] | None = None
) -> PlanBody:
    """A plan whose digest verifies, as the compiler would write it; ``sources`` the
    provenance of points set by another policy than ``SOURCE``'s."""
    body = {
        "format": PLAN_FORMAT,
        "site": "retention-test",
        "timezone": "UTC",
        "as_of": "2026-06-01",
        "device": {"id": device, "protocol": "modbus", "endpoint": {}, "limits": {}},
        "points": [point(name, r, (sources or {}).get(name, SOURCE)) for name, r in points.items()],
        "read_groups": [],
    }
    _, data = seal({key: canonical_json(value) for key, value in body.items()})
    return read_plan(data)


@pytest.fixture(scope="session")
def retention_site(evidence_site: Site, tmp_path_factory: pytest.TempPathFactory) -> Site:
    """The evidence site's keys, with the plans above."""
    plans = [sealed(device, points) for device, points in DEVICES.items()]
    return Site(evidence_site.keys_dir, tmp_path_factory.mktemp("retention-plans"), plans)


@pytest.fixture(scope="session")
def principals_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("principals") / "principals.yaml"
    path.write_text(PRINCIPALS, encoding="utf-8")
    return path


def job(site: Site, workers: int | None = None) -> Job:
    return Job(Actor.job("retention"), site.key_store(), site.trust(), workers=workers)


def run(site: Site, store: Store) -> Outcome:
    return apply(store, job(site))


def kinds(store: Store, *wanted: str) -> list[AuditEntry]:
    with store.reading() as conn:
        return list(auditlog.entries(conn, list(wanted)))


def hold_on(site: Site, store: Store, people: PrincipalsFile, scope: Scope, reason: str) -> Placed:
    """Lena's hold on ``scope`` (role legal: the guard allows her), signed with the site's
    audit key."""
    return place(store, people, "lena@example.com", scope, reason, keys=site.key_store())


def signed_sizes(store: Store) -> set[int]:
    """The sizes of the log's checkpoints."""
    with store.reading() as conn:
        return {int(row.size) for row in reads.checkpoints(conn)}


def remaining(store: Store) -> int:
    counts = store.counts()
    return counts["readings"] + counts["gap_records"]


def later(hours: float) -> datetime:
    return datetime.now(UTC) + timedelta(hours=hours)
