"""The audit log's format: entries, their kinds, the saved state, checkpoints and the witness.

Each entry is the RFC 8785 canonical JSON of ``{"seq", "time", "kind",
"actor", "payload"}``; entry ``seq`` is leaf ``seq`` of an RFC 9162 tree (the
hashing of docs/evidence.md). The store keeps the log
(:mod:`engine.store.auditlog`): an entry is appended inside the transaction
that stores what it records, so a batch and its entry commit together or not
at all.

The log has one key, the *audit key*, fixed when the log is made: its name is
in the log's origin line (``converge/audit/<audit key>/<random uuid>``) and in
its first entry (``log.created``), and an auditor names it again
(``converge audit verify --audit-key``). A checkpoint is a C2SP
``tlog-checkpoint`` signed as a C2SP ``signed-note`` by a version of that key,
under the log's origin as key name, as the spec recommends; it says when it was
signed in an extension line ``time <seconds since 1970-01-01T00:00:00Z>``,
inside the signed bytes, and the version that signs must be valid then. Each
checkpoint is also appended to a *witness* file outside the database (JSON
Lines), so that ``converge audit verify --witness`` notices a database
restored from an older copy. See docs/audit.md.
"""

from __future__ import annotations

import getpass
import json
import math
import os
import pwd
import re
import socket
import uuid
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Literal

from engine.canonical import CanonicalError, canonical_json, plainly_canonical, read_json
from engine.keys import KeyStore, KeyVersion
from engine.sign.leaf import instant
from engine.sign.merkle import MerkleLog
from engine.sign.note import Checkpoint, sign_checkpoint

ORIGIN_KEY = "audit.origin"
STATE_KEY = "audit.state"
FUTURE_SLACK = timedelta(minutes=5)
"""How far past a signer's or verifier's clock a checkpoint may say it was signed: clocks
differ by seconds, not minutes (docs/audit.md). More is a signer's clock set ahead, which dates
what it signs (a receipt's expiry check among them) ahead too."""
SIGNED_STATE_KEY = "audit.signed"
"""Where the compact state of the log its newest checkpoint signed is kept (docs/audit.md)."""
DEFAULT_AUDIT_KEY = "audit-log"
ORIGIN_PREFIX = "converge/audit/"
COSIGNER_PREFIX = "converge/witness/"
"""A centre's cosignatures of site logs are signed under ``converge/witness/<witness key>``."""
TIME_LINE = re.compile(r"time (0|[1-9][0-9]{0,11})")
KINDS = {
    "log.created": "the log was made: its origin, and the key that signs its checkpoints",
    "plan.deployed": "a plan was loaded by a collector for the first time",
    "batch.stored": "a batch, its signatures and records were stored",
    "batch.sealed": "a site collector sealed a batch and queued it for the centre, which keeps it",
    "batch.dropped": "a batch was lost because the spool was full (its statement is kept)",
    "spool.full": "the spool reached its bound; newer batches are dropped until it drains",
    "key.generated": "a signing key's first version was made",
    "key.rotated": "a signing key's new version replaced the previous one",
    "collector.started": "a collector started writing to this store",
    "collector.stopped": "a collector stopped cleanly",
    "plan.signed": "a principal signed a plan (who, printed name, when, meaning, key)",
    "access.decision": "the guard decided a read, export or hold, allowed or denied",
    "audit.reviewed": "a person reviewed a range of the trail (EU GMP Annex 11 §9)",
    "ingest.started": "an ingester began taking the sites' messages into this central store",
    "ingest.stopped": "an ingester stopped cleanly",
    "message.quarantined": "the centre refused a site's message: kept in quarantine with why",
    "checkpoint.cosigned": "the centre cosigned a checkpoint of a site collector's log",
    "retention.deleted": "a retention run deleted expired records of a batch (its receipt)",
    "retention.archived": "a retention run archived records before deleting them (the bundle)",
    "retention.archive.written": "a retention run wrote an archive: its file and SHA-256",
    "hold.placed": "a principal placed a legal hold (what it covers, why)",
    "hold.released": "a principal released a legal hold",
}
"""Every entry kind and what it records (docs/audit.md)."""
TAIL_KINDS = frozenset(
    {
        "batch.stored",
        "batch.sealed",
        "batch.dropped",
        "message.quarantined",
        "checkpoint.cosigned",
        "spool.full",
        "key.generated",
        "key.rotated",
        "access.decision",
        "audit.reviewed",
        "plan.signed",
    }
)
"""The kinds an entry may have while it waits, unsigned, for the next checkpoint: what a
running collector appends between checkpoints, and what commands that hold no audit key append
(``converge keys --db``, decisions of ``converge query`` and ``serve``, reviews, ``converge plan
--sign --db``). A site
collector that publishes logs its batches as ``batch.sealed``; a central store's ingesters log
quarantined messages and cosigned checkpoints between theirs (docs/scale-out.md). Every other
entry, those that decide whether a deletion was lawful (holds, receipts, archives) among them,
is written with a checkpoint in its own transaction, by a holder of the audit key, and no
checkpoint signs one it did not append (:func:`engine.store.auditlog.checkpoint`)."""

RUN_MARKS = ("collector.started", "collector.stopped")
"""A collector's start and stop: what a run defers to its spool while the store is away."""
SIGNED_KINDS = frozenset(
    {
        *RUN_MARKS,
        "hold.placed",
        "hold.released",
        "retention.deleted",
        "retention.archived",
        "retention.archive.written",
        "ingest.started",
        "ingest.stopped",
    }
)
"""Kinds only ever written with a checkpoint in their own transaction: a log holding one has a
checkpoint, so a log that holds one and no checkpoint lost its checkpoints."""


CheckpointSigner = Callable[[Checkpoint], str]
"""Signs a checkpoint, returning the signed note text (with a key valid at the checkpoint's
signed time, :func:`signed_time`)."""


@dataclass(frozen=True)
class Seal:
    """A checkpoint to sign as of ``at`` (whole seconds, :func:`signing_second`) with ``sign``,
    whose key version is valid then; ``keys``, every version of the log's key (public halves,
    validity), by which the signer checks the newest checkpoint before it signs the next
    (:func:`engine.store.auditlog.checkpoint`)."""

    sign: CheckpointSigner
    at: datetime
    keys: tuple[KeyVersion, ...]
    version: KeyVersion
    """The version ``sign`` signs with: the one valid at ``at``."""


def seal_with(keys: KeyStore, audit_key: str, now: datetime) -> Seal:
    """A checkpoint signed as of ``now`` rounded up to the second (:func:`signing_second`), by
    the version of ``audit_key`` valid then; asks for the key now (a passphrase, a PIN)."""
    at = signing_second(now)
    key = keys.signer(audit_key, at)
    versions = tuple(keys.versions(audit_key))
    version = next(v for v in versions if v.valid_at(at))
    return Seal(lambda cp: sign_checkpoint(cp, cp.origin, key), at, versions, version)


def new_origin(audit_key: str) -> str:
    """A new log's origin line: ``converge/audit/<audit key>/<random uuid>``."""
    return f"{ORIGIN_PREFIX}{audit_key}/{uuid.uuid4()}"


def origin_key(origin: str) -> str | None:
    """The audit key an origin names; ``None`` for an origin of a log made before logs named
    their key (``converge/audit/<uuid>``)."""
    rest = origin.removeprefix(ORIGIN_PREFIX)
    key, slash, _ = rest.partition("/")
    return key if slash and origin.startswith(ORIGIN_PREFIX) else None


def cosigner_name(witness_key: str) -> str:
    """The name a centre's cosignatures carry (C2SP tlog-cosignature), from its key's name."""
    return f"{COSIGNER_PREFIX}{witness_key}"


def signing_second(now: datetime) -> datetime:
    """The time a checkpoint made ``now`` says it was signed: whole seconds, rounded up.

    Rounded up, so that a key version that began a moment ago is valid at it;
    the signing key is chosen for this time, not for ``now``.
    """
    return datetime.fromtimestamp(math.ceil(now.timestamp()), UTC)


def time_line(at: datetime) -> str:
    """The checkpoint extension line that says when it was signed."""
    return f"time {int(at.timestamp())}"


def signed_time(checkpoint: Checkpoint) -> datetime | None:
    """When a checkpoint says it was signed (its one ``time`` line), or ``None``."""
    found = [line for line in checkpoint.extensions if TIME_LINE.fullmatch(line)]
    if len(found) != 1:
        return None
    return datetime.fromtimestamp(int(found[0].removeprefix("time ")), UTC)


@dataclass(frozen=True)
class Actor:
    """Who an entry is by: a principal acting through a command, or a named job.

    Both say the operating-system account and the host that ran it. A principal also says
    the roles it held at that moment and the digest of the principals it was resolved from
    (docs/access.md). Entries written before entries named their actor this way hold a plain
    string instead.
    """

    kind: Literal["principal", "job"]
    id: str
    """The principal's id, or the job's name (``collector``, ``retention``, ...)."""
    os_user: str
    host: str
    roles: tuple[str, ...] = ()
    principals: str | None = None

    @classmethod
    def job(cls, name: str) -> Actor:
        """A job run by this process's operating-system account on this host."""
        return cls("job", name, os_user(), socket.gethostname())

    @classmethod
    def from_json(cls, said: Mapping[str, Any]) -> Actor:
        """The actor :meth:`as_json` wrote (a key store keeps the maker of each version)."""
        roles = tuple(str(r) for r in said.get("roles") or ())
        principals = said.get("principals")
        kind: Literal["principal", "job"] = (
            "principal" if said.get("kind") == "principal" else "job"
        )
        return cls(
            kind,
            str(said.get("id")),
            str(said.get("os_user")),
            str(said.get("host")),
            roles,
            None if principals is None else str(principals),
        )

    def as_json(self) -> dict[str, Any]:
        said: dict[str, Any] = {
            "kind": self.kind,
            "id": self.id,
            "os_user": self.os_user,
            "host": self.host,
        }
        if self.kind == "principal":
            said |= {"roles": sorted(self.roles), "principals": self.principals}
        return said

    @property
    def label(self) -> str:
        """One line for people: ``alice@example.com [qa] (alice@host)``, ``job collector
        (root@host)``."""
        who = (
            f"{self.id} [{', '.join(sorted(self.roles))}]"
            if self.kind == "principal"
            else (f"job {self.id}")
        )
        return f"{who} ({self.os_user}@{self.host})"


def os_user() -> str:
    """The operating-system account this process runs as."""
    try:
        return pwd.getpwuid(os.geteuid()).pw_name
    except (KeyError, OSError):
        return getpass.getuser()


def actor_label(actor: Any) -> str:
    """An entry's actor for people, whether an object (:class:`Actor`) or an older string."""
    if isinstance(actor, dict):
        roles = actor.get("roles")
        who = (
            f"{actor.get('id')} [{', '.join(roles)}]"
            if roles is not None
            else (f"job {actor.get('id')}")
        )
        return f"{who} ({actor.get('os_user')}@{actor.get('host')})"
    return str(actor)


@dataclass(frozen=True)
class AuditEntry:
    """One entry of the log, parsed."""

    seq: int
    time: str
    kind: str
    actor: Any
    """The entry's actor as stored: an :class:`Actor`'s JSON, or (older entries) a string."""
    payload: dict[str, Any]

    def to_bytes(self) -> bytes:
        return canonical_json(
            {
                "seq": self.seq,
                "time": self.time,
                "kind": self.kind,
                "actor": self.actor,
                "payload": self.payload,
            }
        )

    @classmethod
    def of(cls, obj: Mapping[str, Any]) -> AuditEntry:
        """The entry of a decoded entry object; raises ValueError unless each member has its
        shape: an integer ``seq``, a string ``time`` and ``kind``, an object (or, in older
        entries, a string) ``actor`` and an object ``payload``. Stored bytes are data: the
        checks read a payload's members, so one of another shape is named, not a crash."""
        seq, time, kind = obj["seq"], obj["time"], obj["kind"]
        actor, payload = obj["actor"], obj["payload"]
        if type(seq) is not int or not isinstance(time, str) or not isinstance(kind, str):
            raise ValueError("its seq is not an integer, or its time or kind not a string")
        if not isinstance(actor, dict | str):
            raise ValueError("its actor is neither an object nor a string")
        if not isinstance(payload, dict):
            raise ValueError("its payload is not an object")
        return cls(seq, time, kind, actor, payload)

    @classmethod
    def parse(cls, data: bytes) -> AuditEntry:
        """Raises ValueError unless ``data`` is exactly the canonical bytes of an entry.

        An entry that plainly is canonical (:func:`~engine.canonical.plainly_canonical`) is
        read by one decoding and one encoding; any other by :meth:`_parse_slowly`, which
        decodes it twice (once to check its numbers) and names what is wrong. (An export's
        decision names every point: a megabyte, read by the checkpoint that signs it and by
        the report.)"""
        obj = plainly_canonical(data)
        if isinstance(obj, dict) and obj.keys() == _MEMBERS:
            return cls.of(obj)
        return cls._parse_slowly(data)

    @classmethod
    def _parse_slowly(cls, data: bytes) -> AuditEntry:
        """:meth:`parse`, the long way: it names what is wrong."""
        obj = read_json(data)
        if not isinstance(obj, dict) or set(obj) != _MEMBERS:
            raise ValueError("not an audit entry object")
        entry = cls.of(obj)
        try:
            canonical = entry.to_bytes()
        except CanonicalError as exc:  # NaN, an integer past 2**53 - 1: stored bytes are data
            raise ValueError(f"it has no canonical form: {exc}") from None
        if canonical != data:
            raise ValueError("not the canonical bytes of the entry")
        return entry


_MEMBERS = {"seq", "time", "kind", "actor", "payload"}


def now_instant() -> str:
    return instant(datetime.now(UTC))


def saved_state(log: MerkleLog) -> dict[str, Any]:
    """The compact state of ``log`` as the store keeps it (under :data:`STATE_KEY`, as JSON)."""
    return {"size": log.size, "hashes": [h.hex() for h in log.hashes]}


def witness_append(witness: Path, note: str) -> None:
    """Append a checkpoint note to the witness file, one JSON line, synced to disk."""
    line = json.dumps({"note": note, "written_at": now_instant()}) + "\n"
    with witness.open("a", encoding="utf-8") as out:
        out.write(line)
        out.flush()
        os.fsync(out.fileno())


def witness_notes(witness: Path) -> Iterator[tuple[int, str]]:
    """(line number, note) of every checkpoint in a witness file."""
    with witness.open(encoding="utf-8") as lines:
        for number, line in enumerate(lines, 1):
            if line.strip():
                yield number, str(json.loads(line)["note"])


@dataclass(frozen=True)
class EntryFilter:
    """Which entries ``converge audit log`` lists: any of ``kinds``, by ``actor`` (a principal's
    id or a job's name), dated in ``[start, end)``, about ``device`` (and ``point``)."""

    kinds: tuple[str, ...] = ()
    actor: str | None = None
    start: str | None = None
    end: str | None = None
    device: str | None = None
    point: str | None = None

    def matches(self, entry: AuditEntry) -> bool:
        return (
            (not self.kinds or entry.kind in self.kinds)
            and (self.actor is None or _actor_id(entry.actor) == self.actor)
            and (self.start is None or entry.time >= self.start)
            and (self.end is None or entry.time < self.end)
            and (self.device is None or self._about(entry.payload))
        )

    def _about(self, payload: dict[str, Any]) -> bool:
        """Whether an entry's payload names the device (and point): its own ``device``, or one
        of the ``points`` it lists (decisions, receipts)."""
        listed = payload.get("points")
        named = (
            [payload, *[p for p in listed if isinstance(p, dict)]]
            if isinstance(listed, list)
            else [payload]
        )
        for said in named:
            if said.get("device") == self.device and self.point in (None, said.get("point")):
                return True
        return False


def _actor_id(actor: Any) -> str:
    return str(actor.get("id")) if isinstance(actor, dict) else str(actor)
