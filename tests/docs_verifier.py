"""A second verifier of a Converge evidence store, written from the documentation alone.

It imports nothing of Converge and was written from docs/ (audit.md, records.md,
evidence.md, keys.md, plans.md) and the tables of a store as the database shows
them, never from engine/ or plugins/. It recomputes, from the stored bytes, the
audit log (entries, saved state, origin and first entry, checkpoints, their
signed times, order and roots, the unsigned tail), the plans (digest, signature),
every batch (statement, columns, audit entry, the keys its plan requires and
their signatures, valid at the entry's time), each device's chain, every
record's leaf and every batch's root, and the witness file.

The tests run it beside ``converge audit verify`` on every store they verify
and require both to agree (see ``evidence_kit.py``). Where the documentation
left a choice open, the choice is marked ``DOC GAP`` below.
"""

from __future__ import annotations

import base64
import bisect
import contextlib
import functools
import hashlib
import json
import re
import sqlite3
import unicodedata
from collections import defaultdict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from fnmatch import fnmatchcase
from pathlib import Path
from typing import Any

import rfc8785
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

# --- the verdict ------------------------------------------------------------------------


@dataclass
class Verdict:
    """What the verifier found: ``ok`` when nothing is wrong; ``notes`` never fail a store."""

    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def fail(self, item: str, message: str) -> None:
        self.problems.append(f"{item}: {message}")


# --- hashing (evidence.md#hashing) --------------------------------------------------------

EMPTY_ROOT = hashlib.sha256(b"").digest()
ZERO_ROOT_HEX = "0" * 64


def leaf_hash(data: bytes) -> bytes:
    return hashlib.sha256(b"\x00" + data).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    return hashlib.sha256(b"\x01" + left + right).digest()


def mth(hashes: list[bytes]) -> bytes:
    """RFC 9162 MTH of leaf hashes: pair level by level, lift an odd last node unchanged."""
    if not hashes:
        return EMPTY_ROOT
    level = hashes
    while len(level) > 1:
        paired = [node_hash(level[i], level[i + 1]) for i in range(0, len(level) - 1, 2)]
        if len(level) % 2:
            paired.append(level[-1])
        level = paired
    return level[0]


class LogTree:
    """The perfect subtrees of a growing log, largest first (the saved state of audit.md)."""

    def __init__(self) -> None:
        self.size = 0
        self.stack: list[tuple[int, bytes]] = []

    def append(self, hashed_leaf: bytes) -> None:
        node, width = hashed_leaf, 1
        while self.stack and self.stack[-1][0] == width:
            _, left = self.stack.pop()
            node, width = node_hash(left, node), width * 2
        self.stack.append((width, node))
        self.size += 1

    def root(self) -> bytes:
        if not self.stack:
            return EMPTY_ROOT
        node = self.stack[-1][1]
        for _, left in reversed(self.stack[:-1]):
            node = node_hash(left, node)
        return node

    def state(self) -> str:
        hashes = [h.hex() for _, h in self.stack]
        return json.dumps({"size": self.size, "hashes": hashes})


# --- canonical JSON (RFC 8785), instants, base64 -----------------------------------------

MAX_INT = 2**53 - 1


class NotCanonical(ValueError):
    pass


def _not_json(text: str) -> Any:
    raise NotCanonical(f"{text} is not JSON")


_DECODER = json.JSONDecoder(parse_constant=_not_json)
_ENCODER = json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def _python_spells_alike(value: Any) -> bool:
    """Whether :mod:`json` writes every number in ``value`` as RFC 8785 does (ECMAScript's
    shortest form); NotCanonical for an integer beyond 2^53 - 1."""
    stack = [value]
    while stack:
        item = stack.pop()
        kind = type(item)
        if kind is dict:
            stack.extend(item.values())
        elif kind is list:
            stack.extend(item)
        elif kind is float:
            spelled = repr(item)
            if not 1e-6 <= abs(item) < 1e16 or "e" in spelled or spelled.endswith(".0"):
                return False
        elif kind is int and abs(item) > MAX_INT:
            raise NotCanonical(f"integer {item} is beyond 2^53 - 1")
    return True


def canonical(raw: bytes) -> Any:
    """The value of ``raw`` if it is exactly its RFC 8785 form; else :class:`NotCanonical`.

    A fast path re-encodes with :mod:`json` when that cannot differ from RFC 8785
    (ASCII text, so keys sort alike; numbers Python and ECMAScript spell alike) and
    falls back to :mod:`rfc8785` otherwise.
    """
    try:
        text = raw.decode("utf-8")
        value = _DECODER.decode(text)
        if text.isascii() and _python_spells_alike(value):
            same = _ENCODER.encode(value) == text
        else:
            same = rfc8785.dumps(value) == raw
    except (ValueError, UnicodeError, RecursionError, rfc8785.CanonicalizationError) as exc:
        raise NotCanonical(str(exc)) from exc  # RecursionError: nested deeper than json reads
    if not same:
        raise NotCanonical("not its RFC 8785 canonical form")
    return value


def jcs(value: Any) -> bytes:
    return rfc8785.dumps(value)


INSTANT = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z")
SECOND = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ")
HEX64 = re.compile(r"[0-9a-f]{64}")
SALT = re.compile(r"[0-9a-f]{32}")
DIGEST = re.compile(r"sha256:[0-9a-f]{64}")
UUID = r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"
ORIGIN = re.compile(rf"converge/audit/(?:([^/]+)/)?({UUID})")
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def instant(value: object) -> datetime:
    """An instant of records.md: ``YYYY-MM-DDTHH:MM:SS.ffffffZ``, UTC."""
    if not isinstance(value, str):
        raise ValueError(f"{value!r} is not an instant")
    return _instant(value)


@functools.lru_cache(maxsize=4096)
def _instant(value: str) -> datetime:
    if not INSTANT.fullmatch(value):
        raise ValueError(f"{value!r} is not an instant")
    return datetime.fromisoformat(value)


def micros(at: datetime) -> int:
    return (at - EPOCH) // timedelta(microseconds=1)


def iso_time(value: object) -> datetime | None:
    """A key export's time: ISO 8601 with a UTC offset, or ``null``."""
    if value is None:
        return None
    if not isinstance(value, str):
        raise ValueError(f"{value!r} is not a time")
    at = datetime.fromisoformat(value)
    if at.tzinfo is None:
        raise ValueError(f"{value!r} has no UTC offset")
    return at


def b64(text: str) -> bytes:
    """Canonical standard base64 only (evidence.md: one spelling per byte string)."""
    raw = base64.b64decode(text.encode("ascii"), validate=True)
    if base64.b64encode(raw).decode("ascii") != text:
        raise ValueError(f"{text!r} is not canonical base64")
    return raw


# --- keys (keys.md, audit.md#the-stored-columns-exactly) ---------------------------------


@dataclass(frozen=True)
class Version:
    name: str
    version: int
    key: bytes
    not_before: datetime
    not_after: datetime | None

    def valid_at(self, at: datetime) -> bool:
        return self.not_before <= at and (self.not_after is None or at < self.not_after)

    def valid_in_second(self, stated: datetime) -> bool:
        """Whether it was valid at some instant of the second a signed note's stated time
        ends: a note states the time it was signed rounded up to the second (a rotation in that
        second leaves a note begun before it within the old version's validity)."""
        return self.not_before <= stated and (
            self.not_after is None or stated - timedelta(seconds=1) < self.not_after
        )

    def verifies(self, message: bytes, signature: bytes) -> bool:
        try:
            Ed25519PublicKey.from_public_bytes(self.key).verify(signature, message)
        except InvalidSignature:
            return False
        return True

    def label(self) -> str:
        return f"{self.name} v{self.version}"


def key_id(name: str, key: bytes) -> bytes:
    """The signed-note key ID of an Ed25519 key under ``name``."""
    return hashlib.sha256(name.encode() + b"\n\x01" + key).digest()[:4]


def trusted_versions(exports: Iterable[Any], verdict: Verdict) -> dict[str, list[Version]]:
    """Every version of ``converge keys export-public --format json`` exports (lists of
    objects, or the objects themselves), after checking each export is self-consistent."""
    found: dict[str, list[Version]] = defaultdict(list)
    for item in exports:
        for export in item if isinstance(item, list) else [item]:
            label = f"public key {export.get('name')} v{export.get('version')}"
            try:
                version = _version(export)
            except (ValueError, KeyError, TypeError) as exc:
                verdict.fail(label, f"unusable export: {exc}")
                continue
            found[version.name].append(version)
    return found


def _version(export: dict[str, Any]) -> Version:
    name, key = export["name"], b64(export["public_key"])
    if len(key) != 32:
        raise ValueError("the public key is not 32 bytes")
    kid = key_id(name, key).hex()
    if export["key_id"] != kid or export["sha256"] != hashlib.sha256(key).hexdigest():
        raise ValueError("its key ID or SHA-256 is not that of its key")
    verifier = base64.b64encode(b"\x01" + key).decode()
    if export["verifier_key"] != f"{name}+{kid}+{verifier}":
        raise ValueError("its verifier key is not that of its key")
    not_before = iso_time(export["not_before"])
    if not_before is None:
        raise ValueError("not_before is null")
    return Version(name, int(export["version"]), key, not_before, iso_time(export["not_after"]))


# --- signed notes (evidence.md#signed-notes) ----------------------------------------------


@dataclass
class Note:
    text: str
    signatures: list[tuple[str, bytes, bytes]]  # key name, key ID, signature


def parse_note(note: str) -> Note:
    if any(unicodedata.category(c) == "Cc" and c != "\n" for c in note):
        raise ValueError("a control character")
    split = note.rfind("\n\n")
    if split < 0 or not note.endswith("\n"):
        raise ValueError("no empty line before the signatures, or no final newline")
    text, lines = note[: split + 1], note[split + 2 : -1].split("\n")
    if not lines or len(lines) > 100:
        raise ValueError("no signature, or more than 100")
    signatures = []
    for line in lines:
        parts = line.split(" ")
        if len(parts) != 3 or parts[0] != "\u2014":
            raise ValueError(f"bad signature line {line!r}")
        name, blob = parts[1], b64(parts[2])
        if not name or "+" in name or any(c.isspace() for c in name) or len(blob) < 5:
            raise ValueError(f"bad signature line {line!r}")
        signatures.append((name, blob[:4], blob[4:]))
    return Note(text, signatures)


def signers(note: Note, trusted: Iterable[tuple[str, Version]]) -> list[Version]:
    """The trusted versions whose signature on ``note`` verifies; ValueError when a trusted
    key's signature does not, or when none verifies (signatures of others are ignored)."""
    by_id = {(name, key_id(name, v.key)): v for name, v in trusted}
    good = []
    for name, kid, signature in note.signatures:
        version = by_id.get((name, kid))
        if version is None:
            continue
        if len(signature) != 64 or not version.verifies(note.text.encode(), signature):
            raise ValueError(f"the signature of {version.label()} does not verify")
        good.append(version)
    if not good:
        raise ValueError("no signature by a trusted key")
    return good


@dataclass
class Checkpoint:
    origin: str
    size: int
    root: bytes
    time: datetime
    signed_by: list[Version]
    item: str = ""


def checkpoint_text(note: Note, origin: str) -> tuple[int, bytes, list[str]]:
    """The size, root and extension lines of a C2SP checkpoint of ``origin`` (evidence.md)."""
    lines = note.text.split("\n")[:-1]
    if len(lines) < 3 or not all(lines[3:]):
        raise ValueError("not the lines of a checkpoint")
    if lines[0] != origin:
        raise ValueError(f"origin {lines[0]!r}, not the log's {origin!r}")
    if not re.fullmatch(r"0|[1-9][0-9]*", lines[1]):
        raise ValueError(f"bad size line {lines[1]!r}")
    root = b64(lines[2])
    if len(root) != 32:
        raise ValueError("the root is not 32 bytes")
    return int(lines[1]), root, lines[3:]


def open_checkpoint(note_text: str, origin: str, versions: list[Version]) -> Checkpoint:
    """A checkpoint of ``origin`` signed by a version of the log's key (audit.md#checkpoints)."""
    note = parse_note(note_text)
    size, root, extensions = checkpoint_text(note, origin)
    # DOC GAP: audit.md says "one extension line" states the time; whether other extension
    # lines may appear beside it (evidence.md: optional, opaque) is not said. Taken: they may,
    # but exactly one line starts with "time " and it is a decimal without leading zeros.
    times = [line for line in extensions if line.startswith("time ")]
    stated = re.fullmatch(r"time (0|[1-9][0-9]*)", times[0]) if len(times) == 1 else None
    if not stated:
        raise ValueError(f"not one time line: {times}")
    good = signers(note, [(origin, v) for v in versions])
    return Checkpoint(origin, size, root, EPOCH + timedelta(seconds=int(stated[1])), good)


# --- reading the store ------------------------------------------------------------------


@contextlib.contextmanager
def connect(target: str) -> Iterator[Any]:
    """A read-only connection in one snapshot: SQLite file path, or a PostgreSQL URL."""
    if "://" not in target:
        conn = sqlite3.connect(f"file:{target}?mode=ro", uri=True, isolation_level=None)
        try:
            conn.execute("BEGIN")
            yield conn
        finally:
            conn.close()
        return
    import psycopg  # only for PostgreSQL stores

    url = re.sub(r"^postgresql\+\w+://", "postgresql://", target)
    with psycopg.connect(url) as conn:
        conn.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
        conn.read_only = True
        yield conn


def as_bytes(value: object) -> bytes:
    if isinstance(value, str):
        return value.encode("utf-8")
    return bytes(value)  # type: ignore[arg-type]


def as_text(value: object) -> str:
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value).decode("utf-8")
    if not isinstance(value, str):
        raise ValueError(f"{value!r} is not text")
    return value


@dataclass
class Entry:
    seq: int
    time: datetime
    kind: str
    payload: dict[str, Any]
    actor: Any = None
    stamp: str = ""


@dataclass
class Plan:
    digest: str
    device: str
    required: list[str]
    waivers: list[Any]
    window_ms: int
    deployed: list[Entry] = field(default_factory=list)
    retention: dict[str, tuple[dict[str, Any], list[str]]] = field(default_factory=dict)
    """Point name: its merged ``retention`` and the ``policy @ at`` of its retention facets."""


# --- the verifier -----------------------------------------------------------------------

KINDS = {
    "log.created": {"origin", "audit_key"},
    "plan.deployed": None,  # checked against its plan (check_plans)
    "plan.signed": None,
    "access.decision": None,
    "audit.reviewed": None,
    "batch.stored": {
        "device",
        "window_start",
        "window_end",
        "count",
        "root",
        "previous_root",
        "plan_digest",
        "point_map",
        "keys",
        "waiver",
    },
    "batch.dropped": None,
    "spool.full": None,
    "key.generated": {"name", "version", "key_id", "sha256", "not_before", "not_after"},
    "key.rotated": {"name", "version", "key_id", "sha256", "not_before", "not_after"},
    "collector.started": None,
    "collector.stopped": None,
    "retention.deleted": {
        "batch",
        "device",
        "root",
        "plan",
        "window_start",
        "window_end",
        "count",
        "remaining",
        "positions",
        "leaf_hashes",
        "points",
        "expiries",
        "holds",
        "run",
        "archive",
    },
    "retention.archived": {"decision", "file", "from", "to", "points", "batches"},
    "retention.archive.written": {"archived", "file", "sha256"},
    "hold.placed": {"hold", "devices", "points", "held", "from", "to", "reason", "decision"},
    "hold.released": {"hold", "reason", "decision"},
}
"""Every kind of entry (audit.md#the-audit-log) and, where the page lists it, its payload.

DOC GAP: the page lists the kinds and payloads but does not say that an entry of another kind,
or a payload with other members, fails; ``audit verify`` accepts both (signed by the audit
key). Taken here: they fail. DOC GAP: ``plan.signed``, ``access.decision`` and
``audit.reviewed`` are not in the page's table (access.md, cli.md and the unsigned tail name
them), nor their payloads exactly.
"""

ENTRY = {"actor", "kind", "payload", "seq", "time"}
RUN_KINDS = {"batch.stored", "batch.dropped", "spool.full"}
"""What a running collector appends between checkpoints."""
KEYLESS_KINDS = {
    "key.generated",
    "key.rotated",
    "access.decision",
    "audit.reviewed",
    "plan.signed",
}
"""What commands that hold no audit key append. Holds, receipts and archives are signed in the
transaction that writes them (audit.md#the-unsigned-tail): after the last checkpoint, they
fail."""
BATCH_KINDS = {"batch.stored", "batch.dropped"}
STATEMENT = {
    "format",
    "device",
    "window_start",
    "window_end",
    "count",
    "root",
    "plan_digest",
    "previous_root",
    "point_map",
}


def batch_payload(payload: dict[str, Any]) -> None:
    """What the chain and the tail read of a batch.stored or batch.dropped payload.

    DOC GAP: audit.md gives batch.dropped's payload as "the batch statement's members and
    dropped_at"; stores hold them without ``format`` (and without keys and waiver), so only
    these members are checked.
    """
    if not isinstance(payload.get("device"), str):
        raise ValueError("a batch payload without a device")
    for name in ("root", "previous_root"):
        if not isinstance(payload.get(name), str) or not HEX64.fullmatch(payload[name]):
            raise ValueError(f"a batch payload whose {name} is not 64 hex digits")
    instant(payload.get("window_start"))
    instant(payload.get("window_end"))


MEANINGS = {"approved", "reviewed", "authored"}


def plan_claim(lines: list[str]) -> dict[str, str]:
    """The lines of a plan signature's text (plans.md#the-signature-file): v2's seven, or
    the four of a signature made before signatures named their signer."""
    if len(lines) == 4 and lines[0] == "converge.plan/v1":
        names = ["device", "digest", "signed_at"]
    elif len(lines) == 7 and lines[0] == "converge.plan-signature/v2":
        names = ["device", "digest", "signed_at", "signer", "name", "meaning"]
        for line, prefix in zip(lines[4:], ("signer ", "name ", "meaning "), strict=True):
            if not line.startswith(prefix) or len(line) == len(prefix):
                raise ValueError(f"{line!r} is not a {prefix.strip()} line")
        lines = lines[:4] + [line.split(" ", 1)[1] for line in lines[4:]]
        if lines[6] not in MEANINGS:
            raise ValueError(f"meaning {lines[6]!r}")
    else:
        raise ValueError("not the lines of a plan signature")
    if not SECOND.fullmatch(lines[3]):
        raise ValueError(f"signing time {lines[3]!r}")
    return dict(zip(names, lines[1:], strict=True))


COMMON = {"v", "type", "device", "point", "salt"}
READING = COMMON | {"collected_at", "value", "quality", "scheduled_at", "source_at"}
READING |= {"server_at", "raw_code", "coalesced", "held"}
GAP = COMMON | {"scheduled_at", "reason", "detail", "raw_code", "last_scheduled_at", "slots"}
QUALITIES = {"good", "uncertain", "bad", "stale"}
"""The members of a leaf (records.md#leaf-bytes)."""


class Verifier:
    def __init__(
        self, public_keys: list[Any], audit_key: str, plan_key: str | None, verdict: Verdict
    ) -> None:
        self.verdict = verdict
        self.fail = verdict.fail
        self.keys = trusted_versions(public_keys, verdict)
        self.audit_key, self.plan_key = audit_key, plan_key
        self.entries: dict[int, Entry] = {}
        self.size = 0
        self.origin = ""
        self.roots: dict[int, bytes] = {}
        self.checkpoints: list[Checkpoint] = []
        self.plans: dict[str, Plan] = {}
        self.batches: dict[int, dict[str, Any]] = {}
        self.batch_ids: set[int] = set()

    # --- the audit log ---

    def audit_log(self, db: Any, wanted_sizes: set[int]) -> None:
        meta = {as_text(k): as_text(v) for k, v in db.execute('SELECT "key", value FROM meta')}
        self.origin = meta.get("audit.origin", "")
        rows = db.execute("SELECT seq, time, kind, entry FROM audit_entries ORDER BY seq")
        tree, expected = LogTree(), 0
        for seq, time, kind, raw in rows:
            if seq != expected:
                holes = f"{expected}" if seq == expected + 1 else f"{expected}..{seq - 1}"
                self.fail(f"audit entry {holes}", "missing: the log has a hole here")
            expected = seq + 1
            tree.append(leaf_hash(as_bytes(raw)))
            if tree.size in wanted_sizes:
                self.roots[tree.size] = tree.root()
            self.entry(seq, time, kind, as_bytes(raw))
        self.size = tree.size
        if 0 in wanted_sizes:
            self.roots[0] = EMPTY_ROOT
        if meta.get("audit.state") != tree.state():
            self.fail("audit log", "the saved state is not that of the entries")
        self.log_key()

    def entry(self, seq: int, time: object, kind: object, raw: bytes) -> None:
        item = f"audit entry {seq}"
        try:
            value = canonical(raw)
            # audit.md: an entry parses when its actor is an object (older: a string)
            if not isinstance(value, dict) or set(value) != ENTRY:
                raise ValueError("not an object of actor, kind, payload, seq and time")
            if type(value["seq"]) is not int or not isinstance(value["actor"], dict | str):
                raise ValueError("its seq is not an integer, or its actor not an object or string")
            at = instant(value["time"])
            payload = value["payload"]
            if value["kind"] not in KINDS or not isinstance(payload, dict):
                raise ValueError(f"unknown kind {value['kind']!r}, or a payload not an object")
            members = KINDS[value["kind"]]
            if members is not None and set(payload) != members:
                raise ValueError(f"a {value['kind']} payload of {sorted(payload)}")
            if value["kind"] in {"batch.stored", "batch.dropped"}:
                batch_payload(payload)
        except ValueError as exc:
            self.fail(item, f"not a well-formed entry: {exc}")
            return
        if (value["seq"], value["time"], value["kind"]) != (seq, time, kind):
            self.fail(item, "its columns disagree with its bytes")
        self.entries[seq] = Entry(seq, at, value["kind"], payload, value["actor"], value["time"])

    def log_key(self) -> None:
        named = ORIGIN.fullmatch(self.origin)
        if not named:
            self.fail("audit log", f"origin {self.origin!r} is not converge/audit/KEY/UUID")
        elif named[1] is None:
            self.verdict.notes.append(
                f"audit log: made before logs named their key; verified under {self.audit_key}"
            )
        elif named[1] != self.audit_key:
            self.fail("audit log", f"its origin names the key {named[1]!r}, not {self.audit_key!r}")
        first = self.entries.get(0)
        # DOC GAP: "<random UUID>" is not pinned to a spelling; taken: lowercase 8-4-4-4-12 hex.
        if named and named[1] is not None:
            want = {"audit_key": self.audit_key, "origin": self.origin}
            if first is None or first.kind != "log.created" or first.payload != want:
                self.fail("audit entry 0", f"is not log.created of {want}")
        for entry in self.entries.values():
            if entry.kind == "log.created" and (entry.seq != 0 or named is None or not named[1]):
                self.fail(f"audit entry {entry.seq}", "log.created out of place")
        if not self.keys.get(self.audit_key):
            self.fail("audit log", f"the audit key {self.audit_key!r} is not trusted")

    # --- checkpoints ---

    def checkpoint_rows(self, db: Any) -> list[tuple[int, int, str]]:
        rows = db.execute("SELECT id, size, note FROM checkpoints ORDER BY id")
        return [(i, size, as_text(note)) for i, size, note in rows]

    def check_checkpoints(self, rows: list[tuple[int, int, str]]) -> None:
        versions = self.keys.get(self.audit_key, [])
        for ident, size, text in rows:
            item = f"checkpoint {ident} (size {size})"
            try:
                checkpoint = open_checkpoint(text, self.origin, versions)
            except (ValueError, UnicodeError) as exc:
                self.fail(item, f"does not verify: {exc}")
                continue
            if checkpoint.size != size:
                self.fail(item, f"its size column disagrees with its note ({checkpoint.size})")
            if not any(v.valid_in_second(checkpoint.time) for v in checkpoint.signed_by):
                self.fail(item, f"signed by a version not valid at {checkpoint.time}")
            if checkpoint.time > datetime.now(UTC) + timedelta(minutes=5):
                self.fail(item, "dated in the future: after this verification's clock")
            if checkpoint.size > self.size:
                self.fail(item, f"the log was truncated: it holds {self.size} entries")
            elif self.roots.get(checkpoint.size) != checkpoint.root:
                self.fail(item, "the entries do not hash to the signed root")
            checkpoint.item = item
            self.checkpoints.append(checkpoint)
            self.order(item, checkpoint)
        if self.size and not rows:
            self.fail("audit log", "no checkpoint: nothing signs the log")
        self.sealed_after()

    def sealed_after(self) -> None:
        """No checkpoint signs a batch whose window began after the time it states, but for
        30 s of a clock stepped meanwhile (audit.md#checkpoints)."""
        ordered = sorted(self.checkpoints, key=lambda c: c.size)
        sizes = [c.size for c in ordered]
        earliest: list[Checkpoint] = []  # earliest[i]: the earliest-dated of ordered[i:]
        for checkpoint in reversed(ordered):
            if not earliest or checkpoint.time <= earliest[-1].time:
                earliest.append(checkpoint)
            else:
                earliest.append(earliest[-1])
        earliest.reverse()
        for entry in self.entries.values():
            i = bisect.bisect_right(sizes, entry.seq)
            if entry.kind not in BATCH_KINDS or i == len(ordered):
                continue
            signer = earliest[i]
            if instant(entry.payload["window_start"]) > signer.time + timedelta(seconds=30):
                self.fail(signer.item, f"signs a batch sealed after it (audit entry {entry.seq})")

    def order(self, item: str, new: Checkpoint) -> None:
        """Same size, same root; a larger size signed no earlier than a smaller one."""
        olds = self.checkpoints[:-1]
        if any(old.size == new.size and old.root != new.root for old in olds):
            self.fail(item, f"fork: another root at size {new.size}")
        if any(
            (old.size < new.size and new.time < old.time)
            or (old.size > new.size and old.time < new.time)
            for old in olds
        ):
            self.fail(item, "back-dated: its time is out of order with its size")

    def tail(self, rows: list[tuple[int, int, str]]) -> None:
        """audit.md#the-unsigned-tail."""
        if not rows:
            return
        last = max(size for _, size, _ in rows)
        tail = [e for seq, e in sorted(self.entries.items()) if seq >= last]
        if not tail:
            return
        first = f"audit entries {tail[0].seq}..{tail[-1].seq}"
        self.verdict.notes.append(f"{first}: signed by no checkpoint yet")
        for entry in tail:
            if entry.kind not in RUN_KINDS | KEYLESS_KINDS:
                self.fail(f"audit entry {entry.seq}", f"{entry.kind} after the last checkpoint")
        signed = [e for seq, e in sorted(self.entries.items()) if seq < last]
        runs = [e for e in signed if e.kind in {"collector.started", "collector.stopped"}]
        if all(e.kind in KEYLESS_KINDS for e in tail):
            return  # DOC GAP: no bound is given for a tail of keyless commands' entries alone
        if not runs or runs[-1].kind != "collector.started":
            self.fail(first, "no signed collector.started without its stop precedes them")
            return
        self.run_tail(first, tail, runs[-1], [c.time for c in self.checkpoints if c.size == last])

    def run_tail(
        self, first: str, tail: list[Entry], started: Entry, signed_at: list[datetime]
    ) -> None:
        """A running or killed run's tail: one checkpoint interval of entries and of time."""
        interval, entries = (
            started.payload.get("checkpoint_s"),
            started.payload.get("checkpoint_entries"),
        )
        if not isinstance(interval, int | float) or not isinstance(entries, int):
            self.fail(f"audit entry {started.seq}", "no checkpoint_s and checkpoint_entries")
            return
        # audit.md: only the run's own entries count against its checkpoint_entries + 64.
        if sum(entry.kind in RUN_KINDS for entry in tail) > entries + 64:
            self.fail(first, "more than one checkpoint interval of entries")
        for entry in tail:
            if entry.kind not in BATCH_KINDS or not signed_at:
                continue
            start = instant(entry.payload["window_start"])
            window = instant(entry.payload["window_end"]) - start
            if start > max(signed_at) + timedelta(seconds=interval + 30) + window:
                self.fail(
                    f"audit entry {entry.seq}", "a batch later than the last checkpoint allows"
                )

    def rotation_note(self) -> None:
        """audit.md: what only the witness shows."""
        if not self.checkpoints:
            return
        newest = max(c.time for c in self.checkpoints)
        if any(v.not_before > newest for v in self.keys.get(self.audit_key, [])):
            self.verdict.notes.append(
                "audit log: its key was rotated after its newest checkpoint (a log no longer"
                " written since, or a store rolled back to before the rotation)"
            )

    # --- the witness ---

    def witness_lines(self, witness: Path) -> list[tuple[int, str | None]]:
        found: list[tuple[int, str | None]] = []
        for number, line in enumerate(witness.read_text("utf-8").splitlines(), 1):
            if not line.strip():
                continue  # DOC GAP: blank lines in the witness file are not described
            try:
                found.append((number, json.loads(line)["note"]))
            except (ValueError, KeyError, TypeError):
                found.append((number, None))
        return found

    def check_witness(
        self, witness: Path, lines: list[tuple[int, str | None]], stored: set[str]
    ) -> None:
        """Every witnessed checkpoint signs a prefix of the stored log, and is stored.

        DOC GAP: "is stored" is not pinned down; taken: its note's exact text is a stored one.
        """
        versions = self.keys.get(self.audit_key, [])
        newest = -1
        for number, text in lines:
            item = f"witness {witness.name}:{number}"
            if text is None:
                self.fail(item, "not a line of {note, written_at}")
                continue
            try:
                checkpoint = open_checkpoint(text, self.origin, versions)
            except (ValueError, UnicodeError) as exc:
                self.fail(item, f"does not verify as a checkpoint of this log: {exc}")
                continue
            newest = max(newest, checkpoint.size)
            if checkpoint.size > self.size:
                self.fail(item, f"the store is older than the witnessed log ({checkpoint.size})")
            elif self.roots.get(checkpoint.size) != checkpoint.root:
                self.fail(item, "the store's log is not the witnessed log")
            elif text not in stored:
                self.fail(item, "the store does not hold this checkpoint (deleted?)")
        if any(c.size > newest for c in self.checkpoints):
            self.verdict.notes.append(
                f"witness {witness.name}: checkpoints newer than its newest line vouched by none"
            )

    def witness_sizes(self, lines: list[tuple[int, str | None]]) -> set[int]:
        sizes = set()
        for _, text in lines:
            with contextlib.suppress(Exception):
                sizes.add(int(text.split("\n")[1]))  # type: ignore[union-attr]
        return sizes

    # --- plans ---

    def check_plans(self, db: Any) -> None:
        deployed: dict[str, list[Entry]] = defaultdict(list)
        for entry in self.entries.values():
            if entry.kind == "plan.deployed":
                deployed[str(entry.payload.get("digest"))].append(entry)
        rows = db.execute("SELECT digest, device, body, signature FROM plans ORDER BY digest")
        for digest_column, device_column, body, signature in rows:
            digest, device = as_text(digest_column), as_text(device_column)
            item = f"plan {digest} ({device})"
            entries = deployed.pop(digest, [])
            plan = self.plan(item, digest, device, as_bytes(body))
            if plan is None:
                continue
            plan.deployed = entries
            self.plans[digest] = plan
            if not entries:
                self.fail(item, "no plan.deployed entry records it")
            claim = self.plan_signature(
                item, plan, None if signature is None else as_text(signature)
            )
            # DOC GAP: "plans and plan.deployed entries match one to one", yet "the entry may be
            # logged twice" (store and forward). Taken: one or more entries, each naming the
            # plan's device and describing its signature, if any.
            stored = {"device": device, "digest": digest, "signed": signature is not None}
            stored |= claim
            for entry in entries:
                if entry.payload != stored:
                    self.fail(item, f"audit entry {entry.seq} does not record it as stored")
        for digest, entries in deployed.items():
            for entry in entries:
                self.fail(f"plan {digest}", f"audit entry {entry.seq} deploys it: not stored")

    def plan(self, item: str, digest: str, device: str, body: bytes) -> Plan | None:
        try:
            plan = canonical(body)
            if not isinstance(plan, dict) or plan.get("format") != "converge.plan/v1":
                raise ValueError("not a converge.plan/v1 plan")
            rest = {k: v for k, v in plan.items() if k != "digest"}
            want = "sha256:" + hashlib.sha256(jcs(rest)).hexdigest()
            if plan.get("digest") != digest or want != digest:
                raise ValueError(f"digest does not verify (want {want})")
            if plan["device"]["id"] != device:
                raise ValueError(f"it is the plan of {plan['device']['id']!r}")
            # DOC GAP: audit.md takes the keys and waivers from the plan's points; records.md
            # (signing and waivers) from the batch's records' points. Stores follow audit.md.
            points = plan["points"]
            required: set[str] = set()
            waivers: dict[bytes, Any] = {}
            windows = []
            retention = {}
            for point in points:
                retention[point["name"]] = (point.get("retention") or {}, retention_of(point))
                signing = point.get("signing", {})
                if signing.get("required") is True:
                    required.update(signing.get("keys", []))
                if "batch_window_ms" in signing:
                    windows.append(signing["batch_window_ms"])
                for waived in point.get("waived", []):
                    if "signing" in waived.get("facets", []):
                        waivers[jcs(waived)] = waived
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            self.fail(item, f"its bytes: {exc}")
            return None
        sorted_waivers = [waivers[k] for k in sorted(waivers)]
        window = min(windows, default=60000)
        return Plan(digest, device, sorted(required), sorted_waivers, window, [], retention)

    def plan_signature(self, item: str, plan: Plan, signature: str | None) -> dict[str, str]:
        """audit.md (a stored plan's signature), plans.md#the-signature-file: what its
        plan.deployed entry must say of it (``signed_at`` and, from v2, signer, name, meaning).

        DOC GAP: audit.md names the members ``signed_at``, ``signer``, ``name`` and ``meaning``
        without their spelling; taken: the note's own lines (the time as the note writes it).
        """
        if signature is None:
            if self.plan_key is not None:
                self.fail(item, f"not signed, and --plan-key {self.plan_key} requires it")
            return {}
        if self.plan_key is not None:
            trusted = [(self.plan_key, v) for v in self.keys.get(self.plan_key, [])]
        else:
            trusted = [(name, v) for name, vs in self.keys.items() for v in vs]
        try:
            note = parse_note(signature)
            claim = plan_claim(note.text.split("\n")[:-1])
            good = signers(note, trusted)
        except (ValueError, UnicodeError) as exc:
            self.fail(item, f"its signature: {exc}")
            return {"signed_at": "?"}  # the entry cannot describe a signature that is not one
        at = datetime.fromisoformat(claim["signed_at"])
        if (claim.pop("device"), claim.pop("digest")) != (plan.device, plan.digest):
            self.fail(item, "its signature is of another plan")
        if not any(v.valid_at(at) for v in good):
            self.fail(item, f"its signature is by a version not valid at {claim['signed_at']}")
        # DOC GAP: "no later than the plan.deployed entry (but for the one second the stated
        # time is rounded up by)": taken as stated time <= the earliest entry's time + 1 s.
        if plan.deployed and at > min(e.time for e in plan.deployed) + timedelta(seconds=1):
            self.fail(item, "its signature is later than its deployment")
        return claim

    # --- batches ---

    def check_batches(self, db: Any) -> None:
        signatures: dict[int, dict[str, bytes]] = defaultdict(dict)
        for batch_id, key, signature in db.execute(
            'SELECT batch_id, "key", signature FROM batch_signatures'
        ):
            signatures[batch_id][as_text(key)] = as_bytes(signature)
        columns = (
            "id, device, window_start, window_end, count, root, previous_root, plan_digest,"
            " statement, keys, waiver, audit_seq, point_map"
        )
        by_seq: dict[int, int] = {}
        for row in db.execute(f"SELECT {columns} FROM batches ORDER BY id"):
            batch = dict(zip([c.strip() for c in columns.split(",")], row, strict=True))
            item = f"batch {batch['id']} ({batch['device']} {batch['window_start']})"
            if batch["audit_seq"] in by_seq:
                self.fail(item, f"its audit entry records batch {by_seq[batch['audit_seq']]}")
            by_seq[batch["audit_seq"]] = batch["id"]
            self.batch_ids.add(batch["id"])
            self.batch(item, batch, signatures.get(batch["id"], {}))
        for entry in self.entries.values():
            if entry.kind == "batch.stored" and entry.seq not in by_seq:
                where = f"{entry.payload['device']} {entry.payload['window_start']}"
                self.fail(f"batch of {where}", f"deleted: audit entry {entry.seq} records it")
        self.chains()

    def batch(self, item: str, row: dict[str, Any], signatures: dict[str, bytes]) -> None:
        try:
            statement = self.statement(as_bytes(row["statement"]))
        except ValueError as exc:
            self.fail(item, f"its statement: {exc}")
            return
        self.batches[row["id"]] = {
            "item": item,
            "statement": statement,
            "points": self.point_map(item, row["point_map"], statement),
        }
        keys, waiver = self.columns(item, row, statement)
        plan = self.plans.get(statement["plan_digest"])
        if plan is None or plan.device != statement["device"]:
            self.fail(item, "its plan is not a stored plan of its device")
        else:
            self.window(item, statement, plan)
            if keys != plan.required or waiver != ([] if plan.required else plan.waivers):
                self.fail(item, "its keys or waiver are not its plan's")
        entry = self.entries.get(row["audit_seq"])
        want = {k: v for k, v in statement.items() if k != "format"}
        want |= {"keys": keys, "waiver": waiver}
        if entry is None or entry.kind != "batch.stored" or entry.payload != want:
            self.fail(item, f"audit entry {row['audit_seq']} does not record exactly it")
        if entry is None or entry.kind != "batch.stored":
            return  # no time to judge its signatures at
        for key in plan.required if plan else keys:
            self.signature(item, key, signatures.get(key), as_bytes(row["statement"]), entry.time)

    def statement(self, raw: bytes) -> dict[str, Any]:
        """records.md#batch-statement, exactly."""
        value = canonical(raw)
        if not isinstance(value, dict) or set(value) != STATEMENT:
            raise ValueError("not the members of a batch statement")
        if value["format"] != "converge.batch/v2" or not isinstance(value["device"], str):
            raise ValueError("not a converge.batch/v2 statement")
        instant(value["window_start"]), instant(value["window_end"])
        count = value["count"]
        if not isinstance(count, int) or isinstance(count, bool) or count < 0:
            raise ValueError(f"count {count!r}")
        if not all(
            isinstance(value[k], str) and HEX64.fullmatch(value[k])
            for k in ("root", "previous_root", "point_map")
        ):
            raise ValueError("a root or its point map is not 64 hex digits")
        if not isinstance(value["plan_digest"], str) or not DIGEST.fullmatch(value["plan_digest"]):
            raise ValueError("plan_digest is not sha256:HEX")
        return value

    def point_map(self, item: str, stored: Any, statement: dict[str, Any]) -> list[str] | None:
        """records.md#the-point-map: the stored map hashes to the statement's ``point_map``
        and is a JSON array of one point name per record; its names, or None (failed)."""
        raw = None if stored is None else as_bytes(stored)
        if raw is None or hashlib.sha256(raw).hexdigest() != statement["point_map"]:
            self.fail(item, "its stored point map is not the one its statement signs")
            return None
        try:
            names = json.loads(raw)
        except ValueError:
            names = None
        if not (
            isinstance(names, list)
            and len(names) == statement["count"]
            and all(isinstance(n, str) for n in names)
        ):
            self.fail(item, "its point map is not one point name per record")
            return None
        return names

    def columns(
        self, item: str, row: dict[str, Any], statement: dict[str, Any]
    ) -> tuple[list[Any], list[Any]]:
        """audit.md#the-stored-columns-exactly: the columns say what the statement says."""
        same = (
            row["device"] == statement["device"]
            and row["window_start"] == statement["window_start"]
            and row["window_end"] == statement["window_end"]
            and row["count"] == statement["count"]
            and as_bytes(row["root"]) == bytes.fromhex(statement["root"])
            and as_bytes(row["previous_root"]) == bytes.fromhex(statement["previous_root"])
            and row["plan_digest"] == statement["plan_digest"]
        )
        if not same:
            self.fail(item, "its columns disagree with its signed statement")
        try:
            keys = canonical(as_bytes(row["keys"]))
            waiver = canonical(as_bytes(row["waiver"]))
            if not isinstance(keys, list) or keys != sorted(set(keys)):
                raise ValueError("keys are not a sorted list of names")
            if not isinstance(waiver, list) or [jcs(w) for w in waiver] != sorted(
                {jcs(w) for w in waiver}
            ):
                raise ValueError("the waiver is not a sorted list")
        except (ValueError, TypeError) as exc:
            self.fail(item, f"its keys or waiver column: {exc}")
            return [], []
        return keys, waiver

    def window(self, item: str, statement: dict[str, Any], plan: Plan) -> None:
        start = micros(instant(statement["window_start"])) // 1000
        end = micros(instant(statement["window_end"])) // 1000
        if start % plan.window_ms or end - start != plan.window_ms:
            self.fail(item, f"its window is not one of its plan's {plan.window_ms} ms windows")

    def signature(
        self, item: str, key: str, signature: bytes | None, statement: bytes, at: datetime
    ) -> None:
        """DOC GAP: records.md ignores signatures of keys the batch does not require; audit.md
        does not say, and ``audit verify`` fails a batch with such a row. Taken: ignored."""
        if signature is None:
            self.fail(item, f"the signature of key {key!r} is missing")
            return
        valid = [v for v in self.keys.get(key, []) if v.valid_at(at)]
        if not valid:
            self.fail(item, f"no trusted version of key {key!r} is valid at {at}")
        elif not (len(signature) == 64 and any(v.verifies(statement, signature) for v in valid)):
            self.fail(item, f"the signature of key {key!r} does not verify")

    def chains(self) -> None:
        """Each device's batches, stored and dropped, form one chain from the zero root."""
        nodes: dict[str, list[tuple[str, str, str]]] = defaultdict(list)
        for batch in self.batches.values():
            s = batch["statement"]
            nodes[s["device"]].append((s["previous_root"], s["root"], batch["item"]))
        for entry in self.entries.values():
            if entry.kind == "batch.dropped":
                p = entry.payload
                label = f"audit entry {entry.seq} (dropped batch)"
                nodes[str(p.get("device"))].append(
                    (str(p.get("previous_root")), str(p.get("root")), label)
                )
        for device, chain in nodes.items():
            self.chain(device, chain)

    def chain(self, device: str, chain: list[tuple[str, str, str]]) -> None:
        children: dict[str, list[str]] = defaultdict(list)
        after: dict[str, str] = {}
        for previous, root, item in chain:
            children[previous].append(item)
            after.setdefault(previous, root)
        reached, head = set(), ZERO_ROOT_HEX
        while head in after and head not in reached:
            reached.add(head)
            head = after[head]
        for previous, _, item in chain:
            if children[previous][0] != item:
                self.fail(
                    item, f"chain forked: it follows the batch {children[previous][0]} follows"
                )
            elif previous not in reached:
                self.fail(item, f"chain broken: no batch of {device} leads to its previous root")

    # --- records ---

    def check_records(self, db: Any) -> None:
        erased = self.check_erasures(db)
        found: dict[int, list[tuple[int, bytes, str]]] = defaultdict(list)
        for table, kind in (("readings", "reading"), ("gap_records", "gap")):
            for batch_id, position, leaf in db.execute(
                f"SELECT batch_id, position, leaf FROM {table}"
            ):
                found[batch_id].append((position, as_bytes(leaf), kind))
        for batch_id, records in found.items():
            if batch_id not in self.batch_ids:
                self.fail(f"records of batch {batch_id}", f"{len(records)} of a batch not stored")
        for batch_id, batch in self.batches.items():
            records = sorted(found.get(batch_id, []))
            self.records(batch["item"], batch["statement"], records, erased.get(batch_id, {}))
            if erased.get(batch_id):
                self.mapped(batch["item"], batch["points"], records)

    def records(
        self,
        item: str,
        statement: dict[str, Any],
        records: list[Any],
        erased: dict[int, bytes | None],
    ) -> None:
        """The stored records and the positions deletion receipts removed (retention.md) fill
        positions 0 .. count - 1 exactly once; unless none is stored, the records and the leaf
        hashes the receipts kept hash to the signed root."""
        positions = [p for p, _, _ in records]
        if set(positions) & set(erased):
            self.fail(item, "a record stored again at a position a receipt deleted")
            return
        if sorted(positions + list(erased)) != list(range(statement["count"])):
            self.fail(
                item,
                f"records deleted or inserted: {len(records)} at {statement['count']}"
                f" ({len(erased)} deleted by receipts)",
            )
            return
        if not records:
            return  # every record deleted: nothing left whose inclusion the root would prove
        if None in erased.values():
            self.fail(item, "records remain, yet a receipt of it kept no leaf hashes")
            return
        hashes, keys, bad = [], [], []
        # Instants have one spelling, so they compare as text; windows are whole milliseconds,
        # so a time rounded down to the millisecond is in one exactly when the time is.
        # DOC GAP: records.md sorts by "the record's time (above, to the microsecond)" where
        # "above" rounds it down to the millisecond. Taken: the microsecond.
        start, end = statement["window_start"], statement["window_end"]
        for position, leaf, kind in records:
            hashed = leaf_hash(leaf)
            hashes.append(hashed)
            try:
                at, point = self.leaf(leaf, kind, statement["device"])
            except (ValueError, KeyError, TypeError) as exc:
                bad.append(f"record at {position}: {exc}")
                continue
            if not start <= at < end:
                bad.append(f"record at {position} is outside the window")
            keys.append((at, point.encode(), kind != "gap", hashed))
        kept = dict(zip(positions, hashes, strict=True)) | erased
        if mth([kept[p] for p in range(statement["count"])]).hex() != statement["root"]:
            self.fail(item, "its records do not hash to its signed root")
        elif bad:
            self.fail(item, "; ".join(bad[:3]))
        elif keys != sorted(keys):
            self.fail(item, "its records are not in the order records.md sorts them")

    def mapped(self, item: str, points: list[str] | None, records: list[Any]) -> None:
        """records.md#the-point-map: each record a batch with deletions still holds is of the
        point the map names at its position (a batch that keeps every record is judged by its
        root alone)."""
        for position, leaf, _ in records:
            try:
                point = canonical(leaf).get("point")
            except (ValueError, AttributeError):
                continue  # not a record: records() names it
            if points is not None and position < len(points) and points[position] != point:
                self.fail(item, f"its record at {position} is not of the point its map names")
                return

    def leaf(self, leaf: bytes, kind: str, device: str) -> tuple[str, str]:
        """records.md#leaf-bytes: the record's time (an instant) and point."""
        record = canonical(leaf)
        if not isinstance(record, dict):
            raise ValueError("not an object")
        if record.get("type") != kind or record.get("v") != 1 or record.get("device") != device:
            raise ValueError(f"not a v1 {kind} of {device}")
        if not isinstance(record.get("point"), str) or not SALT.fullmatch(str(record.get("salt"))):
            raise ValueError("no point or salt")
        if kind == "reading":
            allowed = READING
            if record.get("quality") not in QUALITIES:
                raise ValueError("no quality")
            if not isinstance(record.get("value", []), int | float | str | None):
                raise ValueError("no value, or not a number, boolean, string or null")
            at = record.get("scheduled_at") or record["collected_at"]
            instant(record["collected_at"])
            if record.get("held", True) is not True:
                raise ValueError("held, and not true")
        else:
            allowed = GAP
            if not isinstance(record.get("reason"), str):
                raise ValueError("no reason")
            at = record["scheduled_at"]
            run_of_slots(record)
        instant(at)
        extra = record.keys() - allowed
        if extra:
            raise ValueError(f"members {sorted(extra)}")
        for name in ("source_at", "server_at"):
            if name in record:
                instant(record[name])
        return at, record["point"]

    # --- retention (retention.md, audit.md#what-audit-verify-checks) ---

    def check_erasures(self, db: Any) -> dict[int, dict[int, bytes | None]]:
        """Each ``erasures`` row is its receipt's: the batch, positions and leaf hashes the
        ``retention.deleted`` entry it names says; every receipt has its row. By batch: the
        leaf hash kept of each position removed (None: its receipt removed the batch's last
        records, and keeps none).

        DOC GAP: audit.md names the table's contents, not its columns; taken from the
        database: ``batch_id``, ``receipt`` (the entry's seq), ``positions`` (canonical JSON
        of the runs, as text) and ``leaf_hashes`` (the 32-byte hashes, concatenated)."""
        erased: dict[int, dict[int, bytes | None]] = defaultdict(dict)
        receipts = {s: e for s, e in self.entries.items() if e.kind == "retention.deleted"}
        seen = set()
        rows = db.execute("SELECT batch_id, receipt, positions, leaf_hashes FROM erasures")
        for batch_id, seq, runs, kept in rows:
            item = f"erasure of batch {batch_id}"
            try:
                positions = expand(canonical(as_bytes(runs)))
                hashes = as_bytes(kept)
                if len(hashes) not in {0, 32 * len(positions)}:
                    raise ValueError("not one 32-byte hash per position, nor none")
            except (ValueError, TypeError) as exc:
                self.fail(item, f"not an erasure: {exc}")
                continue
            seen.add(seq)
            receipt = receipts.get(seq)
            if receipt is None:
                self.fail(item, f"no deletion receipt: audit entry {seq} is none")
                continue
            said = receipt.payload
            if (said.get("batch"), said.get("positions"), said.get("leaf_hashes")) != (
                batch_id,
                canonical(as_bytes(runs)),
                base64.b64encode(hashes).decode(),
            ):
                self.fail(f"receipt (audit entry {seq})", f"the {item} differs from it")
            for i, position in enumerate(positions):
                if position in erased[batch_id]:
                    self.fail(item, f"position {position} deleted twice")
                erased[batch_id][position] = hashes[32 * i : 32 * i + 32] or None
        for seq in receipts.keys() - seen:
            self.fail(f"receipt (audit entry {seq})", "the store keeps no erasure of it")
        return erased

    def check_holds(self, db: Any) -> None:
        """The holds are what their ``hold.placed`` and ``hold.released`` entries say, and the
        ``holds`` rows say the same (a hold is never deleted).

        DOC GAP: audit.md names the table's contents, not its columns; taken from the
        database. The row's placer and releaser are the entry's actor's ``id``, and its
        times the entry's ``time``, as spelled there."""
        self.holds: dict[int, dict[str, Any]] = {}
        self.named: dict[str, int] = {}  # the first hold entry naming each decision
        for entry in sorted(self.entries.values(), key=lambda e: e.seq):
            said, item = entry.payload, f"audit entry {entry.seq}"
            if entry.kind in {"hold.placed", "hold.released"}:
                self.named.setdefault(json.dumps(said.get("decision")), entry.seq)
            if entry.kind == "hold.placed":
                if not isinstance(said["hold"], int) or said["hold"] in self.holds:
                    self.fail(item, f"places hold {said['hold']!r} again, or no hold")
                    continue
                self.undecided(entry, said)
                self.holds[said["hold"]] = said | {
                    "placed_by": actor_id(entry.actor),
                    "placed_at": entry.stamp,
                    "placed_seq": entry.seq,
                    "released_by": None,
                    "released_at": None,
                    "release_reason": None,
                    "released_seq": None,
                }
            elif entry.kind == "hold.released":
                hold = self.holds.get(said["hold"])
                if hold is None or hold["released_seq"] is not None:
                    self.fail(item, f"releases hold {said['hold']!r}: unknown or released")
                    continue
                if self.undecided(entry, hold):
                    continue  # a release no decision allowed: the hold stays in force
                hold["released_by"], hold["released_at"] = actor_id(entry.actor), entry.stamp
                hold["release_reason"], hold["released_seq"] = said["reason"], entry.seq
        columns = (
            "id, devices, points, from_time, to_time, reason, placed_by, placed_at,"
            " placed_seq, released_by, released_at, release_reason, released_seq"
        )
        names = [c.strip() for c in columns.split(",")]
        rows = {row[0]: dict(zip(names, row, strict=True)) for row in db.execute(
            f"SELECT {columns} FROM holds"
        )}  # fmt: skip
        for hold_id, hold in self.holds.items():
            row = rows.pop(hold_id, None)
            if row is None:
                self.fail(f"hold {hold_id}", "placed by its entry, missing from the store")
                continue
            want = {k: hold[k] for k in names[6:]} | {"reason": hold["reason"]}
            got = {k: row[k] for k in names[5:]}
            scope = (hold["devices"], hold["points"], hold["from"], hold["to"])
            try:
                row_scope = (
                    canonical(as_bytes(row["devices"])),
                    canonical(as_bytes(row["points"])),
                    row["from_time"],
                    row["to_time"],
                )
            except ValueError:
                row_scope = None
            if got != want or row_scope != scope:
                self.fail(f"hold {hold_id}", "the store's row is not what its entries say")
        for hold_id in rows:
            self.fail(f"hold {hold_id}", "in the store, but no entry placed it")

    def undecided(self, entry: Entry, hold: dict[str, Any]) -> bool:
        """retention.md#legal-holds: a hold entry names an earlier ``access.decision`` that
        allowed its actor (outcome ``allow``, action ``hold``) on the hold's scope as placed:
        the same ``from``/``to``, every point decided within its devices and globs, each
        device it names decided, each glob matching a decided point of each device; the
        first entry of that decision id before it is the decision, and no earlier hold entry
        named it (a decision allows one placing or one release). Failed (and True) when not.

        DOC GAP: retention.md says the guard decides "every point the hold covers"; which
        points those are (the plans in force then) is not in the log, so the decided points
        are held to the scope, not the scope to a list of points."""
        named = entry.payload.get("decision")
        decision = next(
            (
                e
                for e in sorted(self.entries.values(), key=lambda e: e.seq)
                if e.kind == "access.decision"
                and e.payload.get("decision") == named
                and e.seq < entry.seq
            ),
            None,
        )
        said = decision.payload if decision else {}
        who = actor_id(entry.actor)
        points = said.get("points") if isinstance(said.get("points"), list) else []
        pairs = {(p.get("device"), p.get("point")) for p in points if isinstance(p, dict)}
        devices = {d for d, _ in pairs}
        ok = (
            decision is not None
            and self.named[json.dumps(named)] == entry.seq
            and said.get("action") == "hold"
            and said.get("outcome") == "allow"
            and said.get("principal") == who == actor_id(decision.actor)
            and same_instant(said.get("from"), hold["from"])
            and same_instant(said.get("to"), hold["to"])
            and bool(pairs)
            and all(isinstance(p, dict) and p.get("allowed") is True for p in points)
            and (not hold["devices"] or devices == set(hold["devices"]))
            and pairs == held_pairs(hold)
            and all(
                (not hold["devices"] or d in hold["devices"])
                and (not hold["points"] or any(fnmatchcase(str(p), g) for g in hold["points"]))
                for d, p in pairs
            )
            and all(
                any(fnmatchcase(str(p), g) for d2, p in pairs if d2 == d)
                for g in hold["points"]
                for d in devices
            )
        )
        if not ok:
            self.fail(f"audit entry {entry.seq}", f"{entry.kind}: no decision allowed it")
        return not ok

    def check_receipts(self) -> None:
        """Every deletion receipt names its batch as signed, and was lawful: each point it
        deleted expired by the batch's plan by the receipt's time, no hold in force covered
        it, what the plan archives was archived first, and no checkpoint signing it is
        dated before it (retention.md#what-verification-concludes). Each leaves its batch
        the records it says (``remaining``), and keeps their leaf hashes unless none remain
        (retention.md#the-deletion-receipt)."""
        self.removed: dict[int, int] = {}
        for entry in sorted(self.entries.values(), key=lambda e: e.seq):
            if entry.kind != "retention.deleted":
                continue
            item = f"receipt (audit entry {entry.seq})"
            try:
                self.receipt(item, entry)
            except (ValueError, KeyError, TypeError) as exc:
                self.fail(item, f"not a deletion receipt: {exc}")

    def receipt(self, item: str, entry: Entry) -> None:
        said = entry.payload
        batch = self.batches.get(said["batch"])
        if batch is None:
            self.fail(item, f"names batch {said['batch']!r}, not a stored batch")
            return
        s = batch["statement"]
        named = [said[k] for k in ("device", "root", "plan", "window_start", "window_end")]
        if named != [s[k] for k in ("device", "root", "plan_digest", "window_start", "window_end")]:
            self.fail(item, "does not name its batch as its statement signs it")
            return
        if not receipt_shaped(said, s["count"]):
            self.fail(item, "not a deletion receipt: not shaped as retention.md says")
            return
        positions = expand(said["positions"])
        if said["count"] != len(positions) or sum(p["count"] for p in said["points"]) != len(
            positions
        ):
            self.fail(item, "its count is not its positions'")
        left = s["count"] - self.removed.get(said["batch"], 0) - len(positions)
        self.removed[said["batch"]] = s["count"] - left
        if said["remaining"] != left:
            self.fail(item, f"says {said['remaining']} records remain, its receipts leave {left}")
        hashes = base64.b64decode(said["leaf_hashes"], validate=True)
        if len(hashes) != (32 * len(positions) if said["remaining"] else 0):
            self.fail(item, "its leaf hashes are not one per position (none when none remain)")
        covered: list[int] = []
        plan = self.plans.get(s["plan_digest"])
        points = batch["points"]
        for calc in said["expiries"]:
            covered.extend(expand(calc["positions"]))
            if points is None:
                self.fail(item, "its batch has no signed point map to check its points by")
            elif any(points[p] not in calc["points"] for p in expand(calc["positions"])):
                self.fail(item, "deletes a position its batch's point map gives another point")
            for point in calc["points"]:
                self.lawful(item, entry, plan, calc, point)
        if sorted(covered) != positions:
            self.fail(item, "its expiry calculations do not cover exactly its positions")
        signing = [c for c in self.checkpoints if c.size > entry.seq]
        if signing and entry.time > min(signing, key=lambda c: c.size).time:
            self.fail(item, "dated after the checkpoint that signs it")

    def lawful(
        self,
        item: str,
        entry: Entry,
        plan: Plan | None,
        calc: dict[str, Any],
        point: str,
    ) -> None:
        statement = self.batches[entry.payload["batch"]]["statement"]
        where = f"{statement['device']}/{point}"
        if plan is None or point not in plan.retention:
            self.fail(item, f"deletes {where}, which its batch's plan does not have")
            return
        retention, policies = plan.retention[point]
        start = instant(statement["window_start"])
        want = expiry(retention, policies, start, instant(statement["window_end"]))
        if want is None:
            self.fail(item, f"deletes {where}, which its plan keeps for ever")
            return
        # DOC GAP: retention.md lists an expiry's members, not whether others may be there;
        # taken: only those listed are the calculation (as audit verify reads it)
        stated = {k: calc.get(k) for k in want}
        if stated | {"expires": instant(calc["expires"])} != want:
            self.fail(item, f"the expiry calculation for {where} is not its")
        if want["expires"] > entry.time:
            self.fail(item, f"deletes {where} before its keep_at_least (or its expiry)")
        for hold_id, hold in self.holds.items():
            if in_force(hold, entry.seq) and covers(hold, statement, point):
                self.fail(item, f"deletes {where} during hold {hold_id}")
        if want["on_expiry"] == "archive" and not self.archived(entry, statement):
            self.fail(item, f"deletes {where}, which its plan archives, without its archive")

    def archived(self, entry: Entry, statement: dict[str, Any]) -> bool:
        """DOC GAP: retention.md says a receipt names its archive's file, SHA-256 and entry;
        taken: that entry is an earlier ``retention.archived`` of the same file naming the
        receipt's batch (which positions it holds is the bundle's to show)."""
        archive = entry.payload["archive"]
        if not isinstance(archive, dict):
            return False
        named = numbered(self.entries, archive.get("entry"))
        written = numbered(self.entries, archive.get("written"))
        return (
            named is not None
            and named.kind == "retention.archived"
            and named.seq < entry.seq
            and named.payload["file"] == archive.get("file")
            and objects(named.payload["batches"])
            and any(b.get("batch") == entry.payload["batch"] for b in named.payload["batches"])
            # retention.md#archives: the file's SHA-256, signed once it existed
            and written is not None
            and written.kind == "retention.archive.written"
            and named.seq < written.seq < entry.seq
            and written.payload
            == {"archived": named.seq, "file": archive.get("file"), "sha256": archive.get("sha256")}
        )


# --- retention's rules (retention.md#when-a-record-expires, #legal-holds) -----------------

RETENTION_FACETS = (
    "retention.keep_at_least_ms",
    "retention.keep_at_most_ms",
    "retention.on_expiry",
)


def retention_of(point: dict[str, Any]) -> list[str]:
    """``policy @ path:line:col`` of each policy behind the point's retention facets.

    DOC GAP: retention.md says a receipt's ``policies`` are those "of the retention facets"
    without an order; taken: the plan's provenance of the three facets, once each, sorted."""
    provenance = point.get("provenance", {})
    found = {f"{s['policy']} @ {s['at']}" for f in RETENTION_FACETS for s in provenance.get(f, [])}
    return sorted(found)


def expiry(
    retention: dict[str, Any], policies: list[str], start: datetime, end: datetime
) -> dict[str, Any] | None:
    """The expiry calculation of one point's records of the window ``[start, end)``, as a
    receipt states it (with ``expires`` an instant); ``None``: kept for ever."""
    least, most = retention.get("keep_at_least_ms"), retention.get("keep_at_most_ms")
    if least is None and most is None:
        return None
    if most is not None:
        rule, expires = "keep_at_most", start + timedelta(milliseconds=most)
    else:
        rule, expires = "keep_at_least", end + timedelta(milliseconds=least)
    if least is not None and end + timedelta(milliseconds=least) > expires:
        rule, expires = "keep_at_least", end + timedelta(milliseconds=least)
    return {
        "rule": rule,
        "keep_at_least_ms": least,
        "keep_at_most_ms": most,
        "on_expiry": retention.get("on_expiry") or "delete",
        "expires": expires,
        "policies": policies,
    }


def receipt_shaped(said: dict[str, Any], count: int) -> bool:
    """Runs below the batch's ``count`` (looked at before they are expanded), expiries each
    naming points, each point in one, whose counts add up to the expiry's positions
    (retention.md#the-deletion-receipt)."""
    runs = [said["positions"], *(e["positions"] for e in said["expiries"])]
    if any(not isinstance(run, list) or run[-1] >= count for r in runs for run in r):
        return False
    points = said["points"]
    if not all(isinstance(p["point"], str) for p in points):
        return False
    counts = {p["point"]: p["count"] for p in points if p["device"] == said["device"]}
    named = [p for e in said["expiries"] for p in e["points"]]
    return (
        len(counts) == len(said["points"]) == len(named)
        and sorted(counts) == sorted(named)
        and all(isinstance(c, int) and c > 0 for c in counts.values())
        and all(
            e["points"] and sum(counts[p] for p in e["points"]) == len(expand(e["positions"]))
            for e in said["expiries"]
        )
    )


def expand(runs: Any) -> list[int]:
    """Positions as runs ``[[first, last], ...]``, ascending, inclusive, into positions."""
    if not isinstance(runs, list):
        raise ValueError("positions are not a list of runs")
    found: list[int] = []
    for run in runs:
        first, last = run
        if not (isinstance(first, int) and isinstance(last, int)) or first > last:
            raise ValueError(f"run {run!r}")
        if found and first <= found[-1]:
            raise ValueError("runs not ascending")
        found.extend(range(first, last + 1))
    return found


def numbered(entries: dict[int, Entry], seq: Any) -> Entry | None:
    """The entry a payload names by its number (an integer, never a boolean)."""
    return entries.get(seq) if type(seq) is int else None


def objects(listed: Any) -> bool:
    """Whether a payload's member is a list of objects."""
    return isinstance(listed, list) and all(isinstance(item, dict) for item in listed)


def actor_id(actor: Any) -> str:
    return str(actor.get("id")) if isinstance(actor, dict) else str(actor)


def held_pairs(hold: dict[str, Any]) -> set[tuple[Any, Any]]:
    """retention.md#legal-holds: the (device, point) pairs a hold's ``held`` lists, which its
    decision allowed: it covers those alone."""
    held = hold.get("held")
    listed = held if isinstance(held, list) else []
    return {(h.get("device"), h.get("point")) for h in listed if isinstance(h, dict)}


def same_instant(said: Any, scope: Any) -> bool:
    """Both open, or the same instant."""
    if said is None or scope is None:
        return said is scope is None
    try:
        return instant(str(said)) == instant(str(scope))
    except ValueError:
        return False


def in_force(hold: dict[str, Any], seq: int) -> bool:
    """Placed before entry ``seq``, and not released before it."""
    released = hold["released_seq"]
    return hold["placed_seq"] < seq and (released is None or released > seq)


def covers(hold: dict[str, Any], statement: dict[str, Any], point: str) -> bool:
    """The hold covers the point's records of the batch: its device, a glob of its points
    (DOC GAP: "glob" taken as fnmatch's, case-sensitive), and its window meets ``[from,
    to)``."""
    start, end = instant(statement["window_start"]), instant(statement["window_end"])
    return (
        (statement["device"], point) in held_pairs(hold)
        and (not hold["devices"] or statement["device"] in hold["devices"])
        and (not hold["points"] or any(fnmatchcase(point, g) for g in hold["points"]))
        and (hold["from"] is None or end > instant(hold["from"]))
        and (hold["to"] is None or start < instant(hold["to"]))
    )


def run_of_slots(gap: dict[str, Any]) -> None:
    """A gap of a run of slots has both ``slots`` (an integer above 1) and a
    ``last_scheduled_at`` later than its ``scheduled_at`` (records.md#gap-records)."""
    if ("slots" in gap) != ("last_scheduled_at" in gap):
        raise ValueError("slots without last_scheduled_at, or the other way round")
    if "slots" in gap:
        count = gap["slots"]
        if isinstance(count, bool) or not isinstance(count, int) or count < 2:
            raise ValueError(f"slots {count!r}")
        if instant(gap["last_scheduled_at"]) <= instant(gap["scheduled_at"]):
            raise ValueError("last_scheduled_at not after scheduled_at")


def verify(
    target: str,
    public_keys: list[Any],
    audit_key: str = "audit-log",
    plan_key: str | None = None,
    witness: Path | None = None,
) -> Verdict:
    """Verify the store at ``target`` trusting only ``public_keys``, ``audit_key``,
    ``plan_key`` and the ``witness`` file (audit.md#what-audit-verify-checks)."""
    verdict = Verdict()
    verifier = Verifier(public_keys, audit_key, plan_key, verdict)
    lines = verifier.witness_lines(witness) if witness else []
    with connect(target) as db:
        rows = verifier.checkpoint_rows(db)
        sizes = {size for _, size, _ in rows} | verifier.witness_sizes(lines)
        for _, _, text in rows:
            with contextlib.suppress(Exception):
                sizes.add(int(text.split("\n")[1]))
        verifier.audit_log(db, sizes)
        verifier.check_checkpoints(rows)
        verifier.tail(rows)
        verifier.check_plans(db)
        verifier.check_batches(db)
        verifier.check_records(db)
        verifier.check_holds(db)
        verifier.check_receipts()
    if witness:
        verifier.check_witness(witness, lines, {text for _, _, text in rows})
    verifier.rotation_note()
    return verdict
