"""The path to a central store, piece by piece, against a real Mosquitto and PostgreSQL.

A site store queues each batch in the transaction that logs it; a publisher
sends the outbox through the MQTT transport and an ingester (in a thread of
this process, with the real transport and store) verifies, stores or
quarantines, answers and acknowledges. Bad input of every kind the issue
names is quarantined or refused with its reason, and the ingester goes on;
the centre catches a site log rolled back or forked. `test_scaleout.py`
runs the same with real processes and faults.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import secrets
import sqlite3
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from evidence_kit import PASSPHRASE, Site, collect, records
from key_exports import export
from mosquitto import Mosquitto
from waiting import wait_until

from engine.audit import Actor, AuditEntry, seal_with
from engine.central.ingester import IngestConfig, Ingester
from engine.central.publisher import PublishConfig, Publisher
from engine.central.trust import SiteTrust
from engine.evidence import EvidenceConfig
from engine.keys import KeyStore
from engine.plugin_manager import make_plugin_manager
from engine.sign.batch import Signature
from engine.sign.leaf import instant, point_map_of, point_of
from engine.sign.merkle import LEAF_PREFIX, root_of_hashes
from engine.store.central import CentralStore
from engine.store.sealed import SealedBatch
from engine.store.site import Publishing, SiteStore
from engine.store.spool import Spool
from engine.store.wire import (
    BatchMessage,
    CheckpointMessage,
    Reply,
    batch_topic,
    checkpoint_topic,
)
from engine.transport import BrokerOptions, Message, Subscription, Transport, open_transport
from engine.verify.trust import Trust
from engine.verify.whole import verify_store
from plugins.filekeys.store import FileKeyStore

SITE = "basel"
FAST = PublishConfig(resend_s=2.0, retry_s=0.2, drain_s=30.0, poll_s=0.02)


# --- fixtures ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mosquitto]:
    """A broker of this module's own: its ingesters take every site's topics."""
    with Mosquitto(tmp_path_factory.mktemp("mosquitto")) as running:
        yield running


@pytest.fixture(scope="module")
def centre_keys(tmp_path_factory: pytest.TempPathFactory) -> FileKeyStore:
    keys = FileKeyStore(tmp_path_factory.mktemp("centre-keys"), passphrase=PASSPHRASE)
    for name in ("audit-log", "witness"):
        keys.generate(name)
    return keys


@pytest.fixture
def trust(evidence_site: Site, tmp_path: Path) -> Path:
    export(evidence_site.key_store(), tmp_path / "trust" / SITE)
    return tmp_path / "trust"


@dataclass(frozen=True)
class Centre:
    """The broker, the centre's keys, the sites it trusts and a fresh central database."""

    broker: Mosquitto
    keys: FileKeyStore
    trust: Path
    db: str


@pytest.fixture
def centre(broker, centre_keys, trust, fresh_postgres_url) -> Centre:
    return Centre(broker, centre_keys, trust, fresh_postgres_url)


def transport(url: str) -> Transport:
    return open_transport(make_plugin_manager(), url, BrokerOptions())


@contextlib.contextmanager
def ingesting(
    db: str, trust: Path, keys: KeyStore, url: str, **config: object
) -> Iterator[Ingester]:
    """An ingester serving in a thread until the block ends."""
    store = CentralStore.attach(db, Actor.job("ingest"))
    ingester = Ingester(store, SiteTrust.from_folder(trust), keys, IngestConfig(**config))  # type: ignore[arg-type]
    stop = threading.Event()
    assert ingester.start(transport(url), stop)
    thread = threading.Thread(target=ingester.serve, args=(stop,), daemon=True)
    thread.start()
    try:
        yield ingester
    finally:
        assert thread.is_alive(), "the ingester's thread died"
        stop.set()
        thread.join(timeout=30)
        ingester.finish()


def site_store(site: Site, tmp_path: Path, keep_records: bool = False) -> SiteStore:
    """A site store with ``seconds`` of the plant's records sealed into its outbox."""
    publishing = Publishing(SITE, "edge-1", keep_records)
    store = SiteStore.attach_site(
        str(tmp_path / "site.db"), Actor.job("collector"), publishing, tmp_path / "witness.jsonl"
    )
    store.prepare()
    store.deploy_plans([(p, None) for p in site.plans])
    keys = site.key_store()
    store.record_keys([v for name in keys.names() for v in keys.versions(name)])
    return store


def seal(site: Site, store: SiteStore, tmp_path: Path, seconds: int, start: datetime) -> None:
    spool = Spool(tmp_path / "spool.db")
    items = list(records(site, seconds, start))
    asyncio.run(collect(site, store, spool, items, EvidenceConfig(writer="thread")))
    spool.close()


def checkpoint(site: Site, store: SiteStore) -> None:
    seal_ = seal_with(site.key_store(), "audit-log", datetime.now(UTC))
    store.checkpoint(seal_)


@contextlib.contextmanager
def publishing(store: SiteStore, site: Site, url: str) -> Iterator[Publisher]:
    """A publisher sending until the block ends, then draining."""
    publisher = Publisher(store, transport(url), site.key_store(), FAST)
    stop = threading.Event()
    thread = publisher.start(stop)
    try:
        yield publisher
    finally:
        stop.set()
        thread.join(timeout=60)


def count(db: str, table: str) -> int:
    engine = sa.create_engine(db, poolclass=sa.NullPool)
    with engine.connect() as conn:
        return int(conn.execute(sa.text(f"SELECT count(*) FROM {table}")).scalar_one())


def central_trust(site: Site, centre_keys: KeyStore, tmp_path: Path) -> Trust:
    """The centre's keys, and the site's for its own plans and batches (audit verify
    --site-trust): the site's audit-log is another key than the centre's of that name."""
    own = Trust.from_json(export(site.key_store(), tmp_path / "all" / "site"))
    centre = Trust.from_json(export(centre_keys, tmp_path / "all" / "centre"))
    return Trust(centre.keys, {"plant-basel": own.keys})


# --- the site store ---------------------------------------------------------------------


@pytest.mark.parametrize("keep_records", [False, True], ids=["log-only", "with-records"])
def test_each_sealed_batch_is_logged_and_queued_in_one_transaction(
    evidence_site, tmp_path, keep_records
):
    store = site_store(evidence_site, tmp_path, keep_records)
    seal(evidence_site, store, tmp_path, 150, datetime.now(UTC) - timedelta(hours=1))
    pending = store.pending()
    kind = "batch.stored" if keep_records else "batch.sealed"
    with store.reading() as conn:
        entries = conn.execute(
            sa.text("SELECT seq FROM audit_entries WHERE kind = :k"), {"k": kind}
        )
        logged = {seq for (seq,) in entries}
    assert len(pending) == len(logged) >= 12
    for row in pending:
        message = BatchMessage.parse(store.message(row.id) or b"")
        entry = message.log_entry()  # canonical, recording exactly this batch
        assert entry.seq in logged and entry.kind == kind
        assert message.sealed.head.root == row.root and message.site == SITE
    report = verify_store(store, evidence_site.trust())
    assert report.ok, report.problems
    assert report.counts["batches"] == (len(pending) if keep_records else 0)


# --- through the broker -----------------------------------------------------------------


class Sender:
    """Publishes raw messages as a site would (again every 2 s until answered), and keeps the
    answers by correlation."""

    REPLY = f"converge/v1/{SITE}/reply/test-sender"

    def __init__(self, url: str) -> None:
        self.answers: dict[bytes, Reply] = {}
        self.link = transport(url).open(
            "test-sender", [Subscription(self.REPLY)], self._answered, durable=False
        )

    def _answered(self, message: Message, ack: object) -> None:
        self.answers[message.correlation or b""] = Reply.parse(message.payload)
        ack()  # type: ignore[operator]

    def send(self, topic: str, payload: bytes, tag: str) -> Reply:
        key = tag.encode()
        sent = [0.0]

        def answered() -> bool:
            if key in self.answers:
                return True
            if time.monotonic() - sent[0] > 2.0 and self.link.connected:
                self.link.publish(Message(topic, payload, self.REPLY, key))
                sent[0] = time.monotonic()
            return False

        wait_until(answered, f"an answer to {tag}")
        return self.answers[key]

    def close(self) -> None:
        self.link.close()


def stored_batches(db: str) -> set[tuple[str, bytes]]:
    engine = sa.create_engine(db, poolclass=sa.NullPool)
    with engine.connect() as conn:
        return {(d, bytes(r)) for d, r in conn.execute(sa.text("SELECT device, root FROM batches"))}


def quarantined(db: str) -> list[tuple[str, str, str, bool]]:
    engine = sa.create_engine(db, poolclass=sa.NullPool)
    query = "SELECT site, kind, reason, message IS NOT NULL FROM quarantine ORDER BY id"
    with engine.connect() as conn:
        return [tuple(row) for row in conn.execute(sa.text(query))]  # type: ignore[misc]


def test_every_batch_reaches_the_centre_once_and_the_site_log_is_cosigned(
    evidence_site, centre, tmp_path
):
    store = site_store(evidence_site, tmp_path)
    seal(evidence_site, store, tmp_path, 150, datetime.now(UTC) - timedelta(hours=1))
    sealed = {(r.device, r.root) for r in store.pending()}
    first = store.pending()[0]
    again = store.message(first.id) or b""
    with ingesting(centre.db, centre.trust, centre.keys, centre.broker.url, checkpoint_s=1.0):
        with publishing(store, evidence_site, centre.broker.url) as publisher:
            wait_until(publisher.idle, lambda: f"an empty outbox ({store.outbox_size()} left)")
        sender = Sender(centre.broker.url)
        reply = sender.send(batch_topic(SITE, first.device), again, "again")
        sender.close()
    assert (reply.status, reply.reason) == ("duplicate", "stored before")
    assert stored_batches(centre.db) == sealed and store.outbox_size() == 0
    central = CentralStore.attach(centre.db, Actor.job("auditor"))
    report = verify_store(central, central_trust(evidence_site, centre.keys, tmp_path))
    assert report.ok, report.problems
    assert report.counts["site logs witnessed"] == 1
    cosigned_by = Trust.from_json(export(centre.keys, tmp_path / "witness-key"))
    site_report = verify_store(store, evidence_site.trust(), cosigned_by=cosigned_by)
    assert site_report.ok, site_report.problems
    assert site_report.counts["cosignatures"] >= 1


def forked(site: Site, message: BatchMessage, mapped: bool = True) -> bytes:
    """Another batch after the same previous batch, validly signed by the site's keys: two
    readings of two points swapped. Its statement signs their new point map, or (not
    ``mapped``) the old one, which then says each of the two is of the other's point."""
    sealed = message.sealed
    head = sealed.head
    readings = [p for p in range(len(sealed.leaves)) if p not in sealed.gaps]
    i = readings[0]
    j = next(p for p in readings if point_of(sealed.leaves[p]) != point_of(sealed.leaves[i]))
    swapped = list(sealed.leaves)
    swapped[i], swapped[j] = swapped[j], swapped[i]  # two readings in another order: another root
    leaves = tuple(swapped)
    root = root_of_hashes([_leaf_hash(leaf) for leaf in leaves])
    signed = hashlib.sha256(point_map_of(leaves)).digest() if mapped else head.point_map
    statement = replace(head, root=root, point_map=signed).to_bytes()
    at = datetime.now(UTC)
    signatures = tuple(
        Signature(k, site.key_store().signer(k, at).sign(statement)) for k in sealed.keys
    )
    other = SealedBatch(statement, sealed.keys, sealed.waiver, signatures, leaves, sealed.gaps)
    entry = AuditEntry(99, instant(at), "batch.sealed", "forger", other.audit_payload())
    return BatchMessage(SITE, "edge-1", message.origin, entry.to_bytes(), other).to_bytes()


def _leaf_hash(leaf: bytes) -> bytes:
    return hashlib.sha256(LEAF_PREFIX + leaf).digest()


def untrusted(message: BatchMessage) -> bytes:
    """The batch signed by keys of the right names that the centre does not trust."""
    sealed = message.sealed
    stranger = Ed25519PrivateKey.generate()
    signatures = tuple(Signature(k, stranger.sign(sealed.statement)) for k in sealed.keys)
    return replace(message, sealed=replace(sealed, signatures=signatures)).to_bytes()


def test_bad_input_is_quarantined_or_refused_with_its_reason_and_the_ingester_goes_on(
    evidence_site, centre, tmp_path
):
    store = site_store(evidence_site, tmp_path)
    seal(evidence_site, store, tmp_path, 150, datetime.now(UTC) - timedelta(hours=1))
    rows = store.pending()
    messages = {row.id: store.message(row.id) or b"" for row in rows}
    limit = max(len(m) for m in messages.values()) + 1024
    device = rows[0].device
    topic = batch_topic(SITE, device)
    with ingesting(centre.db, centre.trust, centre.keys, centre.broker.url, max_message=limit):
        with publishing(store, evidence_site, centre.broker.url) as publisher:
            wait_until(publisher.idle, lambda: f"an empty outbox ({store.outbox_size()} left)")
        sender = Sender(centre.broker.url)
        stored = BatchMessage.parse(messages[rows[1].id])
        other = batch_topic(SITE, stored.sealed.head.device)
        answers = {
            "untrusted key": sender.send(other, untrusted(stored), "untrusted"),
            "replayed": sender.send(topic, messages[rows[0].id], "replayed"),
            "forked": sender.send(other, forked(evidence_site, stored), "forked"),
            "mislabelled": sender.send(
                other, forked(evidence_site, stored, mapped=False), "mislabelled"
            ),
            "malformed": sender.send(topic, b"\x00not a message at all", "malformed"),
            "oversized": sender.send(topic, b"x" * (limit + 1), "oversized"),
            "unknown site": sender.send(
                batch_topic("nowhere", device), messages[rows[0].id], "unknown"
            ),
            "bad topic": sender.send("converge/v1/-site/x/batch", b"{}", "topic"),
        }
        sender.close()
    statuses = {what: reply.status for what, reply in answers.items()}
    assert statuses == {
        "untrusted key": "quarantined",
        "replayed": "duplicate",
        "forked": "quarantined",
        "mislabelled": "quarantined",
        "malformed": "quarantined",
        "oversized": "quarantined",
        "unknown site": "quarantined",
        "bad topic": "quarantined",
    }
    assert "signature of key" in answers["untrusted key"].reason
    assert "does not verify" in answers["untrusted key"].reason
    assert "chain forked" in answers["forked"].reason
    assert "points are not the point map its statement signs" in answers["mislabelled"].reason
    assert "malformed" in answers["malformed"].reason
    assert f"more than the {limit} accepted" in answers["oversized"].reason
    assert "unknown site nowhere" in answers["unknown site"].reason
    refused = quarantined(centre.db)
    assert len(refused) == 7  # the replayed batch is not refused: it is stored once
    kept = {reason.split(":")[0]: kept for _, _, reason, kept in refused}
    assert not [k for r, k in kept.items() if "accepted" in r and k]  # the oversized one: not kept
    assert stored_batches(centre.db) == {(r.device, r.root) for r in rows}
    central = CentralStore.attach(centre.db, Actor.job("auditor"))
    report = verify_store(central, central_trust(evidence_site, centre.keys, tmp_path))
    assert report.ok, report.problems
    assert report.counts["quarantined messages"] == 7
    assert any("unknown site nowhere" in note for note in report.notes)


# --- witnessing -------------------------------------------------------------------------


def copy(source: Path, target: Path) -> None:
    """A copy of a SQLite database in WAL mode, its last transactions included."""
    with (
        contextlib.closing(sqlite3.connect(source)) as src,
        contextlib.closing(sqlite3.connect(target)) as dst,
    ):
        src.backup(dst)


def test_the_centre_catches_a_site_log_rolled_back_or_forked(evidence_site, centre, tmp_path):
    store = site_store(evidence_site, tmp_path)
    checkpoint(evidence_site, store)
    first_size, first_note = store.newest_checkpoint() or (0, "")
    fork_dir = tmp_path / "fork"
    fork_dir.mkdir()
    with ingesting(centre.db, centre.trust, centre.keys, centre.broker.url):
        with publishing(store, evidence_site, centre.broker.url) as publisher:
            wait_until(publisher.idle, "the first checkpoint cosigned")
        copy(tmp_path / "site.db", fork_dir / "site.db")  # the same log, as of now
        store.log("spool.full", {"spool": "a", "dropped": 0, "max_bytes": 1})
        checkpoint(evidence_site, store)
        with publishing(store, evidence_site, centre.broker.url) as publisher:
            wait_until(publisher.idle, "the second checkpoint cosigned")
        cosigned = store.cosigned_size()
        assert cosigned > first_size
        # a rollback: the site shows the centre its older, smaller log
        sender = Sender(centre.broker.url)
        older = CheckpointMessage(SITE, "edge-1", 0, (), first_note)
        rolled = sender.send(checkpoint_topic(SITE), older.to_bytes(), "rolled back")
        sender.close()
        # a fork: the copy goes on with other entries, and asks to be cosigned
        fork = SiteStore.attach_site(
            str(fork_dir / "site.db"), Actor.job("collector"), Publishing(SITE, "edge-2", False)
        )
        fork.log("spool.full", {"spool": "b", "dropped": 0, "max_bytes": 2})
        fork.log("spool.full", {"spool": "c", "dropped": 0, "max_bytes": 3})
        checkpoint(evidence_site, fork)
        with publishing(fork, evidence_site, centre.broker.url) as publisher:
            wait_until(lambda: publisher.refused_size > 0, "the fork refused")
    assert rolled.status == "quarantined"
    assert f"site {SITE} rolled its log" in rolled.reason
    assert f"the centre cosigned {cosigned} entries of it" in rolled.reason
    reasons = [reason for _, kind, reason, _ in quarantined(centre.db)]
    assert any(f"site {SITE} showed the centre a fork" in r for r in reasons), reasons
    # the site's own verify sees a rollback too, once a cosignature outlives it
    cosigned_by = Trust.from_json(export(centre.keys, tmp_path / "witness-key"))
    assert verify_store(store, evidence_site.trust(), cosigned_by=cosigned_by).ok
    with store.transaction() as conn:
        conn.execute(sa.text("DELETE FROM audit_entries WHERE seq >= :s"), {"s": first_size})
        conn.execute(sa.text("DELETE FROM checkpoints WHERE size > :s"), {"s": first_size})
    report = verify_store(store, evidence_site.trust(), cosigned_by=cosigned_by)
    assert any(
        f"the centre cosigned {cosigned} entries of this log, the store holds {first_size}"
        in p.message
        for p in report.problems
    ), report.problems


# --- the transport ----------------------------------------------------------------------


def test_the_mqtt_transport_speaks_tls_with_a_password_and_acknowledges_on_request(tmp_path):
    """The shared broker's TLS listener wants a user and password: a message goes through,
    and its handler acknowledges it when it chooses to."""
    url = os.environ.get("CONVERGE_MOSQUITTO_TLS")
    if not url:
        pytest.skip("no TLS broker (bash tests/services.sh start)")
    options = BrokerOptions(
        os.environ["CONVERGE_MOSQUITTO_CA"],
        os.environ["CONVERGE_MOSQUITTO_USER"],
        os.environ["CONVERGE_MOSQUITTO_PASSWORD"],
    )
    mqtt = open_transport(make_plugin_manager(), url, options)
    topic = f"converge-test/{secrets.token_hex(6)}"
    got: list[Message] = []
    acked = threading.Event()

    def handler(message: Message, ack: object) -> None:
        got.append(message)
        ack()  # type: ignore[operator]
        acked.set()

    receiver = mqtt.open(
        f"r-{topic[-12:]}", [Subscription(topic, group="g")], handler, durable=False
    )
    sender = mqtt.open(f"s-{topic[-12:]}", [], lambda m, a: None, durable=False)
    try:
        wait_until(lambda: receiver.connected and sender.connected, "both connected over TLS")

        def delivered() -> bool:
            if not got:
                sender.publish(Message(topic, b"payload", "reply/here", b"corr"))
            return acked.wait(0.5)

        wait_until(delivered, "the message delivered and acknowledged")
    finally:
        receiver.close()
        sender.close()
    assert (got[0].payload, got[0].reply_to, got[0].correlation) == (
        b"payload",
        "reply/here",
        b"corr",
    )
