"""An ingester: the sites' messages from the broker into the central store, verified first.

``converge ingest`` runs one :class:`Ingester`. Any number of them share the
sites' topics through one shared subscription (a transport ``group``), and
each message goes to one of them. The transport's thread only puts what
arrives in the inbox; the ingester's own thread handles one message at a
time:

1. it checks what needs no database: the topic, the size, the site, the
   message's form, a batch's log entry, signatures (by the site's own keys,
   valid when the site sealed it) and records (of the right type, hashing to
   the signed root);
2. in one transaction under the store's lock it checks what does (the
   device is the site's, the plan is deployed and asks for those keys, the
   batch continues its device's chain), stores the batch with its
   ``batch.stored`` entry (or quarantines it, with a ``message.quarantined``
   entry) and, when one is due, a checkpoint of the central log;
3. after the commit it answers on the message's reply topic, then
   acknowledges the message to the broker.

The first step runs in a thread of its own, a few messages ahead of the
second, so that hashing one batch overlaps waiting for the store to commit
the one before (the order of messages is kept). So a message is
acknowledged only once its outcome is committed: an
ingester killed before that leaves it unacknowledged, and the broker gives
it to another member, or loses it (eclipse-mosquitto/mosquitto#2662), in
which case the site sends it again, unanswered as it is. A batch delivered
twice is stored once (``duplicate``). While the store is away an ingester
keeps its message unacknowledged and tries again every second.
"""

from __future__ import annotations

import logging
import os
import queue
import socket
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import partial

from sqlalchemy import Connection
from sqlalchemy.exc import IntegrityError

from engine import audit
from engine.audit import DEFAULT_AUDIT_KEY
from engine.central import checks, witness
from engine.central.trust import SiteTrust
from engine.errors import CheckpointRefused, PlanRejected, StoreError
from engine.keys import KeyStore
from engine.plans.format import read_plan
from engine.sign import note
from engine.sign.cosignature import Cosignature, cosign
from engine.store import auditlog
from engine.store.central import CentralStore, Place, Refused
from engine.store.store import Recorded
from engine.store.wire import (
    INGEST_FILTERS,
    BatchMessage,
    CheckpointMessage,
    KeysMessage,
    MalformedMessage,
    PlanMessage,
    Reply,
    Topic,
    parse_topic,
)
from engine.transport import Ack, Link, Message, Subscription, Transport
from engine.verify.trust import Trust

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class IngestConfig:
    """How an ingester shares the work, signs, checkpoints and waits for the store."""

    group: str = "converge"
    audit_key: str = DEFAULT_AUDIT_KEY
    witness_key: str = "witness"
    max_message: int = 64 << 20
    checkpoint_s: float = 60.0
    checkpoint_entries: int = 1000
    retry_s: float = 1.0


Work = Callable[[], Reply]
"""What is left of a message once checked without the store: the part that needs it (a
refusal included), run by the committing thread."""
Handle = Callable[[Topic, Message, Trust], Work]
CHECKED_AHEAD = 4
"""Messages checked and waiting for the store, at most."""


class Ingester:
    """Takes messages into a :class:`CentralStore`; see the module docstring."""

    def __init__(
        self, store: CentralStore, sites: SiteTrust, keys: KeyStore, config: IngestConfig
    ) -> None:
        self.store, self.sites, self.keys, self.config = store, sites, keys, config
        for name in (config.audit_key, config.witness_key):
            keys.signer(name, datetime.now(UTC))  # both can sign, before anything is taken
        self.inbox: queue.Queue[tuple[Message, Ack]] = queue.Queue()
        self.stats: Counter[str] = Counter()
        self.link: Link | None = None
        self.name = ""
        """The ingester's client id at the broker, named in its start and stop entries."""
        self.last_checkpoint = time.monotonic()
        self.checkpointed = 0
        """The log's size at this ingester's last checkpoint."""
        self.handlers: dict[str, Handle] = {
            "batch": self._batch,
            "plan": self._plan,
            "keys": self._keys,
            "checkpoint": self._checkpoint,
        }

    # --- the run ---------------------------------------------------------------------------

    def start(self, transport: Transport, stop: threading.Event, client_id: str = "") -> bool:
        """Record the start in the store (trying again while it is away), then subscribe and
        wait until subscribed; ``False`` when stopped before."""
        self.name = client_id or f"converge-ingest-{socket.gethostname()}-{os.getpid()}"
        if not self._until_done(self._record_start, stop):
            return False
        subscriptions = [Subscription(f, self.config.group) for f in INGEST_FILTERS]
        self.link = transport.open(self.name, subscriptions, self._received, durable=False)
        while not self.link.connected:  # subscribed: what is sent from now on reaches the group
            if stop.wait(0.05):
                return False
        return True

    def serve(self, stop: threading.Event) -> None:
        """Check messages (a thread of its own) and commit them (this thread) until ``stop`` is
        set; a message in hand is finished first, unless the store is away: then it stays
        unacknowledged, for another ingester."""
        checked: queue.Queue[tuple[Message, Ack, Work]] = queue.Queue(CHECKED_AHEAD)
        checker = threading.Thread(
            target=self._check_all, args=(stop, checked), name="converge-check", daemon=True
        )
        checker.start()
        while not stop.is_set():
            try:
                message, ack, work = checked.get(timeout=0.2)
            except queue.Empty:
                self._idle()
                continue
            if self._until_done(partial(self._commit, message, work), stop):
                ack()
        checker.join()

    def _check_all(
        self, stop: threading.Event, checked: queue.Queue[tuple[Message, Ack, Work]]
    ) -> None:
        while not stop.is_set():
            try:
                message, ack = self.inbox.get(timeout=0.2)
            except queue.Empty:
                continue
            item = (message, ack, self.check(message))
            while not stop.is_set():
                try:
                    checked.put(item, timeout=0.2)
                    break
                except queue.Full:
                    continue

    def finish(self) -> None:
        """Record the stop (with a checkpoint) if the store answers, and disconnect."""
        if self.link is not None:
            self.link.close()
        try:
            said = {"ingester": self.name, **self.stats}
            stopped = Recorded(audit.now_instant(), entries=(("ingest.stopped", said),))
            self.store.record(stopped, self._seal())
        except StoreError as exc:
            log.warning("the stop is not recorded: %s", exc)
        self.store.close()

    def _record_start(self) -> None:
        self.store.prepare()
        config = self.config
        started = {
            "ingester": self.name,
            "group": config.group,
            "sites": sorted(self.sites.sites),
            "cosigner": audit.cosigner_name(config.witness_key),
            "max_message": config.max_message,
            "checkpoint_s": config.checkpoint_s,
            "checkpoint_entries": config.checkpoint_entries,
        }
        versions = [v for name in self.keys.names() for v in self.keys.versions(name)]
        start = Recorded(audit.now_instant(), keys=versions, entries=(("ingest.started", started),))
        self.store.record(start, self._seal())
        self.last_checkpoint = time.monotonic()
        self.checkpointed = self.store.checkpointed_size()

    def _until_done(self, work: Callable[[], object], stop: threading.Event) -> bool:
        """Do ``work``, again every ``retry_s`` while the store is away or refuses to sign
        (a message waits in the broker meanwhile); ``False`` if stopped."""
        warned = False
        while not stop.is_set():
            try:
                work()
            except StoreError as exc:
                if not warned:
                    refused = isinstance(exc, CheckpointRefused)
                    why = "refuses to sign a checkpoint" if refused else "is away"
                    log.warning("the store %s, trying again: %s", why, exc)
                    warned = True
                stop.wait(self.config.retry_s)
                continue
            return True
        return False

    def _received(self, message: Message, ack: Ack) -> None:
        self.inbox.put((message, ack))

    def _idle(self) -> None:
        """With nothing to do: sign a checkpoint of a tail older than ``checkpoint_s``."""
        if time.monotonic() - self.last_checkpoint < self.config.checkpoint_s:
            return
        try:
            with self.store.transaction() as conn:
                note_text = self._checkpoint_in(conn)
                size = self.store.checkpointed_size_in(conn)
        except StoreError:
            return
        self.store._witness(note_text)
        self.last_checkpoint, self.checkpointed = time.monotonic(), size

    def _seal(self) -> audit.Seal:
        return audit.seal_with(self.keys, self.config.audit_key, datetime.now(UTC))

    # --- one message -----------------------------------------------------------------------

    def handle(self, message: Message) -> Reply:
        """Check one message, commit what becomes of it, and answer it; raises StoreError
        (nothing answered) when the store is away."""
        return self._commit(message, self.check(message))

    def _commit(self, message: Message, work: Work) -> Reply:
        reply = work()
        self.stats[reply.status] += 1
        if message.reply_to and self.link is not None:
            answer = Message(message.reply_to, reply.to_bytes(), correlation=message.correlation)
            self.link.publish(answer)
        return reply

    def check(self, message: Message) -> Work:
        """The checks of ``message`` that need no store; what is left to do, which does."""
        try:
            return self._check(message)
        except Exception as exc:  # untrusted input must never stop an ingester: keep it
            log.exception("a message that cannot be checked, on %s", message.topic)
            reason = f"cannot be checked ({type(exc).__name__}: {exc})"
            refused = Refused("", message.topic, "message", reason, message.payload)
            return partial(self._refuse, refused)

    def _check(self, message: Message) -> Work:
        payload = message.payload
        try:
            topic = parse_topic(message.topic)
        except MalformedMessage as exc:
            return partial(self._refuse, Refused("", message.topic, "message", str(exc), payload))
        if len(payload) > self.config.max_message:
            reason = f"{len(payload)} bytes, more than the {self.config.max_message} accepted"
            refused = Refused(topic.site, message.topic, topic.kind, reason, payload, keep=False)
            return partial(self._refuse, refused)
        keys = self.sites.sites.get(topic.site)
        if keys is None:
            reason = f"unknown site {topic.site}: the centre trusts no key of it (--trust)"
            refused = Refused(topic.site, message.topic, topic.kind, reason, payload)
            return partial(self._refuse, refused)
        try:
            return self.handlers[topic.kind](topic, message, keys)
        except MalformedMessage as exc:
            refused = Refused(topic.site, message.topic, topic.kind, f"malformed: {exc}", payload)
            return partial(self._refuse, refused)

    def _refuse(self, refused: Refused) -> Reply:
        self.store.quarantine(refused)
        log.warning(
            "quarantined a %s message of %s: %s", refused.kind, refused.site, refused.reason
        )
        return Reply("quarantined", refused.reason)

    @staticmethod
    def _same_site(topic: Topic, said: str) -> None:
        if said != topic.site:
            raise MalformedMessage(f"it says it is site {said}'s, its topic names {topic.site}")

    # --- batches ---------------------------------------------------------------------------

    def _batch(self, topic: Topic, message: Message, keys: Trust) -> Work:
        parsed = BatchMessage.parse(message.payload)
        self._same_site(topic, parsed.site)
        sealed, entry = parsed.sealed, parsed.log_entry()
        head = sealed.head
        if head.device != topic.device:
            raise MalformedMessage(f"a batch of {head.device} on the topic of {topic.device}")

        def refused(reason: str) -> Refused:
            return Refused(topic.site, message.topic, "batch", reason, message.payload,
                           head.device, head.root)  # fmt: skip

        at, why = checks.sealed_at(entry.time, datetime.now(UTC))
        if at is None or why:
            return partial(self._refuse, refused(why or "no sealing time"))
        why = checks.check_signatures(sealed, keys, at) or checks.check_records(sealed)
        if why:
            return partial(self._refuse, refused(why))
        return partial(self._store_batch, topic, parsed, at, refused)

    def _store_batch(
        self,
        topic: Topic,
        parsed: BatchMessage,
        at: datetime,
        refused: Callable[[str], Refused],
    ) -> Reply:
        """The checks that need the store, and the batch stored, in one locked transaction."""
        try:
            return self._store_checked(topic, parsed, at, refused)
        except IntegrityError:
            return Reply("duplicate", "stored before")

    def _store_checked(
        self,
        topic: Topic,
        parsed: BatchMessage,
        at: datetime,
        refused: Callable[[str], Refused],
    ) -> Reply:
        store, sealed = self.store, parsed.sealed
        head = sealed.head
        with store.transaction() as conn:
            owner = store.device_site(conn, head.device)
            why = (
                f"no plan of {head.device} was deployed by site {topic.site}"
                if owner != topic.site
                else checks.check_plan(sealed, store.plan_in(conn, head.plan_digest))
            )
            place = (
                store.place(conn, head.device, head.previous_root, head.root) if not why else None
            )
            if place is Place.STORED:
                return Reply("duplicate", "stored before")
            if place is Place.WAITING:
                reason = f"the batch before it ({head.previous_root.hex()[:16]}…) is not stored yet"
                return Reply("retry", reason)
            if place is Place.AFTER_QUARANTINED:
                why = f"it follows batch {head.previous_root.hex()[:16]}…, which was quarantined"
            if place is Place.FORK:
                why = (
                    f"chain forked: the centre holds another batch of {head.device} after"
                    f" {head.previous_root.hex()[:16]}… (a replayed or re-sealed batch)"
                )
            if why:
                store.quarantine_in(conn, refused(why))
                return Reply("quarantined", why)
            seq = store.write_in(conn, sealed, at, new=True)
            note_text = self._checkpoint_if_due(conn, (seq or 0) + 1)
        store._witness(note_text)
        return Reply("stored")

    def _checkpoint_if_due(self, conn: Connection, size: int) -> str | None:
        """A checkpoint of the log's ``size`` entries when ``checkpoint_s`` have passed, or
        ``checkpoint_entries`` since this ingester's last one (others may have signed one
        since: counting from its own, it signs at least as often as it must)."""
        config = self.config
        due = time.monotonic() - self.last_checkpoint >= config.checkpoint_s
        if not due and size - self.checkpointed < config.checkpoint_entries:
            return None
        self.last_checkpoint, self.checkpointed = time.monotonic(), size
        return self._checkpoint_in(conn)

    def _checkpoint_in(self, conn: Connection) -> str | None:
        """A checkpoint in ``conn``'s transaction, no earlier than the newest one (ingesters on
        several hosts keep the stated times in size order: :func:`auditlog.checkpoint`); one
        the tail forbids is logged and skipped (the transaction goes on: the refusal comes
        before anything is written)."""
        try:
            return auditlog.checkpoint(conn, self._seal())
        except CheckpointRefused as exc:
            log.error("no checkpoint signed: %s", exc)
            return None

    # --- plans and keys --------------------------------------------------------------------

    def _plan(self, topic: Topic, message: Message, keys: Trust) -> Work:
        parsed = PlanMessage.parse(message.payload)
        self._same_site(topic, parsed.site)

        def refuse(reason: str) -> Work:
            refused = Refused(
                topic.site, message.topic, "plan", reason, message.payload, topic.device
            )
            return partial(self._refuse, refused)

        try:
            plan = read_plan(parsed.data, f"the plan of {topic.device}")
        except PlanRejected as exc:
            return refuse(str(exc))
        if plan.device.id != topic.device:
            return refuse(f"a plan of {plan.device.id} on the topic of {topic.device}")
        why = checks.check_plan_signature(parsed.signature, plan, keys)
        if why:
            return refuse(why)

        def deploy() -> Reply:
            owner = self.store.deploy_site_plan(plan, parsed.signature, topic.site, self._seal())
            return (
                Reply("deployed")
                if owner is None
                else refuse(f"device {plan.device.id} is site {owner}'s")()
            )

        return deploy

    def _keys(self, topic: Topic, message: Message, keys: Trust) -> Work:
        parsed = KeysMessage.parse(message.payload)
        self._same_site(topic, parsed.site)
        for version in parsed.versions:
            trusted = keys.keys.get(version.name, ())
            if not any(
                (t.version, t.public_key) == (version.version, version.public_key) for t in trusted
            ):
                reason = f"key {version.name} v{version.version} is not among the site's keys"
                refused = Refused(topic.site, message.topic, "keys", reason, message.payload)
                return partial(self._refuse, refused)

        def record() -> Reply:
            self.store.log_site_keys(topic.site, parsed.versions)
            return Reply("recorded")

        return record

    # --- checkpoints -----------------------------------------------------------------------

    def _checkpoint(self, topic: Topic, message: Message, keys: Trust) -> Work:
        parsed = CheckpointMessage.parse(message.payload)
        self._same_site(topic, parsed.site)

        def refused(reason: str) -> Refused:
            return Refused(topic.site, message.topic, "checkpoint", reason, message.payload)

        try:
            opened = witness.open_checkpoint(parsed, keys)
        except witness.CheckpointRefused as exc:
            return partial(self._refuse, refused(str(exc)))
        return partial(self._cosign_if_consistent, topic, parsed, opened, refused)

    def _cosign_if_consistent(
        self,
        topic: Topic,
        parsed: CheckpointMessage,
        opened: witness.Opened,
        refused: Callable[[str], Refused],
    ) -> Reply:
        """In one locked transaction: judge the checkpoint against the one cosigned last, and
        record and cosign it, or quarantine it."""
        store = self.store
        with store.transaction() as conn:
            last = store.witnessed(conn, opened.origin)
            try:
                conflict = witness.judge(opened, parsed, last)
            except witness.CheckpointRefused as exc:
                store.quarantine_in(conn, refused(str(exc)))
                log.warning("refused a checkpoint of %s: %s", topic.site, exc)
                return Reply("quarantined", str(exc))
            if conflict is not None:
                return conflict
            cosignature = self._cosign(opened.note)
            seen, cosigned = witness.cosigned(opened, topic.site, cosignature)
            store.set_witnessed(conn, seen, cosigned, cosignature.timestamp)
        return Reply("cosigned", cosignature=cosignature.line)

    def _cosign(self, signed: str) -> Cosignature:
        # the timestamp is whole seconds: rounded up, as a checkpoint's time is, so that a
        # witness key made a moment ago is valid at it (the key is chosen for that time)
        at = audit.signing_second(datetime.now(UTC))
        key = self.keys.signer(self.config.witness_key, at)
        text, _ = note.split_note(signed)
        name = audit.cosigner_name(self.config.witness_key)
        return cosign(text, name, key, int(at.timestamp()))
