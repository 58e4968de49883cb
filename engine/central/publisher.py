"""A site collector's publisher: its outbox to the centre, and its checkpoints cosigned.

``converge run --publish URL`` runs one :class:`Publisher` in a thread beside
the collection. It reads the outbox of the run's
:class:`~engine.store.site.SiteStore` (the writer, or the sealer process,
fills it in the transaction that logs each batch) and sends:

1. the site's key versions, then each plan before the first batch that needs
   it, each until the centre answers that it committed them;
2. the batches, oldest first, at most one of each device at a time and in
   its chain's order (the centre stores a batch only after the one before
   it), at most ``window`` at a time, so that a backlog of one device never
   holds up another device's live data;
3. each new checkpoint of the site's log, with a consistency proof from the
   last one the centre cosigned (c2sp.org/tlog-witness ``add-checkpoint``).

Every message names this collector's reply topic; the link is durable, so
answers sent while it was cut off wait at the broker. A batch leaves the
outbox only when its answer says the centre committed it (``stored``,
``duplicate``) or quarantined it; one not answered within ``resend_s`` is sent
again, and one the centre cannot take yet (``retry``: the batch before it is
not stored) after ``retry_s``. Cosignatures are kept in the site store, where
``converge audit verify --cosigned-by`` checks them.
"""

from __future__ import annotations

import hashlib
import logging
import queue
import socket
import threading
import time
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field

from engine.errors import StoreError
from engine.keys import KeyStore
from engine.sign import note
from engine.sign.cosignature import Cosignature
from engine.sign.merkle import MerkleTree
from engine.store.site import Pending, SiteStore
from engine.store.wire import (
    CheckpointMessage,
    KeysMessage,
    MalformedMessage,
    PlanMessage,
    Reply,
    batch_topic,
    checkpoint_topic,
    correlated,
    correlation,
    keys_topic,
    plan_topic,
    reply_topic,
)
from engine.transport import Ack, Message, Subscription, Transport

log = logging.getLogger(__name__)

Key = tuple[str, bytes]
"""A batch by device and root."""


@dataclass(frozen=True)
class PublishConfig:
    """How a publisher paces what it sends."""

    resend_s: float = 30.0
    """A message not answered within this is sent again (the broker may have lost it)."""
    retry_s: float = 1.0
    """A batch the centre could not take yet (``retry``) is sent again after this."""
    window: int = 32
    """Batches sent and not answered, at most."""
    drain_s: float = 10.0
    """At the end of a run: how long to wait for the centre to take what is left."""
    poll_s: float = 0.1


def collector_id(target: str) -> str:
    """A collector's name at the centre: its host and a digest of its store's place, stable
    across runs and distinct for two collectors on one host."""
    host = "".join(c if c.isalnum() or c in "-_." else "-" for c in socket.gethostname())
    return f"{host[:48] or 'host'}-{hashlib.sha256(target.encode()).hexdigest()[:8]}"


@dataclass
class _Sent:
    """What is sent and not answered yet, and when each went."""

    batches: dict[Key, float] = field(default_factory=dict)
    plans: dict[str, float] = field(default_factory=dict)
    keys: float | None = None
    checkpoint: tuple[int, float] | None = None


class Publisher:
    """Sends a site store's outbox and checkpoints to the centre; see the module docstring."""

    def __init__(
        self,
        store: SiteStore,
        transport: Transport,
        keys: KeyStore,
        config: PublishConfig | None = None,
    ) -> None:
        self.store, self.keys, self.config = store, keys, config or PublishConfig()
        site = store.publishing
        self.site, self.collector = site.site, site.collector
        self.reply_to = reply_topic(self.site, self.collector)
        self.answers: queue.Queue[Message] = queue.Queue()
        self.pending: dict[Key, Pending] = {}
        self.last_row = 0
        self.delayed: dict[Key, float] = {}
        self.sent = _Sent()
        self.deployed: set[str] = set()
        self.keys_recorded = False
        self.hashes: list[bytes] = []
        self.cosigned = store.cosigned_size()
        self.old_size = self.cosigned
        self.refused_size = -1
        self.stats: Counter[str] = Counter()
        self.was_connected = False
        self.link = transport.open(
            f"converge-site-{self.site}-{self.collector}",
            [Subscription(self.reply_to)],
            self._answered,
            durable=True,
        )

    # --- the thread ------------------------------------------------------------------------

    def start(self, stop: threading.Event) -> threading.Thread:
        thread = threading.Thread(target=self.run, args=(stop,), name="converge-publish")
        thread.start()
        return thread

    def run(self, stop: threading.Event) -> None:
        """Send until ``stop`` is set, then until the outbox is empty and the last checkpoint
        cosigned, or ``drain_s`` has passed; then disconnect."""
        deadline: float | None = None
        try:
            while True:
                if stop.is_set() and deadline is None:
                    deadline = time.monotonic() + self.config.drain_s
                if deadline is not None and (self.idle() or time.monotonic() > deadline):
                    return
                self.step()
        finally:
            self.link.close()

    def step(self) -> None:
        """One round: take the answers, see what is new, send what is due."""
        self._take_answers(self.config.poll_s)
        connected = self.link.connected
        if connected and not self.was_connected:
            self._resend_all()
        self.was_connected = connected
        try:
            self._load()
            if connected:
                self._send_due()
        except StoreError as exc:
            log.warning("the site store is away: %s", exc)

    def _resend_all(self) -> None:
        """After a reconnection, whatever is unanswered is sent again at once: the broker may
        have restarted without it, or the ingester it went to may be gone."""
        self.sent.batches = dict.fromkeys(self.sent.batches, 0.0)
        self.sent.plans = dict.fromkeys(self.sent.plans, 0.0)
        self.sent.keys = None if self.sent.keys is None else 0.0
        self.sent.checkpoint = None

    def idle(self) -> bool:
        """Whether nothing is left to send: an empty outbox, the newest checkpoint cosigned."""
        try:
            self._load()
            if self.pending:
                return False
            newest = self.store.newest_checkpoint()
        except StoreError:
            return False
        return newest is None or newest[0] <= max(self.cosigned, self.refused_size)

    # --- answers ---------------------------------------------------------------------------

    def _answered(self, message: Message, ack: Ack) -> None:
        self.answers.put(message)
        ack()  # handling an answer is idempotent: a lost one means a message sent again

    def _take_answers(self, wait: float) -> None:
        try:
            message = self.answers.get(timeout=wait)
        except queue.Empty:
            return
        while True:
            self._answer(message)
            try:
                message = self.answers.get_nowait()
            except queue.Empty:
                return

    def _answer(self, message: Message) -> None:
        try:
            reply = Reply.parse(message.payload)
        except MalformedMessage as exc:
            log.warning("an answer that does not parse: %s", exc)
            return
        kind, *parts = correlated(message.correlation) or [""]
        if kind == "batch" and len(parts) == 2:
            self._batch_answer((parts[0], bytes.fromhex(parts[1])), reply)
        elif kind == "plan" and parts:
            self.sent.plans.pop(parts[0], None)
            if reply.final:
                self.deployed.add(parts[0])
                self._warn_if_refused(f"plan {parts[0]}", reply)
        elif kind == "keys" and reply.final:
            self.keys_recorded, self.sent.keys = True, None
            self._warn_if_refused("the key versions", reply)
        elif kind == "checkpoint" and parts:
            self._checkpoint_answer(int(parts[0]), reply)

    def _batch_answer(self, key: Key, reply: Reply) -> None:
        if self.sent.batches.pop(key, None) is None and key not in self.pending:
            return  # answered before
        if reply.status == "retry":
            self.delayed[key] = time.monotonic() + self.config.retry_s
            return
        if not reply.final:
            return
        self.store.settle(*key)
        self.pending.pop(key, None)
        self.delayed.pop(key, None)
        self.stats["quarantined" if reply.status == "quarantined" else "committed"] += 1
        self._warn_if_refused(f"batch {key[0]} {key[1].hex()[:16]}…", reply)

    def _checkpoint_answer(self, size: int, reply: Reply) -> None:
        self.sent.checkpoint = None
        if reply.status == "conflict" and reply.size is not None:
            self.old_size = reply.size
        elif reply.status == "quarantined":
            self.refused_size = max(self.refused_size, size)
            log.error("the centre refused checkpoint %d of this site's log: %s", size, reply.reason)
        elif reply.status == "cosigned" and reply.cosignature:
            self._keep_cosignature(size, reply.cosignature)

    def _keep_cosignature(self, size: int, line: str) -> None:
        signed = self.store.checkpoint_note(size)
        if signed is None:
            return
        try:
            _, lines = note.split_note(signed + line)
            made = Cosignature.of(lines[-1])
        except note.NoteError as exc:
            log.warning("a cosignature that does not parse: %s", exc)
            return
        self.store.add_cosignature(size, made.name, made.timestamp, signed + line)
        self.cosigned = self.old_size = size
        self.stats["cosigned"] += 1

    @staticmethod
    def _warn_if_refused(what: str, reply: Reply) -> None:
        if reply.status == "quarantined":
            log.error("the centre quarantined %s: %s", what, reply.reason)

    # --- sending ---------------------------------------------------------------------------

    def _load(self) -> None:
        for row in self.store.pending(self.last_row):
            self.pending[row.device, row.root] = row
            self.last_row = max(self.last_row, row.id)

    def _send_due(self) -> None:
        now = time.monotonic()
        if not self.keys_recorded:
            if self.sent.keys is None or now - self.sent.keys > self.config.resend_s:
                self._send_keys()
            return
        for row in self._due(now):
            if row.plan_digest not in self.deployed:
                self._send_plan(row, now)
                continue
            self._send_batch(row, now)
        self._send_checkpoint(now)

    def _due(self, now: float) -> list[Pending]:
        """The batches to send now, oldest first: each device's first in chain order that is
        neither in flight nor held back, and those in flight unanswered for ``resend_s``."""
        resend = self.config.resend_s
        late = [k for k, at in self.sent.batches.items() if now - at > resend and k in self.pending]
        room = self.config.window - len(self.sent.batches) + len(late)
        busy = {device for device, _ in self.sent.batches}
        firsts = _chain_firsts(self.pending.values())
        fresh = [
            row
            for row in firsts
            if row.device not in busy and self.delayed.get((row.device, row.root), 0) <= now
        ]
        chosen = [self.pending[k] for k in late] + fresh
        return sorted(chosen, key=lambda row: row.id)[: max(room, 0)]

    def _send_keys(self) -> None:
        versions = tuple(v for name in self.keys.names() for v in self.keys.versions(name))
        message = KeysMessage(self.site, self.collector, versions)
        self._publish(keys_topic(self.site), message.to_bytes(), correlation("keys"))
        self.sent.keys = time.monotonic()

    def _send_plan(self, row: Pending, now: float) -> None:
        sent = self.sent.plans.get(row.plan_digest)
        if sent is not None and now - sent <= self.config.resend_s:
            return
        plan = self.store.plan(row.plan_digest)
        if plan is None:
            log.error("the plan %s of an outbox batch is not in the site store", row.plan_digest)
            return
        message = PlanMessage(self.site, self.collector, *plan)
        topic = plan_topic(self.site, row.device)
        self._publish(topic, message.to_bytes(), correlation("plan", row.plan_digest))
        self.sent.plans[row.plan_digest] = now

    def _send_batch(self, row: Pending, now: float) -> None:
        data = self.store.message(row.id)
        if data is None:
            self.pending.pop((row.device, row.root), None)
            return
        key = (row.device, row.root)
        if key in self.sent.batches:
            self.stats["resent"] += 1
        self._publish(
            batch_topic(self.site, row.device),
            data,
            correlation("batch", row.device, row.root.hex()),
        )
        self.sent.batches[key] = now

    def _send_checkpoint(self, now: float) -> None:
        """The newest checkpoint, when the centre has not cosigned it, with a proof from the
        size it cosigned last."""
        if (
            self.sent.checkpoint is not None
            and now - self.sent.checkpoint[1] <= self.config.resend_s
        ):
            return
        newest = self.store.newest_checkpoint()
        if newest is None or newest[0] <= max(self.cosigned, self.refused_size):
            return
        size, signed = newest
        message = CheckpointMessage(
            self.site, self.collector, self.old_size, tuple(self._proof(size)), signed
        )
        topic = checkpoint_topic(self.site)
        self._publish(topic, message.to_bytes(), correlation("checkpoint", str(size)))
        self.sent.checkpoint = (size, now)

    def _proof(self, size: int) -> list[bytes]:
        """An RFC 9162 consistency proof from ``old_size`` to ``size`` over the site's log."""
        if self.old_size == 0 or self.old_size >= size:
            return []
        if len(self.hashes) < size:
            self.hashes += self.store.leaf_hashes(len(self.hashes), size)
        return MerkleTree(self.hashes[:size]).consistency_proof(self.old_size, size)

    def _publish(self, topic: str, payload: bytes, correlation_data: bytes) -> None:
        self.link.publish(Message(topic, payload, self.reply_to, correlation_data))
        self.stats["sent"] += 1

    # --- for the run's summary ---------------------------------------------------------------

    def summary(self) -> str:
        s = self.stats
        return (
            f"published to the centre as {self.site}/{self.collector}: {s['committed']} batches"
            f" committed there, {s['quarantined']} quarantined, {s['resent']} sent again,"
            f" {s['cosigned']} checkpoints cosigned; {len(self.pending)} waiting in the outbox"
        )


def _chain_firsts(rows: Iterable[Pending]) -> list[Pending]:
    """Of each device's pending batches, the first in chain order: the oldest whose previous
    batch is not pending too (in the outbox, chain order can differ from row order: batches
    spooled while the site store was away are replayed after a live one)."""
    pending = list(rows)
    roots = {(row.device, row.root) for row in pending}
    firsts: dict[str, Pending] = {}
    for row in sorted(pending, key=lambda r: r.id):
        if (row.device, row.previous_root) in roots or row.device in firsts:
            continue
        firsts[row.device] = row
    return list(firsts.values())
