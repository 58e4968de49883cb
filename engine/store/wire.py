"""What travels between a site collector and the centre: topics, messages and answers.

Every message is one header line, the RFC 8785 canonical JSON of an object
with ``format`` (``converge.wire/v1``) and ``kind``, then a newline and a body
that depends on the kind (docs/scale-out.md has them byte for byte):

============  ====================================  =====================================
kind          topic                                 body
============  ====================================  =====================================
``batch``     ``converge/v1/<site>/<device>/batch`` the leaves, in batch order, one a line
``plan``      ``converge/v1/<site>/<device>/plan``  the plan's exact bytes
``keys``      ``converge/v1/<site>/keys``           none (the versions are in the header)
``checkpoint````converge/v1/<site>/checkpoint``     a tlog-witness ``add-checkpoint`` body
============  ====================================  =====================================

A leaf is canonical JSON, which escapes every control character, so it
holds no raw newline: the body needs no other framing, and a 6,000-reading
batch is parsed with one ``split``. The centre answers every message on the
reply topic the message names (``converge/v1/<site>/reply/<collector>``),
with the message's correlation data, in a :class:`Reply`.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from engine.audit import AuditEntry
from engine.canonical import canonical_json
from engine.errors import VerificationError
from engine.keys import KeyVersion
from engine.sign.batch import MalformedStatement, Signature, Statement
from engine.store.sealed import SealedBatch

FORMAT = "converge.wire/v1"
PREFIX = "converge/v1"
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
"""A site, collector or device name as a topic level: no ``/``, ``+``, ``#`` or ``$``."""
KINDS = ("batch", "plan", "keys", "checkpoint")


class MalformedMessage(VerificationError):
    """A message that is not what the wire format says it is (the reason says what)."""


# --- topics ------------------------------------------------------------------------------


def check_name(name: str, what: str) -> str:
    """``name`` when it can be one topic level; MalformedMessage otherwise."""
    if not NAME.fullmatch(name):
        raise MalformedMessage(
            f"{what} {name!r} cannot be a topic level: letters, digits, '.', '_' and '-' only"
        )
    return name


def batch_topic(site: str, device: str) -> str:
    return f"{PREFIX}/{site}/{device}/batch"


def plan_topic(site: str, device: str) -> str:
    return f"{PREFIX}/{site}/{device}/plan"


def keys_topic(site: str) -> str:
    return f"{PREFIX}/{site}/keys"


def checkpoint_topic(site: str) -> str:
    return f"{PREFIX}/{site}/checkpoint"


def reply_topic(site: str, collector: str) -> str:
    return f"{PREFIX}/{site}/reply/{collector}"


INGEST_FILTERS = (
    f"{PREFIX}/+/+/batch",
    f"{PREFIX}/+/+/plan",
    f"{PREFIX}/+/keys",
    f"{PREFIX}/+/checkpoint",
)
"""What the centre's ingesters subscribe to (shared among them)."""


@dataclass(frozen=True)
class Topic:
    """What a topic names: the site, the device (batches and plans), and the kind."""

    site: str
    device: str | None
    kind: str


def parse_topic(topic: str) -> Topic:
    """The site, device and kind a message's topic names; MalformedMessage otherwise."""
    levels = topic.split("/")
    if levels[:2] != PREFIX.split("/") or len(levels) not in (4, 5):
        raise MalformedMessage(f"topic {topic!r} is not converge/v1/<site>/…")
    site, kind = levels[2], levels[-1]
    device = levels[3] if len(levels) == 5 else None
    if (kind in ("batch", "plan")) != (device is not None) or kind not in KINDS:
        raise MalformedMessage(f"topic {topic!r} names no kind of message")
    check_name(site, "site")
    if device is not None:
        check_name(device, "device")
    return Topic(site, device, kind)


# --- messages ----------------------------------------------------------------------------


def _encode(header: Mapping[str, Any], body: bytes = b"") -> bytes:
    return canonical_json({"format": FORMAT, **header}) + b"\n" + body


def _split(payload: bytes, kind: str) -> tuple[dict[str, Any], bytes]:
    """The header object (format and kind checked) and the body of a message."""
    head, newline, body = payload.partition(b"\n")
    if not newline:
        raise MalformedMessage("no header line")
    try:
        header = json.loads(head)
    except (ValueError, UnicodeDecodeError) as exc:
        raise MalformedMessage(f"the header is not JSON ({exc})") from None
    if not isinstance(header, dict) or header.get("format") != FORMAT:
        raise MalformedMessage(f"the header is not a {FORMAT} object")
    if header.get("kind") != kind:
        raise MalformedMessage(f"a {header.get('kind')!r} message on a {kind} topic")
    return header, body


def _field(header: Mapping[str, Any], name: str, kind: type | tuple[type, ...]) -> Any:
    value = header.get(name)
    if not isinstance(value, kind) or (isinstance(value, bool) and kind is int):
        raise MalformedMessage(f"the header's {name!r} is missing or of the wrong type")
    return value


@dataclass(frozen=True)
class BatchMessage:
    """A sealed batch from a site, with the entry of the site's log that records it."""

    site: str
    collector: str
    origin: str
    """The origin of the site's log that ``entry`` is in."""
    entry: bytes
    """That entry's canonical bytes (``batch.stored`` or ``batch.sealed``): its time is when the
    batch was sealed, the time its signatures are judged at."""
    sealed: SealedBatch

    def to_bytes(self) -> bytes:
        sealed = self.sealed
        header = {
            "kind": "batch",
            "site": self.site,
            "collector": self.collector,
            "origin": self.origin,
            "entry": self.entry.decode(),
            "statement": sealed.statement.decode(),
            "keys": list(sealed.keys),
            "waiver": json.loads(sealed.waiver),
            "signatures": {
                s.key: base64.b64encode(s.signature).decode() for s in sealed.signatures
            },
            "gaps": sorted(sealed.gaps),
        }
        return _encode(header, b"\n".join(sealed.leaves))

    @classmethod
    def parse(cls, payload: bytes) -> BatchMessage:
        header, body = _split(payload, "batch")
        statement = _field(header, "statement", str).encode()
        try:
            count = Statement.parse(statement).count
        except MalformedStatement as exc:
            raise MalformedMessage(f"the statement: {exc}") from None
        leaves = tuple(body.split(b"\n"))
        if len(leaves) != count:
            raise MalformedMessage(f"{len(leaves)} leaves, the statement counts {count}")
        gaps = _field(header, "gaps", list)
        if not all(isinstance(g, int) and 0 <= g < count for g in gaps):
            raise MalformedMessage("a gap position outside the batch")
        keys = _field(header, "keys", list)
        if not all(isinstance(k, str) for k in keys):
            raise MalformedMessage("the header's 'keys' are not names")
        sealed = SealedBatch(
            statement,
            tuple(keys),
            canonical_json(_field(header, "waiver", list)),
            _signatures(_field(header, "signatures", dict)),
            leaves,
            frozenset(gaps),
        )
        return cls(
            check_name(_field(header, "site", str), "site"),
            check_name(_field(header, "collector", str), "collector"),
            _field(header, "origin", str),
            _field(header, "entry", str).encode(),
            sealed,
        )

    def log_entry(self) -> AuditEntry:
        """The site log's entry for the batch; MalformedMessage unless it is a canonical entry
        recording exactly this batch."""
        try:
            entry = AuditEntry.parse(self.entry)
        except (ValueError, TypeError) as exc:
            raise MalformedMessage(f"the log entry: {exc}") from None
        if entry.kind not in ("batch.stored", "batch.sealed"):
            raise MalformedMessage(f"the log entry is a {entry.kind} entry")
        if entry.payload != self.sealed.audit_payload():
            raise MalformedMessage("the log entry records another batch")
        return entry


def _signatures(said: Mapping[str, Any]) -> tuple[Signature, ...]:
    found = []
    for key, text in sorted(said.items()):
        try:
            raw = base64.b64decode(str(text), validate=True)
        except (binascii.Error, ValueError):
            raise MalformedMessage(f"the signature of {key!r} is not base64") from None
        found.append(Signature(key, raw))
    return tuple(found)


@dataclass(frozen=True)
class PlanMessage:
    """A plan a site runs (its exact bytes) and its signed note, if it was signed."""

    site: str
    collector: str
    data: bytes
    signature: str | None

    def to_bytes(self) -> bytes:
        header = {
            "kind": "plan",
            "site": self.site,
            "collector": self.collector,
            "signature": self.signature,
        }
        return _encode(header, self.data)

    @classmethod
    def parse(cls, payload: bytes) -> PlanMessage:
        header, body = _split(payload, "plan")
        signature = header.get("signature")
        if signature is not None and not isinstance(signature, str):
            raise MalformedMessage("the header's 'signature' is not a note")
        return cls(
            check_name(_field(header, "site", str), "site"),
            check_name(_field(header, "collector", str), "collector"),
            body,
            signature,
        )


@dataclass(frozen=True)
class KeysMessage:
    """The public halves of a site's key versions, for the centre's log."""

    site: str
    collector: str
    versions: tuple[KeyVersion, ...]

    def to_bytes(self) -> bytes:
        header = {
            "kind": "keys",
            "site": self.site,
            "collector": self.collector,
            "versions": [v.as_dict() for v in self.versions],
        }
        return _encode(header)

    @classmethod
    def parse(cls, payload: bytes) -> KeysMessage:
        header, _ = _split(payload, "keys")
        try:
            versions = tuple(KeyVersion.from_dict(v) for v in _field(header, "versions", list))
        except (KeyError, TypeError, ValueError) as exc:
            raise MalformedMessage(f"a key version: {exc}") from None
        return cls(
            check_name(_field(header, "site", str), "site"),
            check_name(_field(header, "collector", str), "collector"),
            versions,
        )


@dataclass(frozen=True)
class CheckpointMessage:
    """A checkpoint of a site's log for the centre to cosign: the body of a tlog-witness
    ``add-checkpoint`` request (the old size, a consistency proof from it, the checkpoint)."""

    site: str
    collector: str
    old_size: int
    proof: tuple[bytes, ...]
    note: str

    def to_bytes(self) -> bytes:
        lines = [f"old {self.old_size}", *(base64.b64encode(p).decode() for p in self.proof)]
        body = "".join(f"{line}\n" for line in lines) + "\n" + self.note
        return _encode({"kind": "checkpoint", "site": self.site, "collector": self.collector},
                       body.encode())  # fmt: skip

    @classmethod
    def parse(cls, payload: bytes) -> CheckpointMessage:
        header, body = _split(payload, "checkpoint")
        try:
            text = body.decode()
        except UnicodeDecodeError:
            raise MalformedMessage("the body is not UTF-8") from None
        head, blank, note = text.partition("\n\n")
        lines = head.split("\n")
        if not blank or not re.fullmatch(r"old (0|[1-9][0-9]*)", lines[0]) or len(lines) > 64:
            raise MalformedMessage("the body is not an add-checkpoint request")
        proof = []
        for line in lines[1:]:
            try:
                node = base64.b64decode(line, validate=True)
            except (binascii.Error, ValueError):
                raise MalformedMessage(f"proof line {line!r} is not base64") from None
            proof.append(node)
        return cls(
            check_name(_field(header, "site", str), "site"),
            check_name(_field(header, "collector", str), "collector"),
            int(lines[0].removeprefix("old ")),
            tuple(proof),
            note,
        )


# --- answers -----------------------------------------------------------------------------

STATUSES = (
    "stored",  # committed
    "duplicate",  # committed before: stored once
    "quarantined",  # refused, kept in the quarantine table with the reason
    "retry",  # not now (the batch before it is not stored yet): send it again later
    "deployed",  # a plan committed (or known)
    "recorded",  # key versions committed (or known)
    "cosigned",  # a checkpoint cosigned: ``cosignature`` holds the line
    "conflict",  # the old size is not the one the centre cosigned last: ``size`` says it
)


@dataclass(frozen=True)
class Reply:
    """The centre's answer to one message, sent after its transaction committed."""

    status: str
    reason: str = ""
    size: int | None = None
    cosignature: str | None = None

    @property
    def final(self) -> bool:
        """Whether the message is done with: committed, or quarantined (never to be sent
        again)."""
        return self.status in ("stored", "duplicate", "quarantined", "deployed", "recorded")

    def to_bytes(self) -> bytes:
        said: dict[str, Any] = {"kind": "reply", "status": self.status, "reason": self.reason}
        if self.size is not None:
            said["size"] = self.size
        if self.cosignature is not None:
            said["cosignature"] = self.cosignature
        return canonical_json({"format": FORMAT, **said})

    @classmethod
    def parse(cls, payload: bytes) -> Reply:
        try:
            said = json.loads(payload)
        except (ValueError, UnicodeDecodeError):
            raise MalformedMessage("a reply that is not JSON") from None
        if not isinstance(said, dict) or said.get("status") not in STATUSES:
            raise MalformedMessage("a reply with no known status")
        size, cosignature = said.get("size"), said.get("cosignature")
        return cls(
            said["status"],
            str(said.get("reason", "")),
            size if isinstance(size, int) else None,
            cosignature if isinstance(cosignature, str) else None,
        )


def correlation(kind: str, *parts: str) -> bytes:
    """The correlation data of a message: what its answer must name to be matched to it."""
    return " ".join((kind, *parts)).encode()


def correlated(data: bytes | None) -> Sequence[str]:
    """The parts of correlation data (empty for none)."""
    return data.decode("utf-8", "replace").split(" ") if data else []


__all__ = [
    "FORMAT",
    "INGEST_FILTERS",
    "BatchMessage",
    "CheckpointMessage",
    "KeysMessage",
    "MalformedMessage",
    "PlanMessage",
    "Reply",
    "Topic",
    "batch_topic",
    "check_name",
    "checkpoint_topic",
    "correlated",
    "correlation",
    "keys_topic",
    "parse_topic",
    "plan_topic",
    "reply_topic",
]
