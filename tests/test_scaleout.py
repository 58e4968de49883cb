"""Three site collectors, one broker, two ingesters, one central PostgreSQL store, for real.

Every part is a real process: ``converge simulate`` serves three Modbus
devices, three ``converge run --publish`` collect one each (one through a TCP
proxy that the test cuts, one keeping its records locally with ``--db``), two
``converge ingest`` share their messages, through a Mosquitto of the test's
own that it restarts, into PostgreSQL behind a proxy that it stops. During the
run one ingester is killed with SIGKILL (and started again), the broker is
restarted, the database is away for a while, and one site is cut off and
comes back; bad messages arrive among the good ones. Each fault waits for
what it must show, never for a fixed while.

At the end: every batch each site sealed is in the central store exactly
once; every outbox row a site deleted is committed at the centre (a trigger
records each deletion); the central store verifies; each site's log verifies
with the centre's cosignatures; no ingester died of the bad input.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import sqlalchemy as sa
from key_exports import export
from mosquitto import Mosquitto, free_port
from store_proxy import TcpProxy
from waiting import wait_until

from engine.audit import Actor
from engine.plans.folder import write_plans
from engine.store.central import CentralStore
from engine.store.site import Publishing, SiteStore
from engine.store.wire import Reply, batch_topic
from engine.testkit import ProjectBuilder
from engine.transport import Ack, BrokerOptions, Message, Subscription, open_transport
from engine.verify.trust import Trust
from engine.verify.whole import verify_store
from plugins.filekeys.store import FileKeyStore

PASSPHRASE = "correct horse battery staple"
CONVERGE = [sys.executable, "-m", "engine.cli"]
SITES = ("north", "south", "east")
POLICY = """
    policy: capture-and-sign
    title: Capture fast and sign every second
    owner: qa
    applies: {}
    capture: {every: 200ms}
    signing: {required: true, keys: [site-integrity], batch_window: 1s}
    """
SITE = """
    site: {site}
    timezone: UTC
    devices:
      - id: plc-{site}
        protocol: modbus
        endpoint: {{host: 127.0.0.1, port: {port}}}
        limits: {{min_interval: 100ms}}
        points:
          - {{name: T1, signal: temperature, address: {{table: holding, register: 0, type: int16}}}}
          - {{name: T2, signal: temperature, address: {{table: holding, register: 1, type: int16}}}}
    """
DELETIONS = """
CREATE TABLE IF NOT EXISTS test_deleted (device TEXT, root BLOB);
CREATE TRIGGER IF NOT EXISTS test_outbox_deleted AFTER DELETE ON outbox
BEGIN INSERT INTO test_deleted VALUES (old.device, old.root); END;
"""


@dataclass
class Edge:
    """One site collector: its folder, keys, plans, store and process."""

    site: str
    folder: Path
    keys: FileKeyStore
    keep_records: bool
    process: subprocess.Popen[str] | None = None

    @property
    def db(self) -> Path:
        return self.folder / ("evidence.db" if self.keep_records else "log.db")

    def sealed(self) -> set[tuple[str, bytes]]:
        """Every batch the site sealed, from its own log."""
        kind = "batch.stored" if self.keep_records else "batch.sealed"
        with contextlib.closing(sqlite3.connect(self.db)) as db:
            rows = db.execute("SELECT entry FROM audit_entries WHERE kind = ?", (kind,))
            payloads = [json.loads(entry)["payload"] for (entry,) in rows]
        return {(p["device"], bytes.fromhex(p["root"])) for p in payloads}

    def outbox(self) -> int:
        with contextlib.closing(sqlite3.connect(self.db)) as db:
            return int(db.execute("SELECT count(*) FROM outbox").fetchone()[0])

    def deleted(self) -> list[tuple[str, bytes]]:
        with contextlib.closing(sqlite3.connect(self.db)) as db:
            return [(d, bytes(r)) for d, r in db.execute("SELECT device, root FROM test_deleted")]


@dataclass
class Centre:
    db: str
    keys: FileKeyStore
    trust: Path
    folder: Path
    ingesters: list[subprocess.Popen[str]] = field(default_factory=list)


def env() -> dict[str, str]:
    return {**os.environ, "CONVERGE_KEY_PASSPHRASE": PASSPHRASE}


def make_edge(root: Path, site: str, port: int, pm, keep_records: bool) -> Edge:
    folder = root / site
    keys = FileKeyStore(folder / "keys", passphrase=PASSPHRASE)
    for name in ("site-integrity", "audit-log"):
        keys.generate(name)
    project = ProjectBuilder(folder / "project", pm).write(
        {"policies/p.yaml": POLICY, "sites/s/site.yaml": SITE.format(site=site, port=port)}
    )
    outcome = project.compile()
    outcome.assert_success()
    write_plans(folder / "plans", outcome.compilation.plans, outcome.compilation.index())
    edge = Edge(site, folder, keys, keep_records)
    publishing = Publishing(site, "test", keep_records)
    store = SiteStore.attach_site(str(edge.db), Actor.job("test"), publishing)
    store.prepare()  # made before the run, to record every deletion from the outbox
    store.close()
    with contextlib.closing(sqlite3.connect(edge.db)) as db:
        db.executescript(DELETIONS)
    return edge


def start_edge(edge: Edge, broker_url: str) -> None:
    store = ["--db", str(edge.db)] if edge.keep_records else ["--log", str(edge.db)]
    edge.process = subprocess.Popen(
        [*CONVERGE, "run", "--plans", str(edge.folder / "plans"), "--keys",
         str(edge.folder / "keys"), "--publish", broker_url, "--site-id", edge.site,
         "--spool", str(edge.folder / "spool.db"), "--witness", str(edge.folder / "witness.jsonl"),
         "--resend-after", "3s", "--drain", "60s", *store],
        cwd=edge.folder, env=env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip


def start_ingester(centre: Centre, broker_url: str, db_url: str) -> subprocess.Popen[str]:
    process = subprocess.Popen(
        [*CONVERGE, "ingest", "--broker", broker_url, "--db", db_url, "--trust",
         str(centre.trust), "--keys", str(centre.folder / "keys"), "--max-message", "1MiB"],
        env=env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    centre.ingesters.append(process)
    return process


def stored(db: str) -> list[tuple[str, bytes]]:
    engine = sa.create_engine(db, poolclass=sa.NullPool)
    try:
        with engine.connect() as conn:
            rows = conn.execute(sa.text("SELECT device, root FROM batches"))
            return [(d, bytes(r)) for d, r in rows]
    except sa.exc.SQLAlchemyError:  # no schema yet
        return []
    finally:
        engine.dispose()


def via(proxy: TcpProxy, url: str) -> str:
    """``url`` with its host and port replaced by the proxy's."""
    parts = urlsplit(url)
    netloc = (
        f"{parts.username}@127.0.0.1:{proxy.port}" if parts.username else f"127.0.0.1:{proxy.port}"
    )
    return parts._replace(netloc=netloc).geturl()


def progress(centre: Centre, more: int, what: str) -> None:
    """Wait until ``more`` batches beyond those stored now are stored."""
    now = len(stored(centre.db))
    wait_until(
        lambda: len(stored(centre.db)) >= now + more,
        f"{more} more batches stored ({what})",
        within=60,
    )


def answers(pm, url: str, messages: dict[str, tuple[str, bytes]]) -> dict[str, Reply]:
    """Send messages as a site would (each again until answered); the centre's answers."""
    replies: dict[str, Reply] = {}

    def answered(message: Message, ack: Ack) -> None:
        replies[(message.correlation or b"").decode()] = Reply.parse(message.payload)
        ack()

    transport = open_transport(pm, url, BrokerOptions())
    link = transport.open(
        "test-bad-input", [Subscription("converge/v1/+/reply/bad")], answered, durable=False
    )
    try:

        def all_answered() -> bool:
            for what, (topic, payload) in messages.items():
                if link.connected and what not in replies:
                    reply_to = "converge/v1/north/reply/bad"
                    link.publish(Message(topic, payload, reply_to, what.encode()))
            return len(replies) == len(messages)

        wait_until(all_answered, "answers to the bad messages", every=0.5)
    finally:
        link.close()
    return replies


@pytest.fixture
def world(tmp_path, converge_pm, postgres_url, fresh_postgres_url) -> Iterator[tuple]:
    ports = [free_port() for _ in SITES]
    edges = [
        make_edge(tmp_path, site, port, converge_pm, keep_records=site == "south")
        for site, port in zip(SITES, ports, strict=True)
    ]
    centre_keys = FileKeyStore(tmp_path / "centre" / "keys", passphrase=PASSPHRASE)
    for name in ("audit-log", "witness"):
        centre_keys.generate(name)
    for edge in edges:
        export(edge.keys, tmp_path / "centre" / "trust" / edge.site)
    centre = Centre(
        fresh_postgres_url, centre_keys, tmp_path / "centre" / "trust", tmp_path / "centre"
    )
    sims = ProjectBuilder(tmp_path / "sim", converge_pm).write(
        {
            f"sites/{s}/site.yaml": SITE.format(site=s, port=p)
            for s, p in zip(SITES, ports, strict=True)
        }
    )
    simulator = subprocess.Popen(
        [*CONVERGE, "simulate", "sites"], cwd=sims.root, stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )  # fmt: skip
    pg = urlsplit(fresh_postgres_url)
    with (
        Mosquitto(tmp_path / "mosquitto") as broker,
        TcpProxy((pg.hostname or "127.0.0.1", pg.port or 5432)) as database,
        TcpProxy(("127.0.0.1", broker.port)) as cut,
    ):
        try:
            yield edges, centre, broker, database, cut
        finally:
            for process in [*(e.process for e in edges if e.process), *centre.ingesters, simulator]:
                if process.poll() is None:
                    process.kill()
                process.wait(timeout=30)
                if process.stdout is not None:
                    process.stdout.close()
                    process.stderr.close()  # type: ignore[union-attr]


def test_three_sites_two_ingesters_and_every_fault_lose_nothing_and_store_nothing_twice(
    world, converge_pm
):
    edges, centre, broker, database, cut = world
    db_url = via(database, centre.db)
    first = start_ingester(centre, broker.url, db_url)
    start_ingester(centre, broker.url, db_url)
    for edge in edges:
        start_edge(edge, via(cut, broker.url) if edge.site == "east" else broker.url)
    progress(centre, 6, "all running")

    first.send_signal(signal.SIGKILL)  # killed mid-way: what it held unacknowledged comes again
    first.wait(timeout=30)
    progress(centre, 3, "one ingester killed")
    start_ingester(centre, broker.url, db_url)

    broker.restart()
    progress(centre, 3, "after the broker restarted")

    database.stop()  # PostgreSQL away: ingesters keep their message, sites keep their outbox
    north = next(e for e in edges if e.site == "north")
    waiting = north.outbox()
    wait_until(lambda: north.outbox() >= waiting + 3, "batches waiting while the store is away")
    database.start()
    progress(centre, 3, "the store back")

    east = next(e for e in edges if e.site == "east")
    cut.stop()  # one site cut off
    waiting = east.outbox()
    wait_until(lambda: east.outbox() >= waiting + 3, "the cut site's batches waiting")
    cut.start()
    wait_until(lambda: east.outbox() <= 1, "the cut site's outbox drained once back", within=60)

    bad = answers(
        converge_pm,
        broker.url,
        {
            "malformed": (batch_topic("north", "plc-north"), b"garbage"),
            "unknown site": (batch_topic("west", "plc-west"), b"garbage"),
            "oversized": (batch_topic("north", "plc-north"), b"x" * (2 << 20)),
        },
    )
    assert {what: r.status for what, r in bad.items()} == dict.fromkeys(bad, "quarantined")

    for edge in edges:
        assert edge.process is not None
        edge.process.send_signal(signal.SIGTERM)
    for edge in edges:
        assert edge.process is not None
        out, err = edge.process.communicate(timeout=120)
        assert edge.process.returncode == 0, err
        assert "Traceback" not in err
        assert "0 waiting in the outbox" in out + err, out + err

    # every batch sealed is stored centrally exactly once; no outbox row left before its commit
    central = stored(centre.db)
    assert len(central) == len(set(central))
    sealed = set().union(*(edge.sealed() for edge in edges))
    assert set(central) == sealed and len(sealed) >= 30
    for edge in edges:
        assert edge.outbox() == 0
        assert set(edge.deleted()) <= set(central)
        assert len(edge.deleted()) == len(edge.sealed())

    for process in centre.ingesters[1:]:
        assert process.poll() is None, "an ingester died"
        process.send_signal(signal.SIGTERM)
        out, err = process.communicate(timeout=60)
        assert process.returncode == 0 and "Traceback" not in err, err

    sites = {
        edge.site: Trust.from_json(export(edge.keys, edge.folder / "public")).keys for edge in edges
    }
    trusted = Trust(Trust.from_json(export(centre.keys, centre.folder / "public")).keys, sites)
    report = verify_store(CentralStore.attach(centre.db, Actor.job("auditor")), trusted)
    assert report.ok, report.problems
    assert report.counts["site logs witnessed"] == 3
    assert report.counts["quarantined messages"] == 3

    cosigned_by = Trust.from_json(export(centre.keys, centre.folder / "witness-key"))
    for edge in edges:
        site_store = SiteStore.attach_site(
            str(edge.db), Actor.job("auditor"), Publishing(edge.site, "test", edge.keep_records)
        )
        own = Trust.from_json(export(edge.keys, edge.folder / "pub"))
        witness = edge.folder / "witness.jsonl"
        site_report = verify_store(site_store, own, witness=witness, cosigned_by=cosigned_by)
        assert site_report.ok, (edge.site, site_report.problems)
        assert site_report.counts["cosignatures"] >= 2
        assert not any("up to" in note for note in site_report.notes), site_report.notes
