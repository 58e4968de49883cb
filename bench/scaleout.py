"""Benchmark: readings stored centrally through the broker, against writing them directly.

    python bench/scaleout.py                        # 600,000 readings, 1 and 2 ingesters
    python bench/scaleout.py --readings 300000
    python bench/scaleout.py --broker mqtt://host:1883 --postgres postgresql://user@host/db

A site's batches are sealed first (not timed), as ``converge run --publish``
seals them, into a site store's outbox: 10 devices x 100 points read every
second, 60 s windows (6,000 readings a batch), signed by two keys. Then the
same batches are stored in a fresh PostgreSQL database three ways:

- **direct** (the floor): one process writes each batch with ``Store.write``,
  the embedded path (batch, signatures, records by binary COPY and its audit
  entry, one transaction each), no broker and no check;
- **1 ingester** and **2 ingesters**: ``converge ingest`` processes take them
  from the broker (MQTT 5, QoS 1, a shared subscription), each verifies
  (signatures, records against the root, plan, chain), stores, answers and
  acknowledges; the site's publisher sends the outbox (a thread of this
  process) and the time runs until every batch is answered.

Each run prints the batches lost (sealed, not stored) and duplicated (stored
twice, or a reading stored twice); both must be 0. Target (issue 14): one
ingester reaches >= 50 % of the direct rate. The broker and PostgreSQL default
to the ones ``tests/services.sh`` starts (``make bench``).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

from ingest import (  # bench/ is on the path when run as a script
    AUDIT_KEY,
    SIGNING_KEYS,
    START,
    SUSTAINED,
    WINDOW_MS,
    _collect,
    machine,
    plans,
    postgres_version,
    readings,
    scratch_databases,
)

from engine.audit import Actor
from engine.central.publisher import PublishConfig, Publisher
from engine.plugin_manager import make_plugin_manager
from engine.store.site import Publishing, SiteStore
from engine.store.spool import Spool
from engine.store.store import Store
from engine.store.wire import BatchMessage
from engine.transport import BrokerOptions, open_transport
from plugins.filekeys.store import FileKeyStore

READINGS = 600_000
PASSPHRASE = "correct horse battery staple"
SITE = "bench-site"
TARGET_SHARE = 0.5


@dataclass(frozen=True)
class Sealed:
    """The site's sealed batches: its store (kept pristine) and keys."""

    store: Path
    keys: Path
    batches: int
    readings: int
    wire_bytes: int
    """The batches' messages, as they travel."""


def seal(workdir: Path, count: int) -> Sealed:
    """``count`` readings sealed into a new site store's outbox (as a publishing run seals)."""
    made = START - timedelta(days=1)
    keys = FileKeyStore(workdir / "site-keys", passphrase=PASSPHRASE, clock=lambda: made)
    for name in (*SIGNING_KEYS, AUDIT_KEY):
        keys.generate(name)
    path = workdir / "site.db"
    store = SiteStore.attach_site(
        str(path), Actor.job("bench"), Publishing(SITE, "bench", keep_records=False)
    )
    store.prepare()
    store.deploy_plans([(p, None) for p in plans(SUSTAINED)])
    store.record_keys([v for name in keys.names() for v in keys.versions(name)])
    spool = Spool(workdir / "spool.db")
    try:
        asyncio.run(
            _collect(store, keys, spool, readings(count, SUSTAINED), SUSTAINED, writer="process")  # type: ignore[arg-type]
        )
    finally:
        spool.close()
    batches = store.outbox_size()
    with store.reading() as conn:
        wire = int(conn.exec_driver_sql("SELECT sum(length(message)) FROM outbox").scalar_one())
    store.close()
    return Sealed(path, workdir / "site-keys", batches, count, wire)


def copy(source: Path, target: Path) -> None:
    with (
        contextlib.closing(sqlite3.connect(source)) as src,
        contextlib.closing(sqlite3.connect(target)) as dst,
    ):
        src.backup(dst)


# --- the floor ---------------------------------------------------------------------------


def direct(sealed: Sealed, url: str) -> float:
    """Seconds for one process to write every batch with ``Store.write`` (parsing not timed)."""
    site = SiteStore.attach_site(
        str(sealed.store), Actor.job("bench"), Publishing(SITE, "bench", False)
    )
    messages = [BatchMessage.parse(site.message(row.id) or b"") for row in site.pending()]
    site.close()
    keys = FileKeyStore(sealed.keys, passphrase=PASSPHRASE)
    store = Store.open(url, actor=Actor.job("bench-direct"))
    store.deploy_plans([(p, None) for p in plans(SUSTAINED)])
    store.record_keys([v for name in keys.names() for v in keys.versions(name)])
    batches = [(m.sealed, m.log_entry().time) for m in messages]
    started = time.perf_counter()
    for batch, at in batches:
        store.write(batch, datetime.fromisoformat(at))
    elapsed = time.perf_counter() - started
    store.close()
    return elapsed


# --- through the broker ------------------------------------------------------------------


def centre(workdir: Path, sealed: Sealed) -> tuple[Path, Path]:
    """The centre's key folder and the folder of the sites it trusts."""
    keys = FileKeyStore(workdir / "centre-keys", passphrase=PASSPHRASE)
    for name in ("audit-log", "witness"):
        if name not in keys.names():
            keys.generate(name)
    trust = workdir / "trust" / SITE
    trust.mkdir(parents=True, exist_ok=True)
    site_keys = FileKeyStore(sealed.keys, passphrase=PASSPHRASE)
    for name in site_keys.names():
        versions = [v.as_dict() for v in site_keys.versions(name)]
        (trust / f"{name}.json").write_text(json.dumps(versions))
    return workdir / "centre-keys", workdir / "trust"


def ingesters(
    count: int, broker: str, url: str, keys: Path, trust: Path
) -> list[subprocess.Popen[str]]:
    """``count`` ``converge ingest`` processes, each subscribed (it says so) before returning."""
    env = {**os.environ, "CONVERGE_KEY_PASSPHRASE": PASSPHRASE}
    group = f"bench-{os.getpid()}-{time.monotonic_ns()}"
    started = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "engine.cli",
                "ingest",
                "--broker",
                broker,
                "--db",
                url,
                "--trust",
                str(trust),
                "--keys",
                str(keys),
                "--group",
                group,
            ],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(count)
    ]
    for process in started:
        assert process.stdout is not None
        line = process.stdout.readline()
        if not line.startswith("ingesting"):
            raise SystemExit(f"an ingester did not start: {line}{process.stderr.read()}")  # type: ignore[union-attr]
    return started


def through(sealed: Sealed, workdir: Path, broker: str, url: str, count: int) -> float:
    """Seconds from the publisher's start (its keys and plans go first) until the centre
    answered the last batch."""
    keys, trust = centre(workdir, sealed)
    run = workdir / f"site-{count}.db"
    copy(sealed.store, run)
    processes = ingesters(count, broker, url, keys, trust)
    try:
        store = SiteStore.attach_site(
            str(run), Actor.job("bench"), Publishing(SITE, f"bench-{count}", False)
        )
        site_keys = FileKeyStore(sealed.keys, passphrase=PASSPHRASE)
        transport = open_transport(make_plugin_manager(), broker, BrokerOptions())
        publisher = Publisher(store, transport, site_keys, PublishConfig(resend_s=120.0))
        stop = threading.Event()
        started = time.perf_counter()
        thread = publisher.start(stop)
        while store.outbox_size() and thread.is_alive():
            time.sleep(0.05)
        elapsed = time.perf_counter() - started
        stop.set()
        thread.join()
        store.close()
    finally:
        for process in processes:
            process.send_signal(signal.SIGTERM)
            process.communicate(timeout=60)
    return elapsed


# --- counting ------------------------------------------------------------------------------


def counted(url: str, sealed: Sealed) -> tuple[int, int]:
    """Batches lost (sealed, not stored) and duplicated (a batch or a reading stored twice)."""
    import psycopg
    from ingest import libpq_url

    with psycopg.connect(libpq_url(url)) as db:
        batches, distinct, counts = db.execute(
            "SELECT count(*), count(DISTINCT (device, root)), coalesce(sum(count), 0) FROM batches"
        ).fetchone() or (0, 0, 0)
        rows = db.execute("SELECT count(*) FROM readings").fetchone()
    lost = sealed.batches - distinct
    duplicated = (batches - distinct) + max(0, (rows[0] if rows else 0) - counts)
    return lost, duplicated


def stored_bytes(url: str) -> int:
    """Bytes PostgreSQL holds for the evidence tables (data and indexes)."""
    import psycopg
    from ingest import libpq_url

    tables = ("readings", "gap_records", "batches", "batch_signatures", "audit_entries")
    query = " + ".join(f"pg_total_relation_size('{t}')" for t in tables)
    with psycopg.connect(libpq_url(url)) as db:
        row = db.execute(f"SELECT {query}").fetchone()
    return int(row[0]) if row else 0


def report(name: str, seconds: float, sealed: Sealed, floor: float | None, url: str) -> None:
    rate = sealed.readings / seconds
    lost, duplicated = counted(url, sealed)
    share = "" if floor is None else f"  {floor / seconds:>5.0%} of direct"
    print(
        f"  {name:<12} {seconds:7.2f} s {rate:>10,.0f} readings/s{share}"
        f"   lost {lost}, duplicated {duplicated}"
    )
    if lost or duplicated:
        raise SystemExit(f"{name}: {lost} batches lost, {duplicated} duplicated")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--readings", type=int, default=READINGS)
    parser.add_argument("--broker", default=os.environ.get("CONVERGE_MOSQUITTO"))
    parser.add_argument("--postgres", default=os.environ.get("CONVERGE_POSTGRES_URL"))
    args = parser.parse_args()
    if not (args.broker and args.postgres):
        print("scale-out: skipped (no --broker and --postgres, and tests/services.sh not started)")
        return
    print(machine(postgres_version(args.postgres)))
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        sealed = seal(workdir, args.readings)
        shape = SUSTAINED.describe(sealed.readings)
        print(
            f"{sealed.readings:,} readings in {sealed.batches} batches ({shape};"
            f" {WINDOW_MS // 1000} s windows), each signed by {' and '.join(SIGNING_KEYS)}"
        )
        with scratch_databases(args.postgres, 3) as (floor_url, one_url, two_url):
            floor = direct(sealed, floor_url)
            report("direct", floor, sealed, None, floor_url)
            on_disk = stored_bytes(floor_url)
            one = through(sealed, workdir, args.broker, one_url, 1)
            report("1 ingester", one, sealed, floor, one_url)
            two = through(sealed, workdir, args.broker, two_url, 2)
            report("2 ingesters", two, sealed, floor, two_url)
        print(
            f"  bytes per reading: {sealed.wire_bytes / sealed.readings:.0f} on the wire,"
            f" {on_disk / sealed.readings:.0f} stored in PostgreSQL (tables and indexes)"
        )
        share = floor / one
        verdict = "PASS" if share >= TARGET_SHARE else "FAIL"
        print(f"  {verdict} one ingester {share:.0%} of direct (target >= {TARGET_SHARE:.0%})")


if __name__ == "__main__":
    main()
