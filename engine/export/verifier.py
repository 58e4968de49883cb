#!/usr/bin/env python3
"""verify.py: check a Converge audit bundle offline, trusting nothing in it but signatures.

    python verify.py BUNDLE.zip [--trust KEYS.json] [--format text|json]

Needs Python 3.11 and the ``cryptography`` package, nothing else: no database,
no Converge. It checks every member's SHA-256 against the signed manifest,
every record's leaf against its batch (the whole batch's root, or the record's
inclusion proof), every batch the export asks whole complete but for the
positions a lawful deletion receipt removed, every batch statement's signatures by the keys its plan
requires with versions valid when its audit entry says it was stored, every
plan's digest and signature, every policy file carried against the digest its
plan names, every audit entry's inclusion under the latest
checkpoint, every checkpoint's signature by the log's key at the time it
states and its consistency with the latest, and that the manifest is signed
by the log's key. The layout and every byte format are in docs/bundle.md.

``KEYS.json`` is the auditor's trust file (``converge keys trust`` writes one):
the public key versions trusted, each for its validity window, which key signs
which audit log (its origin), and which keys sign plans. The bundle never
decides who is trusted: its manifest names a log, and only the key the trust
file names for that log may sign the manifest and the checkpoints. Without
``--trust`` the bundle's own ``keys.json`` is used, and the verdict says so:
that proves the bundle consistent, not where it came from.

Exit code 0 when everything verifies, 1 otherwise; every failure is one line
naming the member, record, batch, entry or checkpoint. A hostile zip (a bomb,
paths outside, links, duplicate names, a truncated file) is refused with a
named verdict; nothing is ever written to disk.

This file is the same code that ``converge verify`` runs, shipped in every
bundle, so the two give the same verdicts and messages. It is self-contained
on purpose: it repeats the RFC 9162 proof checks and the signed-note parsing
that Converge's engine has, because an auditor must be able to read it alone.
"""

from __future__ import annotations

import argparse
import base64
import csv
import gc
import hashlib
import io
import json
import multiprocessing
import os
import re
import stat
import sys
import zipfile
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from fnmatch import fnmatchcase
from itertools import compress, groupby, pairwise
from operator import itemgetter, methodcaller
from typing import Any, ParamSpec, TypeVar

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

FORMAT = "converge.bundle/v1"
MANIFEST, SIGNATURE, KEYS = "manifest.json", "manifest.sig", "keys.json"
RECORDS, RECORDS_CSV = "records.jsonl", "records.csv"
CHECKPOINTS, CONSISTENCY, ENTRIES = (
    "log/checkpoints.json",
    "log/consistency.json",
    "log/entries.jsonl",
)
RETENTION = "retention.json"
VERIFIER = "verify.py"
SOURCES = "sources/"
"""The folder of the plans' source files: ``sources/<path as the plan names it>``."""
TRUST_FORMAT = "converge.trust/v1"
CSV_COLUMNS = (
    "device",
    "point",
    "type",
    "time",
    "value",
    "quality",
    "reason",
    "detail",
    "collected_at",
    "scheduled_at",
    "source_at",
    "raw_code",
    "batch",
    "position",
)

MAX_MEMBERS = 100_000
MAX_MEMBER_BYTES = 4 << 30
MAX_TOTAL_BYTES = 16 << 30
MAX_RATIO = 200
"""Bounds of a bundle read: members, bytes of one member and of all, and how much a member,
or the whole zip, may expand (a zip bomb expands by thousands; one of overlapping members
expands little per member, a lot in all)."""
MAX_JSON_BYTES = 256 << 20
"""The largest member read whole as JSON (the manifest, keys, checkpoints, a batch)."""
MAX_LINE_BYTES = 16 << 20
"""The longest line of a streamed member (records, entries, the CSV)."""
CHUNK = 1 << 20
"""How much of a member is inflated at a time; a block of record lines is about this long."""

MALFORMED = (
    ValueError,
    KeyError,
    TypeError,
    AttributeError,
    IndexError,
    OverflowError,
    RecursionError,
)
"""What reading a hostile member's JSON as the documented shape may raise (RecursionError:
JSON nested deeper than the parser's recursion limit, which ``json.loads`` raises)."""
UNPARSED = (ValueError, RecursionError)
"""What ``json.loads`` raises for bytes that are not JSON it can read."""
P = ParamSpec("P")
T = TypeVar("T")

_BIDI = (0x061C, 0x200E, 0x200F, *range(0x202A, 0x202F), *range(0x2066, 0x206A))
_VISIBLE: dict[int, str] = {
    **{code: f"\\x{code:02x}" for code in (*range(0x20), *range(0x7F, 0xA0))},
    **{code: f"\\u{code:04x}" for code in (*_BIDI, 0x2028, 0x2029)},
}
"""Every character that would steer a terminal (the C0 and C1 controls, DEL, the
bidirectional controls, the line and paragraph separators), by the visible escape the text
verdict shows instead (``\\x1b``, ``\\u202e``): a bundle's text (member names, values) is
whoever made it's. The table of engine/commands/terminal.py, kept here so that this file
stays self-contained."""
_LINE = re.compile(rb'\{"batch":(0|[1-9][0-9]*),"position":(0|[1-9][0-9]*),"leaf":(\{.*\})\}')
_TIME = re.compile(r"time (0|[1-9][0-9]{0,11})")


@dataclass
class Verdict:
    """Every problem found (item, message), and what the reader should know besides."""

    problems: list[tuple[str, str]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.problems

    def fail(self, item: str, message: str) -> None:
        self.problems.append((item, message))

    def copy(self) -> Verdict:
        return Verdict(list(self.problems), list(self.notes), dict(self.counts))

    def restore(self, then: Verdict) -> None:
        """Back to what ``then`` (a :meth:`copy`) held."""
        self.problems[:], self.notes[:] = then.problems, then.notes
        self.counts.clear()
        self.counts.update(then.counts)

    def as_json(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "counts": self.counts,
            "notes": self.notes,
            "problems": [{"item": i, "message": m} for i, m in self.problems],
        }

    def lines(self) -> list[str]:
        """The text verdict, one line each, every steering character a visible escape."""
        out = [f"FAIL {item}: {message}" for item, message in self.problems]
        out += [f"note: {note}" for note in self.notes]
        counted = ", ".join(_counted(n, what) for what, n in self.counts.items())
        out.append(
            ("verified" if self.ok else _counted(len(self.problems), "problems")) + f": {counted}"
        )
        return [line.translate(_VISIBLE) for line in out]


def _counted(n: int, what: str) -> str:
    """``1 batch``, ``2 batches``: a count, named in the plural, said in the singular for one
    (as ``converge audit verify`` says its counts, engine/commands/audit.py ``counted_as``;
    kept here so that this file stays self-contained)."""
    one = {"audit entries": "audit entry", "batches": "batch"}.get(what, what.removesuffix("s"))
    return f"1 {one}" if n == 1 else f"{n:,} {what}"


class Refused(Exception):
    """A bundle that is not read at all: its zip is hostile or broken."""

    def __init__(self, item: str, message: str) -> None:
        super().__init__(f"{item}: {message}")
        self.item, self.message = item, message


# --- reading the zip safely -------------------------------------------------------------


class Bundle:
    """A bundle's members, read from the zip on demand with every bound checked; in memory."""

    def __init__(self, path: str) -> None:
        try:
            size = os.stat(path).st_size
            self.zip = zipfile.ZipFile(path)
        except (OSError, zipfile.BadZipFile) as exc:
            raise Refused(path, f"not a readable zip file ({exc})") from None
        self.members = self._check_members(self.zip.infolist(), size)
        self.hashing: dict[str, Hashed] = {}
        """Members whose digest is taken as they are next read."""

    @staticmethod
    def _check_members(infos: list[zipfile.ZipInfo], size: int) -> dict[str, zipfile.ZipInfo]:
        if len(infos) > MAX_MEMBERS:
            raise Refused("zip", f"{len(infos)} members, more than {MAX_MEMBERS}")
        members: dict[str, zipfile.ZipInfo] = {}
        total = 0
        for info in infos:
            name = info.filename
            _check_name(name, info)
            if name in members:
                raise Refused(name, "the zip holds two members of this name")
            total += info.file_size
            if info.file_size > MAX_MEMBER_BYTES or total > MAX_TOTAL_BYTES:
                raise Refused(name, "larger than a bundle member may be")
            if info.file_size > MAX_RATIO * max(info.compress_size, 1) + 4096:
                raise Refused(name, f"expands {info.file_size}/{info.compress_size} times: a bomb")
            members[name] = info
        if total > MAX_RATIO * size + (1 << 20):
            raise Refused("zip", f"its members expand to {total} bytes from {size}: a bomb")
        return members

    def has(self, name: str) -> bool:
        return name in self.members

    def read(self, name: str) -> bytes:
        """A member's bytes, never more than the zip says it holds (nor :data:`MAX_JSON_BYTES`)."""
        info = self.members[name]
        if info.file_size > MAX_JSON_BYTES:
            raise Refused(name, f"{info.file_size} bytes, more than a member read whole may be")
        try:
            with self.zip.open(info) as member:
                data = member.read(info.file_size + 1)
        except (OSError, zipfile.BadZipFile, EOFError) as exc:
            raise Refused(name, f"cannot be read ({exc})") from None
        if len(data) != info.file_size:
            raise Refused(name, "holds more than the zip says")
        return data

    def chunks(self, name: str) -> Iterator[bytes]:
        """A member's bytes, streamed in chunks: the first read of a member :meth:`hash_on_read`
        hashes them as it goes."""
        hashed = self.hashing.pop(name, None)
        return self._chunks(name) if hashed is None else hashed.chunks()

    def _chunks(self, name: str) -> Iterator[bytes]:
        info = self.members[name]
        try:
            with self.zip.open(info) as member:
                while chunk := member.read(CHUNK):
                    yield chunk
        except (OSError, zipfile.BadZipFile, EOFError) as exc:
            raise Refused(name, f"cannot be read ({exc})") from None

    def lines(self, name: str) -> Iterator[bytes]:
        """A member's lines (without their newline), streamed, each bounded."""
        rest = b""
        for chunk in self.chunks(name):
            lines = (rest + chunk).split(b"\n")
            rest = lines.pop()
            if len(rest) > MAX_LINE_BYTES:
                raise Refused(name, f"a line longer than {MAX_LINE_BYTES} bytes")
            yield from lines
        if rest:
            yield rest

    def blocks(self, name: str) -> Iterator[bytes]:
        """A member's lines in blocks, each of whole lines (each ending in a newline) but the
        last, which holds the line without one, if any; streamed as :meth:`lines` streams."""
        rest = b""
        for chunk in self.chunks(name):
            block = rest + chunk
            cut = block.rfind(b"\n") + 1
            rest = block[cut:]
            if len(rest) > MAX_LINE_BYTES:
                raise Refused(name, f"a line longer than {MAX_LINE_BYTES} bytes")
            if cut:
                yield block[:cut]
        if rest:
            yield rest

    def digest(self, name: str) -> str:
        sha = hashlib.sha256()
        for chunk in self._chunks(name):
            sha.update(chunk)
        return "sha256:" + sha.hexdigest()

    def hash_on_read(self, name: str) -> Hashed:
        """``name``'s SHA-256, taken as its next read (:meth:`chunks`) streams it."""
        self.hashing[name] = found = Hashed(self._chunks(name))
        return found


class Hashed:
    """A member hashed while it is read for another check, so that it is inflated once: its
    digest is known when that read ends (:meth:`digest` reads what it left)."""

    def __init__(self, chunks: Iterator[bytes]) -> None:
        self._chunks, self.sha = chunks, hashlib.sha256()
        self.refused: Refused | None = None

    def chunks(self) -> Iterator[bytes]:
        try:
            for chunk in self._chunks:
                self.sha.update(chunk)
                yield chunk
        except Refused as exc:
            self.refused = exc
            raise

    def digest(self) -> str:
        """``sha256:<hex>`` of the whole member; Refused if it cannot be read."""
        if self.refused is None:
            try:
                for chunk in self._chunks:
                    self.sha.update(chunk)
            except Refused as exc:
                self.refused = exc
        if self.refused is not None:
            raise self.refused
        return "sha256:" + self.sha.hexdigest()


def source_problem(path: str) -> str | None:
    """Why a plan's source path cannot be read nor carried as ``sources/<path>``, if it cannot:
    it must be a plain relative path that stays in its folder."""
    parts = path.split("/")
    if path.startswith("/") or ":" in parts[0]:
        return "an absolute path"
    if ".." in parts:
        return "a path with .. in it"
    if "\\" in path or "" in parts or "." in parts:
        return "not a plain relative path"
    return None


def _check_name(name: str, info: zipfile.ZipInfo) -> None:
    parts = name.split("/")
    if name.startswith("/") or "\\" in name or ".." in parts or ":" in parts[0] or "" in parts:
        raise Refused(name, "a member path outside the bundle (absolute, .. or empty parts)")
    if stat.S_ISLNK(info.external_attr >> 16):
        raise Refused(name, "a symbolic link")
    if info.is_dir():
        raise Refused(name, "a folder entry (a bundle holds files only)")


# --- RFC 9162 Merkle trees ----------------------------------------------------------------


_LEAF = hashlib.sha256(b"\x00")
_NODE = hashlib.sha256(b"\x01")
"""SHA-256 having hashed a leaf's, a node's prefix: a copy of one, given the rest, hashes a
leaf or node a third faster than a new hash of the prefix joined to it."""


def leaf_hash(data: bytes) -> bytes:
    hashed = _LEAF.copy()
    hashed.update(data)
    return hashed.digest()


def _node(left: bytes, right: bytes) -> bytes:
    hashed = _NODE.copy()
    hashed.update(left + right)
    return hashed.digest()


def tree_root(hashes: Sequence[bytes]) -> bytes:
    """The RFC 9162 root of leaf hashes (an odd last node rises unchanged)."""
    level = list(hashes)
    if not level:
        return hashlib.sha256(b"").digest()
    while len(level) > 1:
        nxt: list[bytes] = []
        keep, start = nxt.append, _NODE.copy
        for left, right in zip(level[0:-1:2], level[1::2], strict=True):
            hashed = start()
            hashed.update(left + right)
            keep(hashed.digest())
        if len(level) % 2:
            nxt.append(level[-1])
        level = nxt
    return level[0]


def inclusion_root(leaf: bytes, index: int, size: int, proof: Sequence[bytes]) -> bytes | None:
    """The root an RFC 9162 §2.1.3.2 inclusion proof implies, or None when it cannot."""
    if not 0 <= index < size:
        return None
    fn, sn, r = index, size - 1, leaf
    for p in proof:
        if sn == 0:
            return None
        if fn & 1 or fn == sn:
            r = _node(p, r)
            while not fn & 1 and fn:
                fn, sn = fn >> 1, sn >> 1
        else:
            r = _node(r, p)
        fn, sn = fn >> 1, sn >> 1
    return r if sn == 0 else None


def consistent(size1: int, size2: int, root1: bytes, root2: bytes, proof: Sequence[bytes]) -> bool:
    """RFC 9162 §2.1.4.2: whether (size2, root2) extends (size1, root1) by ``proof``."""
    if size1 > size2:
        return False
    if size1 == size2:
        return not proof and root1 == root2
    if size1 == 0:
        return not proof and root1 == hashlib.sha256(b"").digest()
    if not proof:
        return False
    path = [root1, *proof] if size1 & (size1 - 1) == 0 else list(proof)
    fn, sn = size1 - 1, size2 - 1
    while fn & 1:
        fn, sn = fn >> 1, sn >> 1
    fr = sr = path[0]
    for c in path[1:]:
        if sn == 0:
            return False
        if fn & 1 or fn == sn:
            fr, sr = _node(c, fr), _node(c, sr)
            while not fn & 1 and fn:
                fn, sn = fn >> 1, sn >> 1
        else:
            sr = _node(sr, c)
        fn, sn = fn >> 1, sn >> 1
    return fr == root1 and sr == root2 and sn == 0


# --- keys and signed notes ------------------------------------------------------------------


@dataclass(frozen=True)
class KeyVersion:
    """One trusted public key version: valid from ``not_before`` until ``not_after``."""

    name: str
    version: int
    key: Ed25519PublicKey
    raw: bytes
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

    def note_key_id(self, name: str) -> bytes:
        """The signed-note key ID of this key under ``name`` (C2SP signed-note)."""
        return hashlib.sha256(name.encode() + b"\n\x01" + self.raw).digest()[:4]


@dataclass(frozen=True)
class Trust:
    """What the auditor trusts: key versions by name, the key of each audit log (by origin),
    and the keys that sign plans (none named: a plan's signature, if any, may be any key's)."""

    keys: dict[str, list[KeyVersion]]
    logs: dict[str, str]
    plan_keys: frozenset[str]


def read_trust(data: bytes, source: str) -> Trust:
    """A trust file (docs/bundle.md): ``{"format": "converge.trust/v1", "logs": [{"origin",
    "key"}], "plan_keys": [names], "keys": [{"name", "version", "public_key" (base64),
    "not_before", "not_after"}]}``, as ``converge keys trust`` writes it."""
    said = _json(data, source)
    try:
        if said.get("format") != TRUST_FORMAT:
            raise ValueError(f"its format is not {TRUST_FORMAT}")
        logs = {str(log["origin"]): str(log["key"]) for log in said["logs"]}
        keys: dict[str, list[KeyVersion]] = {}
        for item in said["keys"]:
            version = _key_version(item)
            keys.setdefault(version.name, []).append(version)
        return Trust(keys, logs, frozenset(str(name) for name in said.get("plan_keys", [])))
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise Refused(source, f"not a trust file ({exc})") from None


def _key_version(item: dict[str, Any]) -> KeyVersion:
    raw = base64.b64decode(item["public_key"], validate=True)
    until = item["not_after"]
    return KeyVersion(
        str(item["name"]),
        int(item["version"]),
        Ed25519PublicKey.from_public_bytes(raw),
        raw,
        _aware(item["not_before"]),
        None if until is None else _aware(until),
    )


def _aware(text: str) -> datetime:
    moment = datetime.fromisoformat(text)
    if moment.tzinfo is None:
        raise ValueError(f"{text!r} has no time zone")
    return moment


def split_note(note: str) -> tuple[str, list[tuple[str, bytes, bytes]]] | None:
    """(text, [(key name, key ID, signature)]) of a C2SP signed note, or None if malformed."""
    text, sep, rest = note.partition("\n\n")
    if not sep or not text or not rest.endswith("\n"):
        return None
    signatures = []
    for line in rest[:-1].split("\n"):
        head, space, blob = line.removeprefix("\u2014 ").rpartition(" ")
        if not line.startswith("\u2014 ") or not space or not head:
            return None
        try:
            raw = base64.b64decode(blob, validate=True)
        except ValueError:
            return None
        if len(raw) != 68:
            return None
        signatures.append((head, raw[:4], raw[4:]))
    return text + "\n", signatures


def signed_by(
    note: str, name: str, versions: Sequence[KeyVersion]
) -> tuple[str, KeyVersion] | None:
    """The note's text and the version of ``versions`` whose signature under ``name`` verifies."""
    split = split_note(note)
    if split is None:
        return None
    text, signatures = split
    for signer, key_id, signature in signatures:
        for version in versions:
            if signer == name and key_id == version.note_key_id(name):
                try:
                    version.key.verify(signature, text.encode())
                except InvalidSignature:
                    continue
                return text, version
    return None


# --- the checks --------------------------------------------------------------------------


def unusable(path: str, trust: bytes | None) -> str | None:
    """What is wrong with the command line rather than the bundle (exit 2, not a verdict): a
    bundle that is not a file there, a trust file that is not one, or that trusts no key or
    no log (every signature of a sound bundle would fail as if forged)."""
    if not os.path.isfile(path):
        return f"{path}: there is no such file"
    try:
        trusted = None if trust is None else read_trust(trust, "--trust")
    except Refused as exc:
        return str(exc)
    if trusted is not None and not (any(trusted.keys.values()) and trusted.logs):
        return "--trust: it trusts no key or no audit log: give the auditor's trust file"
    return None


def verify(path: str, trust: bytes | None = None) -> Verdict:
    """Check the bundle at ``path`` against ``trust`` (a trust file's bytes), else its own keys.

    The cyclic garbage collector runs rarely meanwhile (its first threshold raised): a
    verification allocates objects per record, none in a reference cycle, and the
    collector's passes over them, in the worker processes too, and in ``converge verify``
    over the heap of its process, cost up to a fifth of the time. It still runs: whatever
    cycles a hostile bundle makes are collected. (The threshold is the process's: two
    verifications at once on two threads may leave it raised.)"""
    thresholds = gc.get_threshold()
    gc.set_threshold(RARE_COLLECTIONS, *thresholds[1:])
    try:
        return _verdict(path, trust)
    finally:
        gc.set_threshold(*thresholds)


RARE_COLLECTIONS = 200_000
"""Allocations between two passes of the collector while a bundle is verified (700 else);
``engine.heap.fewer_collections``'s, which this file, standing alone, cannot import."""


def _verdict(path: str, trust: bytes | None) -> Verdict:
    verdict = Verdict()
    deferred: list[Deferred] = []
    try:
        bundle = Bundle(path)
        _verify(bundle, trust, verdict, deferred)
    except Refused as exc:
        verdict.fail(exc.item, f"refused: {exc.message}")
    except MALFORMED as exc:
        verdict.fail("bundle", f"refused: malformed ({type(exc).__name__}: {exc})")
    _settle(deferred, verdict)
    return verdict


def _safely(check: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T | str:
    """``check``'s result, or what was malformed in its (hostile) input: a bundle's JSON may
    hold any type where a member is expected, and that must be a verdict, never a crash."""
    try:
        return check(*args, **kwargs)
    except MALFORMED as exc:
        return f"malformed ({type(exc).__name__}: {exc})"


def _verify(
    bundle: Bundle, trust: bytes | None, verdict: Verdict, deferred: list[Deferred]
) -> None:
    for name in (MANIFEST, SIGNATURE, KEYS):
        if not bundle.has(name):
            raise Refused(name, "missing: this is not a Converge bundle")
    manifest = _json(bundle.read(MANIFEST), MANIFEST)
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise Refused(MANIFEST, f"not a {FORMAT} manifest")
    trusted = (
        read_trust(trust, "trust") if trust is not None else read_trust(bundle.read(KEYS), KEYS)
    )
    if trust is None:
        verdict.notes.append(
            "the keys came from the bundle itself (keys.json): this proves the"
            " bundle consistent, not who made it; pass --trust KEYS.json"
        )
    log = _log_key(manifest, trusted, verdict)
    _check_manifest(bundle, manifest, log, verdict, deferred)
    checkpoints = _check_checkpoints(bundle, log, verdict)
    entries = _check_entries(bundle, checkpoints, verdict)
    plans = _check_plans(bundle, manifest, trusted, entries, verdict)
    _check_sources(bundle, manifest, plans, verdict)
    ctx = Context(plans, entries, trusted.keys, sorted(checkpoints.values(), key=lambda c: c.size))
    batches = _check_batches(bundle, manifest, ctx, verdict)
    _safely(_check_chains, manifest, batches, entries, verdict)
    _check_records(bundle, manifest, batches, verdict)
    decided = _check_export(manifest, entries, verdict)
    retained = Retained(entries, batches, plans, ctx.checkpoints)
    removed = _check_retention(bundle, retained, verdict)
    if decided is not None:
        _check_complete(
            replace(Asked.of(manifest), points=decided), plans, removed, batches, verdict
        )
    _note_verifier(bundle, verdict)


def _json(data: bytes, item: str) -> Any:
    try:
        return json.loads(data)
    except UNPARSED as exc:
        raise Refused(item, f"not JSON ({exc})") from None


@dataclass(frozen=True)
class LogKey:
    """The bundle's log (the manifest's origin) and the trusted versions of the key the trust
    file names for it: the manifest never chooses the key that signs it."""

    name: str
    origin: str
    versions: list[KeyVersion]


def _log_key(manifest: dict[str, Any], trust: Trust, verdict: Verdict) -> LogKey:
    origin = str(manifest.get("origin"))
    name = trust.logs.get(origin)
    if name is None:
        verdict.fail(MANIFEST, f"its audit log {origin} is not a log the trust file names")
        return LogKey("(none)", origin, [])
    if manifest.get("audit_key") != name:
        verdict.fail(MANIFEST, f"names the key {manifest.get('audit_key')} for its log, not {name}")
    if not trust.keys.get(name):
        verdict.fail(MANIFEST, f"its log's key {name} has no trusted version")
    return LogKey(name, origin, trust.keys.get(name, []))


def _check_manifest(
    bundle: Bundle,
    manifest: dict[str, Any],
    log: LogKey,
    verdict: Verdict,
    deferred: list[Deferred],
) -> None:
    """The manifest is signed by the log's key; every member's digest is the one it lists (the
    records' members' when their check has read them: :func:`_settle`)."""
    signed = signed_by(bundle.read(SIGNATURE).decode(errors="replace"), log.origin, log.versions)
    want = f"{FORMAT}\n{log.origin}\nsha256:{hashlib.sha256(bundle.read(MANIFEST)).hexdigest()}\n"
    if signed is None or not signed[0].startswith(want):
        verdict.fail(SIGNATURE, f"not a signature of this manifest by {log.name}")
    elif (at := _signed_time(signed[0])) is None or not signed[1].valid_in_second(at):
        verdict.fail(SIGNATURE, f"signed by {log.name} v{signed[1].version} outside its validity")
    listed = manifest.get("files")
    if not isinstance(listed, dict):
        raise Refused(MANIFEST, "lists no files")
    for name in sorted(set(bundle.members) - {MANIFEST, SIGNATURE} - set(listed)):
        verdict.fail(name, "a member the manifest does not list")
    for name, digest in sorted(listed.items()):
        if not bundle.has(name):
            verdict.fail(name, "listed in the manifest but missing")
        elif name in HASHED_ON_READ:
            deferred.append(Deferred(name, digest, bundle.hash_on_read(name), verdict.copy()))
        elif bundle.digest(name) != digest:
            verdict.fail(name, "changed: its SHA-256 is not the one the manifest lists")


HASHED_ON_READ = frozenset({RECORDS, RECORDS_CSV})
"""The large members: each is hashed as the records' check reads it, not inflated twice."""


@dataclass(frozen=True)
class Deferred:
    """A member's digest check, made when the member has been read: the digest the manifest
    lists, and the verdict as it stood where the check belongs."""

    name: str
    listed: Any
    hashed: Hashed
    then: Verdict


def _settle(deferred: list[Deferred], verdict: Verdict) -> None:
    """Finish the deferred digest checks as though each had been made in its place: a
    changed member's problem goes where it belongs; a member that cannot be read is refused
    there, and what the checks found after it is dropped (they would not have run)."""
    changed: list[Deferred] = []
    for check in deferred:
        try:
            if check.hashed.digest() != check.listed:
                changed.append(check)
        except Refused as exc:
            verdict.restore(check.then)
            _place(changed, verdict)
            verdict.fail(exc.item, f"refused: {exc.message}")
            return
    _place(changed, verdict)


def _place(changed: list[Deferred], verdict: Verdict) -> None:
    for inserted, check in enumerate(changed):
        problem = (check.name, "changed: its SHA-256 is not the one the manifest lists")
        verdict.problems.insert(len(check.then.problems) + inserted, problem)


def _signed_time(text: str) -> datetime | None:
    found = [line for line in text.split("\n") if _TIME.fullmatch(line)]
    return datetime.fromtimestamp(int(found[0][5:]), UTC) if len(found) == 1 else None


@dataclass(frozen=True)
class Checkpoint:
    size: int
    root: bytes
    at: datetime


def _check_checkpoints(bundle: Bundle, log: LogKey, verdict: Verdict) -> dict[str, Checkpoint]:
    """Every checkpoint by the log's key, valid when it says it signed; each consistent with
    the latest (and signed no later). The good ones, by their signed note's text."""
    notes = _json(bundle.read(CHECKPOINTS), CHECKPOINTS) if bundle.has(CHECKPOINTS) else []
    good: dict[str, Checkpoint] = {}
    for index, note in enumerate(notes):
        item = f"checkpoint {index} ({CHECKPOINTS})"
        found = _safely(_checkpoint, str(note), log)
        if isinstance(found, str):
            verdict.fail(item, found)
        else:
            good[str(note)] = found
            _not_ahead(item, found, verdict)
    verdict.counts["checkpoints"] = len(good)
    if not good:
        verdict.fail(
            CHECKPOINTS, "no checkpoint signed by the log's key: nothing signs the entries"
        )
        return good
    latest = max(good.values(), key=lambda c: c.size)
    proofs = _json(bundle.read(CONSISTENCY), CONSISTENCY) if bundle.has(CONSISTENCY) else []
    _check_consistency(list(good.values()), latest, proofs, verdict)
    return good


FUTURE_SLACK = timedelta(minutes=5)
"""How far past the verifier's clock a checkpoint may say it was signed (clocks differ by
seconds): more is a signer's clock set ahead, which dates what it signs ahead too."""


def _not_ahead(item: str, checkpoint: Checkpoint, verdict: Verdict) -> None:
    now = datetime.now(UTC)
    if checkpoint.at > now + FUTURE_SLACK:
        verdict.fail(
            item,
            f"signed at {checkpoint.at.isoformat()}, after this verification's clock: dated"
            " in the future (a signer's clock set ahead dates what it signs ahead too)",
        )


def _checkpoint(note: str, log: LogKey) -> Checkpoint | str:
    signed = signed_by(note, log.origin, log.versions)
    if signed is None:
        return f"not signed by the log's key {log.name} under origin {log.origin}"
    text, version = signed
    lines = text.split("\n")
    at = _signed_time(text)
    if len(lines) < 4 or lines[0] != log.origin or not lines[1].isdigit():
        return "not a checkpoint of this log"
    if at is None or not version.valid_in_second(at):
        return f"signed by {log.name} v{version.version} outside its validity (or no time line)"
    try:
        root = base64.b64decode(lines[2], validate=True)
    except ValueError:
        return "its root hash is not base64"
    return Checkpoint(int(lines[1]), root, at)


def _check_consistency(
    good: list[Checkpoint], latest: Checkpoint, proofs: Any, verdict: Verdict
) -> None:
    by_size = {int(p.get("size", -1)): p for p in proofs if isinstance(p, dict)}
    for c in good:
        item = f"checkpoint of size {c.size}"
        if c.at > latest.at:
            verdict.fail(item, f"signed after the latest checkpoint (size {latest.size})")
        if c.size == latest.size:
            if c.root != latest.root:
                verdict.fail(item, "a fork: another root for the latest size")
            continue
        proof = _hashes(by_size.get(c.size, {}).get("proof"))
        if proof is None or not consistent(c.size, latest.size, c.root, latest.root, proof):
            verdict.fail(item, f"not proven consistent with the latest (size {latest.size})")


def _hashes(listed: Any) -> list[bytes] | None:
    """A list of base64 SHA-256 hashes, or None when it is not one."""
    if not isinstance(listed, list):
        return None
    try:
        found = [base64.b64decode(h, validate=True) for h in listed]
    except (ValueError, TypeError):
        return None
    return found if all(len(h) == 32 for h in found) else None


def _check_entries(
    bundle: Bundle, checkpoints: dict[str, Checkpoint], verdict: Verdict
) -> dict[int, dict[str, Any]]:
    """Every audit entry, in the log under a checkpoint of the bundle (its tlog-proof); by seq."""
    entries: dict[int, dict[str, Any]] = {}
    for number, line in enumerate(bundle.lines(ENTRIES) if bundle.has(ENTRIES) else (), 1):
        item = f"{ENTRIES}:{number}"
        found = _safely(_entry, line, checkpoints)
        if isinstance(found, str):
            verdict.fail(item, found)
            continue
        entries[found["seq"]] = found
    verdict.counts["audit entries"] = len(entries)
    return entries


_ENTRY = re.compile(rb'\{"seq":(0|[1-9][0-9]*),"proof":("(?:[^"\\]|\\.)*"),"entry":(\{.*\})\}')


def _entry(line: bytes, checkpoints: dict[str, Checkpoint]) -> dict[str, Any] | str:
    """A line ``{"seq":N,"proof":"<tlog-proof>","entry":<entry bytes>}``, checked: the entry
    is entry N, in the log under the checkpoint its tlog-proof carries, one of the bundle's."""
    parsed = _entry_line(line)
    if isinstance(parsed, str):
        return parsed
    seq, raw, proof, entry = parsed
    path = _tlog_proof(proof, seq)
    if path is None:
        return f"its tlog-proof is malformed or not for index {seq}"
    hashes, note = path
    checkpoint = checkpoints.get(note)
    if checkpoint is None:
        return "its tlog-proof's checkpoint is not a verified checkpoint of the bundle"
    if inclusion_root(leaf_hash(raw), seq, checkpoint.size, hashes) != checkpoint.root:
        return f"not in the log under its checkpoint (size {checkpoint.size})"
    return entry


def _entry_line(line: bytes) -> tuple[int, bytes, str, dict[str, Any]] | str:
    match = _ENTRY.fullmatch(line)
    if match is None:
        return "not an entry line"
    seq, raw = int(match[1]), match[3]
    try:
        proof, entry = json.loads(match[2]), json.loads(raw)
    except UNPARSED:
        return "not JSON"
    if not isinstance(entry, dict) or entry.get("seq") != seq:
        return f"the entry is not entry {seq}"
    if not (isinstance(entry.get("payload"), dict) and isinstance(entry.get("time"), str)):
        return "not an audit entry (a payload and a time)"
    if not (isinstance(entry.get("kind"), str) and isinstance(entry.get("actor"), dict | str)):
        return "not an audit entry (a kind, and an actor that is an object or a string)"
    return seq, raw, str(proof), entry


def _tlog_proof(text: str, index: int) -> tuple[list[bytes], str] | None:
    """The inclusion hashes and checkpoint note of a C2SP tlog-proof@v1 for ``index``."""
    head, sep, note = text.partition("\n\n")
    lines = head.split("\n")
    if lines[1:2] and lines[1].startswith("extra "):
        del lines[1]  # unauthenticated, and Converge writes none
    if not sep or lines[:2] != ["c2sp.org/tlog-proof@v1", f"index {index}"]:
        return None
    try:
        hashes = [base64.b64decode(line, validate=True) for line in lines[2:]]
    except ValueError:
        return None
    return (hashes, note) if all(len(h) == 32 for h in hashes) else None


@dataclass(frozen=True)
class Plan:
    digest: str
    device: str
    required: tuple[str, ...]
    waivers: frozenset[str]
    """The signing waivers an unsigned batch of the plan names (each as :func:`_canon`)."""
    retention: dict[str, dict[str, Any]] = field(default_factory=dict)
    """Each point's ``retention`` (``keep_at_least_ms``, ``keep_at_most_ms``, ``on_expiry``)."""
    sources: tuple[tuple[str, str], ...] = ()
    """The files the plan names as its sources: (path, ``sha256:<hex>``)."""
    policies: dict[str, list[str]] = field(default_factory=dict)
    """Each point's policies behind its retention: ``policy @ path:line:col`` of its
    provenance's retention facets, once each, sorted (as a receipt states them)."""

    @property
    def points(self) -> frozenset[str]:
        """The names of the points the plan collects."""
        return frozenset(self.retention)


def _check_plans(
    bundle: Bundle,
    manifest: dict[str, Any],
    trust: Trust,
    entries: dict[int, dict[str, Any]],
    verdict: Verdict,
) -> dict[str, Plan]:
    """Every plan: its bytes hash to its digest, it was deployed (an entry), and its signature
    (required when the trust file names plan keys) is by a trusted key valid then, names it,
    and was made no later than the plan was deployed."""
    plans: dict[str, Plan] = {}
    deployed = {
        e["payload"].get("digest"): e for e in entries.values() if e.get("kind") == "plan.deployed"
    }
    for digest in manifest.get("plans", []):
        name = f"plans/{str(digest).removeprefix('sha256:')}.json"
        if not bundle.has(name):
            verdict.fail(name, "missing")
            continue
        found = _safely(_plan, bundle.read(name), str(digest))
        if isinstance(found, str):
            verdict.fail(name, found)
            continue
        if digest not in deployed:
            verdict.fail(name, "no plan.deployed entry of the bundle names it")
        signature = name.removesuffix(".json") + ".sig"
        entry = deployed.get(digest, {"payload": {}, "time": None})
        said = entry["payload"].get("signed")
        if isinstance(said, bool) and said != bundle.has(signature):
            held = "a signature" if bundle.has(signature) else "no signature"
            verdict.fail(name, f"its plan.deployed entry says signed: {str(said).lower()}, "
                         f"the bundle holds {held}")  # fmt: skip
        if bundle.has(signature):
            signed = PlanSigned(found, entry, trust)
            problem = _plan_signature_problem(bundle.read(signature), signed)
            if problem:
                verdict.fail(signature, problem)
        elif trust.plan_keys:
            verdict.fail(name, f"not signed, and plans must be signed by {_names(trust)}")
        plans[found.digest] = found
    if not trust.plan_keys and any(bundle.has(f"plans/{d}.sig") for d in _hexes(plans)):
        verdict.notes.append(
            "plans' signatures were checked against every trusted key: name the keys that"
            " sign plans in the trust file (plan_keys) to require them"
        )
    verdict.counts["plans"] = len(plans)
    return plans


def _names(trust: Trust) -> str:
    return " or ".join(sorted(trust.plan_keys))


def _hexes(plans: dict[str, Plan]) -> list[str]:
    return [digest.removeprefix("sha256:") for digest in plans]


def _plan(data: bytes, digest: str) -> Plan | str:
    """The plan of ``data`` if its digest is ``digest``: SHA-256 of its bytes without the
    ``"digest":"…"`` member (and one comma beside it), the canonical form without it."""
    member = f'"digest":"{digest}"'.encode()
    if data.count(member) != 1:
        return f"does not carry its digest {digest}"
    comma = member + b"," if member + b"," in data else b"," + member
    unsealed = data.replace(comma, b"", 1)
    if "sha256:" + hashlib.sha256(unsealed).hexdigest() != digest:
        return f"its bytes do not hash to its digest {digest}"
    body = _json(data, digest)
    points = body.get("points", [])
    required = sorted(
        {k for p in points if p.get("signing", {}).get("required") for k in p["signing"]["keys"]}
    )
    waivers = {_canon(w) for p in points for w in p.get("waived", []) if "signing" in w["facets"]}
    device = str(body.get("device", {}).get("id"))
    retention = {str(p["name"]): dict(p.get("retention", {})) for p in points}
    policies = {str(p["name"]): _retention_policies(p.get("provenance", {})) for p in points}
    sources = tuple(sorted((str(p), str(d)) for p, d in body.get("sources", {}).items()))
    waived = frozenset() if required else frozenset(waivers)
    return Plan(digest, device, tuple(required), waived, retention, sources, policies)


RETENTION_FACETS = (
    "retention.keep_at_least_ms",
    "retention.keep_at_most_ms",
    "retention.on_expiry",
)


def _retention_policies(provenance: dict[str, Any]) -> list[str]:
    found = {f"{s['policy']} @ {s['at']}" for f in RETENTION_FACETS for s in provenance.get(f, [])}
    return sorted(found)


def _check_sources(
    bundle: Bundle, manifest: dict[str, Any], plans: dict[str, Plan], verdict: Verdict
) -> None:
    """Every ``sources/<path>`` member is a file a plan of the bundle names, with the bytes it
    names; a source a plan names that the bundle does not carry is noted."""
    named: dict[str, set[str]] = {}
    for plan in plans.values():
        for path, digest in plan.sources:
            named.setdefault(path, set()).add(digest)
    carried = sorted(n.removeprefix(SOURCES) for n in bundle.members if n.startswith(SOURCES))
    listed = manifest.get("sources", [])
    if not isinstance(listed, list) or sorted(str(p) for p in listed) != carried:
        verdict.fail(MANIFEST, f"its sources are not the {SOURCES} members of the bundle")
    held: dict[str, str] = {}
    for path in carried:
        digest = bundle.digest(SOURCES + path)
        if digest in named.get(path, ()):
            held[path] = digest
        else:
            verdict.fail(SOURCES + path, "not a source any plan of the bundle names with its bytes")
    for path, digests in sorted(named.items()):
        for digest in sorted(digests - {held.get(path, "")}):
            verdict.notes.append(f"a plan names the source {path} ({digest}): not in the bundle")
    verdict.counts["sources"] = len(held)


def _canon(value: Any) -> str:
    """A JSON value's text with sorted keys: to compare waivers whatever their order."""
    return json.dumps(value, sort_keys=True, ensure_ascii=False, separators=(",", ":"))


@dataclass(frozen=True)
class PlanSigned:
    """A plan whose signature is checked, when it was deployed (its entry's time), and by whom
    a signature may be made."""

    plan: Plan
    deployed: dict[str, Any]
    """Its ``plan.deployed`` entry (``{"payload": {}, "time": None}`` when there is none)."""
    trust: Trust


def _plan_signature_problem(note: bytes, signed: PlanSigned) -> str | None:
    """Why a plan's signature (converge.plan-signature/v2) does not hold, if it does not."""
    text = note.decode(errors="replace")
    split = split_note(text)
    allowed = signed.trust.plan_keys or frozenset(signed.trust.keys)
    names = sorted({name for name, _, _ in split[1]} & allowed) if split else []
    found = next(
        (s for n in names if (s := signed_by(text, n, signed.trust.keys.get(n, [])))), None
    )
    if found is None:
        by = _names(signed.trust) if signed.trust.plan_keys else "a trusted key"
        return f"not signed by {by}"
    lines = found[0].split("\n")
    if len(lines) < 5 or lines[1:3] != [signed.plan.device, signed.plan.digest]:
        return "signs another plan"
    try:
        at = datetime.strptime(lines[3], "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)
    except ValueError:
        return "states no signing time"
    version = found[1]
    if not version.valid_at(at):
        return f"signed by {version.name} v{version.version} outside its validity"
    when = signed.deployed["time"]
    if when is not None and at > _aware(when) + timedelta(seconds=1):
        return f"signed at {lines[3]}, after the plan was deployed ({when})"
    return _described_problem(lines, signed.deployed["payload"])


DESCRIBED = ("signed_at", "signer", "name", "meaning")
"""What a ``plan.deployed`` entry records of the plan's signature (docs/plans.md)."""


def _described_problem(lines: list[str], payload: dict[str, Any]) -> str | None:
    """Whether the signature is the one its ``plan.deployed`` entry describes: time, and (a
    ``converge.plan-signature/v2`` note) signer, printed name and meaning."""
    said = {"signed_at": lines[3]}
    for line, key in zip(lines[4:7], DESCRIBED[1:], strict=False):
        if line.startswith(key + " "):
            said[key] = line.removeprefix(key + " ")
    recorded = {key: payload[key] for key in DESCRIBED if key in payload}
    if recorded and recorded != said:
        return (
            f"it says {said}, its plan.deployed entry {recorded}:"
            " not the signature the plan was deployed with"
        )
    return None


@dataclass
class Batch:
    """A batch as its statement says, and how its records are proven."""

    id: int
    device: str
    count: int
    root: bytes
    proofs: dict[int, list[bytes]] | None
    """Each exported record's inclusion proof; None when every record of the batch is exported."""
    points: list[str] | None = None
    """Its signed point map, the point of each position (of a batch with proofs)."""
    hashes: dict[int, bytes] = field(default_factory=dict)
    """Each position's leaf hash, as its record line gives it. It only grows: every writer adds
    a position it does not hold (:attr:`settled` relies on it)."""
    settled: int = -1
    """How many leaf hashes it held when they were found to rebuild its root (-1: not yet)."""
    window: tuple[str, str] = ("", "")
    plan: str = ""
    previous: bytes = b""
    """The root of the batch before it in its device's chain (zero for the first)."""


def _check_batches(
    bundle: Bundle, manifest: dict[str, Any], ctx: Context, verdict: Verdict
) -> dict[int, Batch]:
    batches: dict[int, Batch] = {}
    for batch_id in manifest.get("batches", []):
        name = f"batches/{batch_id}.json"
        if not bundle.has(name):
            verdict.fail(name, "missing")
            continue
        found = _safely(_batch, _json(bundle.read(name), name), ctx)
        if isinstance(found, str):
            verdict.fail(f"batch {batch_id} ({name})", found)
            continue
        batches[batch_id] = found
    verdict.counts["batches"] = len(batches)
    return batches


def _batch(said: dict[str, Any], ctx: Context) -> Batch | str:
    statement = str(said.get("statement", "")).encode()
    head = _statement(statement)
    if head is None:
        return "its statement is not a converge.batch/v2 statement"
    problem = _batch_problem(head, statement, said, ctx)
    if problem:
        return problem
    proofs = said.get("proofs")
    parsed = None if proofs is None else {int(k): _hashes(v) or [] for k, v in proofs.items()}
    points = None if proofs is None else _point_map(said.get("point_map"), head)
    if isinstance(points, str):
        return points
    root = bytes.fromhex(head["root"])
    window = (str(head["window_start"]), str(head["window_end"]))
    batch = Batch(int(said["id"]), str(head["device"]), int(head["count"]), root, parsed, points)
    batch.window, batch.plan = window, str(head["plan_digest"])
    batch.previous = bytes.fromhex(head["previous_root"])
    return batch


def _point_map(said: Any, head: dict[str, Any]) -> list[str] | str:
    """The point of each position of a batch exported in part: its ``point_map``, the JSON
    array whose SHA-256 its statement signs (docs/records.md), one name per record; else why
    not."""
    if not isinstance(said, str):
        return "it carries proofs, and no point map"
    data = said.encode()
    if hashlib.sha256(data).hexdigest() != head.get("point_map"):
        return "its point map is not the one its statement signs"
    names = json.loads(data)
    if (
        not isinstance(names, list)
        or len(names) != int(head["count"])
        or not all(isinstance(name, str) for name in names)
    ):
        return "its point map is not one point name per record"
    return names


ZERO_ROOT = bytes(32)
"""The ``previous_root`` of a device's first batch."""


def _check_chains(
    manifest: dict[str, Any],
    batches: dict[int, Batch],
    entries: dict[int, dict[str, Any]],
    verdict: Verdict,
) -> None:
    """Each device's batches follow one another in its chain (``previous_root``), from the zero
    root when the range has no start: a batch left out of the bundle is a break. A batch the
    spool dropped is excused by its ``batch.dropped`` entry. An archive holds only the batches
    it archives from: not checked."""
    if manifest.get("archive") is True:
        verdict.notes.append(
            "an archive holds only the batches it archives from: the devices' chains were not"
            " checked"
        )
        return
    excused = {
        (str(e["payload"].get("device")), str(e["payload"].get("root")))
        for e in entries.values()
        if e.get("kind") == "batch.dropped"
    }
    chains: dict[str, list[Batch]] = {}
    for batch in sorted(batches.values(), key=lambda b: b.id):
        chains.setdefault(batch.device, []).append(batch)
    for device, chain in sorted(chains.items()):
        dropped = {bytes.fromhex(r) for d, r in excused if d == device}
        if manifest.get("from") is None and chain[0].previous not in dropped | {ZERO_ROOT}:
            verdict.fail(
                f"batch {chain[0].id}",
                f"{device}'s chain does not start here: an earlier batch is not in the bundle",
            )
        for before, after in pairwise(chain):
            if after.previous != before.root and after.previous not in dropped:
                verdict.fail(
                    f"batch {after.id}",
                    f"it does not follow batch {before.id} of {device}: a batch between them"
                    " is not in the bundle",
                )


def _statement(data: bytes) -> dict[str, Any] | None:
    try:
        head = json.loads(data)
        bytes.fromhex(head["root"])
        int(head["count"])
    except (*UNPARSED, KeyError, TypeError):
        return None
    return head if head.get("format") == "converge.batch/v2" else None


@dataclass(frozen=True)
class Context:
    """What a batch is checked against: the bundle's plans, entries and trusted keys."""

    plans: dict[str, Plan]
    entries: dict[int, dict[str, Any]]
    keys: dict[str, list[KeyVersion]]
    checkpoints: list[Checkpoint]
    """The good checkpoints, by size."""


def _batch_problem(
    head: dict[str, Any], statement: bytes, said: dict[str, Any], ctx: Context
) -> str | None:
    """Why a batch does not hold: no entry records it, its plan is missing, its entry or keys
    differ, or a key its plan requires did not sign it when its entry says."""
    entry = ctx.entries.get(said.get("entry", -1))
    if entry is None or entry.get("kind") != "batch.stored":
        return "no batch.stored entry of the bundle records it"
    plan = ctx.plans.get(head.get("plan_digest", ""))
    if plan is None:
        return f"its plan {head.get('plan_digest')} is not in the bundle"
    payload = entry["payload"]
    members = {k: v for k, v in head.items() if k != "format"}
    if {k: v for k, v in payload.items() if k not in ("keys", "waiver")} != members:
        return "its statement differs from its batch.stored entry"
    signatures = said.get("signatures", {})
    return (
        _plan_problem(head, payload, plan)
        or _check_signatures(statement, signatures, plan, ctx.keys, entry["time"])
        or _back_dated(head, entry["seq"], ctx.checkpoints)
    )


def _plan_problem(head: dict[str, Any], payload: dict[str, Any], plan: Plan) -> str | None:
    """The batch's plan is its device's (another device's plan may ask for fewer keys), and
    its entry names the keys and waiver that plan requires."""
    if plan.device != head.get("device"):
        return f"its plan {plan.digest} is of device {plan.device}"
    if payload.get("keys") != list(plan.required):
        return f"its entry says keys {payload.get('keys')}, its plan requires {list(plan.required)}"
    if {_canon(w) for w in payload.get("waiver", [])} != plan.waivers:
        return "its waiver is not the one its plan records"
    return None


CLOCK_SLACK = timedelta(seconds=30)
"""How much later than a checkpoint's stated time a batch it signs may begin: none, as the
collector seals and signs in order on one clock, but for a clock stepped meanwhile."""


def _back_dated(head: dict[str, Any], seq: int, checkpoints: list[Checkpoint]) -> str | None:
    """A checkpoint signs no batch sealed after it: the first checkpoint that covers the
    batch's entry must be signed no earlier than its window began (a retired log key's
    checkpoints, dated back into its validity, cannot sign later batches)."""
    first = next((c for c in checkpoints if c.size > seq), None)
    start = _aware(str(head["window_start"]))
    if first is not None and start > first.at + CLOCK_SLACK:
        return (
            f"its window began at {head['window_start']}, after the checkpoint of size"
            f" {first.size} that covers its entry was signed ({first.at.isoformat()}): back-dated"
        )
    return None


def _check_signatures(
    statement: bytes, signatures: Any, plan: Plan, keys: dict[str, list[KeyVersion]], time: str
) -> str | None:
    at = _aware(time)
    for key in plan.required:
        try:
            signature = bytes.fromhex(signatures[key])
        except (KeyError, ValueError, TypeError):
            return f"the signature of key {key}, which its plan requires, is missing"
        good = [v for v in keys.get(key, []) if _verifies(v, signature, statement)]
        if not good:
            return f"the signature of key {key} does not verify with a trusted version"
        if not any(v.valid_at(at) for v in good):
            return f"signed by {key} outside the validity of the version that verifies it"
    return None


def _verifies(version: KeyVersion, signature: bytes, data: bytes) -> bool:
    try:
        version.key.verify(signature, data)
    except InvalidSignature:
        return False
    return True


@dataclass(frozen=True)
class Asked:
    """What the manifest says was exported: these points ("device/point"), in ``[start, end)``
    (instants, compared as text: every leaf's time is one, docs/records.md)."""

    points: frozenset[str]
    start: str | None
    end: str | None

    @classmethod
    def of(cls, manifest: dict[str, Any]) -> Asked:
        try:
            start, end = (
                None if t is None else _instant(t) for t in (manifest["from"], manifest["to"])
            )
            return cls(frozenset(str(p) for p in manifest["points"]), start, end)
        except (KeyError, ValueError, TypeError) as exc:
            raise Refused(MANIFEST, f"its range or points are malformed ({exc})") from None

    def whole(self, batch: Batch, points: frozenset[str]) -> bool:
        """Whether every record of ``batch``, whose plan collects ``points``, is asked: each
        of those points, and its signed window inside the range."""
        start, end = map(_instant, batch.window)
        return (
            all(f"{batch.device}/{point}" in self.points for point in points)
            and (self.start is None or start >= self.start)
            and (self.end is None or end <= self.end)
        )

    def outside(self, record: Record) -> str | None:
        """Why a record is not one of what was asked, if it is not."""
        point = f"{record.device}/{record.point}"
        if point not in self.points:
            return f"of {point}, which the export does not name"
        if (self.start is not None and record.time < self.start) or (
            self.end is not None and record.time >= self.end
        ):
            return f"at {record.time}, outside the exported range"
        return None


def _instant(text: str) -> str:
    """``text``'s moment as an instant: RFC 3339 UTC, six fraction digits, ``Z`` (the year
    in four digits, which ``strftime`` does not write below 1000)."""
    return _spelled(_aware(text))


def _spelled(moment: datetime) -> str:
    """An aware ``moment`` as an instant (see :func:`_instant`)."""
    return moment.astimezone(UTC).replace(tzinfo=None).isoformat(timespec="microseconds") + "Z"


@dataclass(frozen=True, slots=True)
class Record:
    """What a record's leaf says that an export and its check need, and its CSV row."""

    device: str
    point: str
    time: str
    csv: bytes


_INSTANT = rb"([0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}\.[0-9]{6}Z)"
_NAME = rb'"([A-Za-z0-9_.:/+-]+)"'
_USUAL = (
    rb'\{"collected_at":"' + _INSTANT + rb'","device":' + _NAME + rb',"point":' + _NAME
    + rb',"quality":"([a-z_]+)","salt":"[0-9a-f]{32}","scheduled_at":"' + _INSTANT
    + rb'","type":"reading","v":1,"value":(0|-?[1-9][0-9]{0,300}(\.[0-9]+)?)\}'
)  # fmt: skip
_READING = re.compile(_USUAL)
"""The usual leaf, a scheduled reading of a plain number, whose members the JSON parser would
read as exactly the matched text; its CSV row needs no quoting."""
_USUAL_LINE = re.compile(
    rb'\{"batch":(0|[1-9][0-9]*),"position":(0|[1-9][0-9]*),"leaf":(' + _USUAL + rb")\}"
)
"""A record line of the usual leaf: batch, position, leaf, then :data:`_READING`'s groups."""


def read_record(leaf: bytes, batch: int, position: int) -> Record | None:
    """The record of a leaf (None when the leaf is not one: not a JSON object with a device,
    point and time). The usual reading is read by :data:`_READING` without parsing it as
    JSON; any other leaf is parsed; both give the same :class:`Record`."""
    found = _READING.fullmatch(leaf)
    if found is not None and not (found[7] and repr(float(found[6])) != found[6].decode()):
        collected, device, point, quality, scheduled, value = found.group(1, 2, 3, 4, 5, 6)
        row = b"%s,%s,reading,%s,%s,%s,,,%s,%s,,,%d,%d\n" % (
            device, point, scheduled, value, quality, collected, scheduled, batch, position
        )  # fmt: skip
        return Record(device.decode(), point.decode(), scheduled.decode(), row)
    return _parsed_record(leaf, batch, position)


def _parsed_record(leaf: bytes, batch: int, position: int) -> Record | None:
    try:
        said = json.loads(leaf)
    except UNPARSED:
        return None
    if not isinstance(said, dict):
        return None
    time = said.get("scheduled_at") or said.get("collected_at")
    if not isinstance(time, str):
        return None
    row = _csv_text(_csv_row(said, batch, position))
    return Record(str(said.get("device")), str(said.get("point")), time, row)


@dataclass(frozen=True)
class Usual:
    """Record lines that are all of the usual reading, read at once: their columns (the
    groups of :data:`_USUAL_LINE`, as bytes) and their CSV rows."""

    batches: tuple[bytes, ...]
    positions: tuple[bytes, ...]
    leaves: tuple[bytes, ...]
    devices: tuple[bytes, ...]
    points: tuple[bytes, ...]
    times: tuple[bytes, ...]
    rows: bytes


_USUAL_LINES = re.compile(rb"^" + _USUAL_LINE.pattern + rb"$", re.MULTILINE)
_ROW = b"%s,%s,reading,%s,%s,%s,,,%s,%s,,,%s,%s\n"
_ROW_ORDER = itemgetter(4, 5, 7, 8, 6, 3, 7, 0, 1)
"""A :data:`_USUAL_LINE` match's groups in the order of :data:`_ROW`."""


def read_usual(lines: bytes, count: int) -> Usual | None:
    """The ``count`` record lines ``lines`` (each ending in a newline) read in one pass, when
    every one is the usual reading (:data:`_USUAL_LINE`) whose value's text is the number's
    own (as :func:`read_record` asks); else None. The CSV rows are :func:`read_record`'s."""
    found = _USUAL_LINES.findall(lines)
    if not found or len(found) != count or lines.count(b"\n") != count:
        return None
    columns = tuple(zip(*found, strict=True))
    batches, positions, leaves, devices, points, times, values, fractions = (
        columns[i] for i in (0, 1, 2, 4, 5, 7, 8, 9)
    )
    if not _numbers_own(compress(values, fractions)):
        return None
    rows = b"".join(map(_ROW.__mod__, map(_ROW_ORDER, found)))
    return Usual(batches, positions, leaves, devices, points, times, rows)


def _numbers_own(decimals: Iterable[bytes]) -> bool:
    """Whether each decimal's text is its number's own (``repr(float(text)) == text``), of
    decimals :data:`_USUAL` reads with a fraction (at least 1 in size, no leading zero).

    Such a decimal of at most 15 significant digits whose fraction does not end in 0 is its
    number's own, so when every one is, none is converted: a decimal of 15 digits reads back
    from its double, so no two such decimals are one double, and the shortest that reads back
    (``repr``'s) is the text itself; at least 1 and under 10**16, ``repr`` writes it without
    an exponent. Otherwise each is converted and compared."""
    texts = list(decimals)
    if max(map(len, texts), default=0) <= OWN_LENGTH and not any(map(_ends_in_zero, texts)):
        return True
    return list(map(repr, map(float, texts))) == list(map(bytes.decode, texts))


OWN_LENGTH = 16
"""A decimal with a fraction this long at most has 15 significant digits at most (one is its
point)."""
_ends_in_zero = methodcaller("endswith", b"0")


@dataclass(frozen=True)
class Rows:
    """Record lines that are all of the usual reading, read at once for an export: each
    one's point and time (as bytes, in line order) and their CSV rows."""

    points: list[bytes]
    times: list[bytes]
    rows: bytes


_EXPORTED_LINES = re.compile(
    rb'^\{"batch":(0|[1-9][0-9]*),"position":(0|[1-9][0-9]*),"leaf":' + _USUAL + rb"\}$",
    re.MULTILINE,
)
"""A usual record line with fewer groups than :data:`_USUAL_LINES` (not the leaf): what an
export reads of it."""
_EXPORTED_ORDER = itemgetter(3, 4, 6, 7, 5, 2, 6, 0, 1)
"""An :data:`_EXPORTED_LINES` match's groups in the order of :data:`_ROW`."""


def usual_rows(lines: bytes, count: int) -> Rows | None:
    """What an export reads of ``count`` record lines (each ending in a newline) when every one
    is the usual reading, as :func:`read_usual` asks; else None. The CSV rows are
    :func:`read_record`'s. Fewer columns than :func:`read_usual`: a third faster."""
    found = _EXPORTED_LINES.findall(lines)
    if not found or len(found) != count or lines.count(b"\n") != count:
        return None
    if not _numbers_own(compress(map(itemgetter(7), found), map(itemgetter(8), found))):
        return None
    rows = b"".join(map(_ROW.__mod__, map(_EXPORTED_ORDER, found)))
    return Rows(list(map(itemgetter(4), found)), list(map(itemgetter(6), found)), rows)


@dataclass(frozen=True)
class Run:
    """Consecutive lines of one batch in a block: where they end in the block, and what the
    check asks of them all: their devices and points (each once), their least and greatest
    time."""

    batch: bytes
    end: int
    devices: frozenset[bytes]
    points: frozenset[bytes]
    first: bytes
    last: bytes


@dataclass(frozen=True)
class Read:
    """A block of record lines that are all the usual reading, read at once: its runs of one
    batch, each line's position, the CSV rows, and each leaf's hash (32 bytes each, in line
    order). Few objects, so that a worker process hands it back cheaply."""

    runs: list[Run]
    positions: list[int]
    rows: bytes
    hashes: bytes


def read_block(block: bytes) -> Read | None:
    """``block`` (whole record lines) read when every line is the usual reading
    (:func:`read_usual`), its leaves hashed; else None. A pure function of the bytes: a worker
    process may run it."""
    read = read_usual(block, block.count(b"\n")) if block.endswith(b"\n") else None
    if read is None:
        return None
    runs, start = [], 0
    for batch, lines in groupby(read.batches):
        end = start + len(list(lines))
        times = read.times[start:end]
        devices, points = frozenset(read.devices[start:end]), frozenset(read.points[start:end])
        runs.append(Run(batch, end, devices, points, min(times), max(times)))
        start = end
    hashes = b"".join(map(leaf_hash, read.leaves))
    return Read(runs, list(map(int, read.positions)), read.rows, hashes)


PARALLEL_BYTES = 64 << 20
"""A records member at least this large is read by worker processes (Linux only: forked)."""
MAX_WORKERS = 8
AHEAD = 3
"""Items in flight per worker."""


def worker_count(amount: int, least: int) -> int:
    """One worker process per CPU this process may use, when ``amount`` of work is at least
    ``least`` and there are two CPUs or more, on Linux (workers are forked); else none."""
    affinity = getattr(os, "sched_getaffinity", None)  # the CPUs it may use (Linux)
    cpus = len(affinity(0)) if affinity else os.cpu_count() or 1
    if amount < least or cpus < 2 or sys.platform != "linux":
        return 0
    return min(cpus, MAX_WORKERS)


A = TypeVar("A")
B = TypeVar("B")


def in_order(work: Callable[[A], B], items: Iterator[A], workers: int) -> Iterator[tuple[A, B]]:
    """Each item with ``work(item)``, in order: done here, or by ``workers`` forked processes
    a few items ahead (``work`` is then a pure function of its item). When ``items`` raises
    (a block that cannot be read), the items before are given first, as when done here.
    When a worker dies (killed: out of memory, by hand), the pool is broken: each item it
    had not done, and every one after, is done here.

    While the workers run, the heap they are forked with is frozen (``gc.freeze``): else
    every collection in a worker walks all of it, writing to each object and so copying
    every page of it (in a process that had just built a store, an export took a quarter
    longer). A heap frozen already (a collector's run) is left as it is."""
    if not workers:
        yield from ((item, work(item)) for item in items)
        return
    pool = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("fork"))
    pending: deque[tuple[A, Future[B] | None]] = deque()
    freezing = gc.get_freeze_count() == 0
    try:
        if freezing:
            gc.freeze()  # before the first submit, which forks the workers
        try:
            for item in items:
                pending.append((item, _submitted(pool, work, item)))
                if len(pending) > AHEAD * workers:
                    yield _done(pending, work)
        except Exception:
            while pending:
                yield _done(pending, work)
            raise
        while pending:
            yield _done(pending, work)
    finally:
        pool.shutdown(cancel_futures=True)
        if freezing:
            gc.unfreeze()


def _submitted(pool: ProcessPoolExecutor, work: Callable[[A], B], item: A) -> Future[B] | None:
    """``work(item)`` given to the pool; None when the pool is broken."""
    try:
        return pool.submit(work, item)
    except BrokenProcessPool:
        return None


def _done(pending: deque[tuple[A, Future[B] | None]], work: Callable[[A], B]) -> tuple[A, B]:
    """The oldest pending item with its work: a worker's, or, the pool broken, done here."""
    item, task = pending.popleft()
    if task is not None:
        try:
            return item, task.result()
        except BrokenProcessPool:
            pass
    return item, work(item)


def _check_records(
    bundle: Bundle, manifest: dict[str, Any], batches: dict[int, Batch], verdict: Verdict
) -> None:
    """Every record: of its batch (whole batches rebuild their root, others prove each record),
    once, of what the export names; and the CSV is exactly these records."""
    asked = Asked.of(manifest)
    rows = _Rows(bundle.blocks(RECORDS_CSV) if bundle.has(RECORDS_CSV) else iter(()))
    header = (rows.line() or b"").decode(errors="replace")
    if header != ",".join(CSV_COLUMNS):
        verdict.fail(RECORDS_CSV, "its header is not the documented one")
    count = 0
    usual = _Usual(batches, asked)
    blocks = bundle.blocks(RECORDS) if bundle.has(RECORDS) else iter(())
    size = bundle.members[RECORDS].file_size if bundle.has(RECORDS) else 0
    for block, read in in_order(read_block, blocks, worker_count(size, PARALLEL_BYTES)):
        taken = usual.block(read, rows)
        if taken:
            count += taken
            continue
        lines = block.split(b"\n")
        if block.endswith(b"\n"):
            lines.pop()
        for line in lines:
            count += 1
            found = usual.row(line) or _record(line, batches, asked)
            if isinstance(found, str):
                verdict.fail(f"{RECORDS}:{count}", found)
                rows.pass_row_of(line)
            elif rows.line() != found[:-1]:
                verdict.fail(f"{RECORDS_CSV}:{count + 1}", f"is not record {count} of {RECORDS}")
    if rows.line() is not None:
        verdict.fail(RECORDS_CSV, f"holds more rows than the {count} records")
    for batch in batches.values():
        if batch.proofs is None and batch.settled != len(batch.hashes):
            _check_whole(batch, verdict)
    if count != manifest.get("records"):
        verdict.fail(MANIFEST, f"says {manifest.get('records')} records, the bundle holds {count}")
    verdict.counts["records"] = count


class _Rows:
    """The CSV's lines, read ahead in blocks: a run of rows is compared at once
    (:meth:`take`), a row one at a time (:meth:`line`). A block that cannot be read is
    refused where :meth:`Bundle.lines` would refuse it: when a line in it is asked for."""

    def __init__(self, blocks: Iterator[bytes]) -> None:
        self.blocks, self.buffer, self.at = blocks, b"", 0
        self.begun = 0
        """Where in ``buffer`` the last line read begins."""
        self.refused: Refused | None = None

    def _more(self) -> bool:
        if self.refused is not None:
            return False
        try:
            block = next(self.blocks, None)
        except Refused as exc:
            self.refused = exc
            return False
        if block is None:
            return False
        self.buffer, self.at = self.buffer[self.at :] + block, 0
        return True

    def take(self, rows: bytes) -> bool:
        """Whether the next rows are ``rows`` (whole lines); they are taken if so."""
        while len(self.buffer) - self.at < len(rows) and self._more():
            pass
        if not self.buffer.startswith(rows, self.at):
            return False
        self.at += len(rows)
        return True

    def line(self) -> bytes | None:
        """The next line (without its newline), or None at the end."""
        while (end := self.buffer.find(b"\n", self.at)) < 0:
            if not self._more():
                break
        else:
            self.begun, self.at = self.at, end + 1
            return self.buffer[self.begun : end]
        if self.refused is not None:
            raise self.refused
        if self.at == len(self.buffer):
            return None
        self.begun, self.at = self.at, len(self.buffer)
        return self.buffer[self.begun :]

    def pass_row_of(self, line: bytes) -> None:
        """Pass over the row of a record line that failed (whose row cannot be known), so
        that each row after it is compared with its own record: the next row, unless the
        line names its batch and position and that row's last two fields are not those (the
        CSV lacks its row: the next record's is left for it)."""
        place = _PLACE.match(line)
        row = self.line()
        if row is not None and place is not None and not row.endswith(b",%s,%s" % place.groups()):
            self.at = self.begun


_PLACE = re.compile(rb'\{"batch":(0|[1-9][0-9]*),"position":(0|[1-9][0-9]*),')
"""The batch and position a record line begins with."""


class _Usual:
    """Checks usual record lines (:data:`_USUAL_LINE`) of batches exported whole, when they
    hold: a block of them at once (:meth:`block`), else one (:meth:`row`): a new position, the
    batch's device, a point asked for, in the range. Any other line, and any where one of these
    fails, goes to :func:`_record`, which names what fails; all record the leaf's hash and give
    the same CSV row."""

    def __init__(self, batches: dict[int, Batch], asked: Asked) -> None:
        self.batches = batches
        self.points = {point.encode() for point in asked.points}
        self.start = (asked.start or "").encode()
        self.end = asked.end.encode() if asked.end else None

    def block(self, read: Read | None, rows: _Rows) -> int:
        """How many lines of a block (``read`` by :func:`read_block`) were checked and their
        CSV rows taken from ``rows``: all of them when every line is usual and holds and the
        rows are theirs, else none (nothing recorded: the block is then checked line by
        line)."""
        if read is None:
            return 0
        staged: list[tuple[Batch, list[int], int]] = []
        start = 0
        for run in read.runs:
            batch = self.batches.get(int(run.batch))
            if batch is None or any(batch is b for b, _, _ in staged):
                return 0
            positions = read.positions[start : run.end]
            if not self._holds(batch, positions, run):
                return 0
            staged.append((batch, positions, start))
            start = run.end
        if not rows.take(read.rows):
            return 0
        hashes = read.hashes
        for batch, positions, first in staged:
            at = range(first * 32, (first + len(positions)) * 32, 32)
            batch.hashes.update(zip(positions, [hashes[i : i + 32] for i in at], strict=True))
            _root_now(batch)
        return len(read.positions)

    def _holds(self, batch: Batch, positions: list[int], run: Run) -> bool:
        """A run of one batch's lines: whole batch, new positions, its device, points asked,
        times in range."""
        device = batch.device.encode()
        return (
            batch.proofs is None
            and len(set(positions)) == len(positions)
            and batch.hashes.keys().isdisjoint(positions)
            and run.devices == {device}
            and all(device + b"/" + point in self.points for point in run.points)
            and run.first >= self.start
            and (self.end is None or run.last < self.end)
        )

    def row(self, line: bytes) -> bytes | None:
        """The CSV row of a usual line that holds, its leaf hash recorded; else None."""
        m = _USUAL_LINE.fullmatch(line)
        if m is None or (m[10] and repr(float(m[9])) != m[9].decode()):
            return None
        batch, position = self.batches.get(int(m[1])), int(m[2])
        scheduled = m[8]
        if (
            batch is None
            or batch.proofs is not None
            or position in batch.hashes
            or m[5] != batch.device.encode()
            or m[5] + b"/" + m[6] not in self.points
            or scheduled < self.start
            or (self.end is not None and scheduled >= self.end)
        ):
            return None
        batch.hashes[position] = leaf_hash(m[3])
        return b"%s,%s,reading,%s,%s,%s,,,%s,%s,,,%d,%d\n" % (
            m[5], m[6], scheduled, m[9], m[7], m[4], scheduled, batch.id, position
        )  # fmt: skip


def _root_now(batch: Batch) -> None:
    """Rebuild the root of a batch its lines just completed now, while the workers read on
    (at the end the other CPUs would idle), and note it when it holds; one that does not is
    named at the end, in its place (:func:`_check_whole`)."""
    if len(batch.hashes) == batch.count and _whole_problem(batch) is None:
        batch.settled = len(batch.hashes)


def _check_whole(batch: Batch, verdict: Verdict) -> None:
    """A batch exported whole: every position once, hashing to its signed root."""
    problem = _whole_problem(batch)
    if problem is not None:
        verdict.fail(f"batch {batch.id}", problem)


def _whole_problem(batch: Batch) -> str | None:
    positions = sorted(batch.hashes)
    if positions != list(range(batch.count)):
        return f"holds {len(positions)} of its {batch.count} records"
    if tree_root([batch.hashes[p] for p in positions]) != batch.root:
        return "its records do not hash to its signed root"
    return None


def _record(line: bytes, batches: dict[int, Batch], asked: Asked) -> bytes | str:
    """The CSV row of a record line, or why the line is not a record of its batch."""
    placed = _placed(line, batches)
    if isinstance(placed, str):
        return placed
    batch, position, leaf = placed
    record = read_record(leaf, batch.id, position)
    if record is None:
        return "its leaf is not a record"
    if record.device != batch.device:
        return f"of another device than batch {batch.id}'s"
    if batch.points is not None and batch.points[position] != record.point:
        return f"of another point than batch {batch.id}'s signed point map names at {position}"
    return asked.outside(record) or record.csv


def _placed(line: bytes, batches: dict[int, Batch]) -> tuple[Batch, int, bytes] | str:
    """The batch, position and leaf of a record line whose leaf is in its batch there."""
    match = _LINE.fullmatch(line)
    if match is None:
        return "not a record line"
    batch = batches.get(int(match[1]))
    if batch is None:
        return f"of batch {int(match[1])}, which the bundle does not prove"
    position, leaf = int(match[2]), match[3]
    if position in batch.hashes:
        return f"a second record at position {position} of batch {batch.id}"
    hashed = batch.hashes[position] = leaf_hash(leaf)
    if batch.proofs is not None:
        proof = batch.proofs.get(position)
        if proof is None or inclusion_root(hashed, position, batch.count, proof) != batch.root:
            return f"not in batch {batch.id} at position {position} (its proof fails)"
    return batch, position, leaf


def _csv_row(leaf: dict[str, Any], batch: int, position: int) -> list[str]:
    """The CSV row of a record (docs/bundle.md): its members in :data:`CSV_COLUMNS` order."""
    time = leaf.get("scheduled_at") or leaf.get("collected_at")
    said = {**leaf, "time": time, "batch": batch, "position": position}
    return [_cell(said.get(column)) for column in CSV_COLUMNS]


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float | int):
        return json.dumps(value)
    return str(value)


def _csv_text(row: list[str]) -> bytes:
    out = io.StringIO()
    csv.writer(out, lineterminator="\n").writerow(row)
    return out.getvalue().encode()


def _check_export(
    manifest: dict[str, Any], entries: dict[int, dict[str, Any]], verdict: Verdict
) -> frozenset[str] | None:
    """The export itself is an allowed decision of the log, by the principal the manifest names;
    an archive's, the ``retention.archived`` entry of the run that wrote it. The points the
    decision allowed (``device/point``); None for an archive, or a decision not found."""
    decision = manifest.get("decision")
    if manifest.get("archive") is True:
        archived = [
            e
            for e in entries.values()
            if e.get("kind") == "retention.archived" and e["payload"].get("decision") == decision
        ]
        if not archived or _actor_id(archived[0]) != manifest.get("principal"):
            verdict.fail(
                MANIFEST, f"its archive {decision} is not an entry of the bundle by its actor"
            )
        else:
            said = archived[0]["payload"]
            _check_decided(manifest, said, _named(said.get("points"), False), verdict)
        return None
    found = [
        e
        for e in entries.values()
        if e.get("kind") == "access.decision" and e["payload"].get("decision") == decision
    ]
    if not found:
        verdict.fail(MANIFEST, f"its export decision {decision} is not an entry of the bundle")
        return None
    payload = found[0]["payload"]
    if payload.get("action") != "export" or payload.get("outcome") not in ("allow", "partial"):
        verdict.fail(MANIFEST, f"decision {decision} did not allow this export")
    if payload.get("principal") != manifest.get("principal"):
        verdict.fail(MANIFEST, f"decision {decision} was another principal's")
    allowed = _named(payload.get("points"), True)
    _check_decided(manifest, payload, allowed, verdict)
    return frozenset(allowed)


def _named(points: Any, allowed_only: bool) -> set[str]:
    """The ``device/point`` names of an entry's ``points`` (those allowed, for a decision)."""
    if not isinstance(points, list):
        return set()
    return {
        f"{p.get('device')}/{p.get('point')}"
        for p in points
        if isinstance(p, dict) and (not allowed_only or p.get("allowed") is True)
    }


def _check_decided(
    manifest: dict[str, Any], said: dict[str, Any], decided: set[str], verdict: Verdict
) -> None:
    """The manifest's points and range are the ones its signed entry decided: the manifest is
    the exporter's word, and the records are checked against it (step 8)."""
    decision = manifest.get("decision")
    beyond = sorted(set(map(str, manifest.get("points") or ())) - decided)
    if beyond:
        named = ", ".join(beyond[:5]) + (f" and {len(beyond) - 5} more" if len(beyond) > 5 else "")
        verdict.fail(MANIFEST, f"names {named}, which its decision {decision} did not allow")
    if (manifest.get("from"), manifest.get("to")) != (said.get("from"), said.get("to")):
        verdict.fail(
            MANIFEST,
            f"its range [{manifest.get('from')}, {manifest.get('to')}) is not the one its "
            f"decision {decision} decided, [{said.get('from')}, {said.get('to')})",
        )


@dataclass(frozen=True)
class Retained:
    """What the retention member is checked against: the bundle's proven entries, batches and
    plans."""

    entries: dict[int, dict[str, Any]]
    batches: dict[int, Batch]
    plans: dict[str, Plan]
    checkpoints: list[Checkpoint]
    """The good checkpoints, by size."""


@dataclass(frozen=True)
class Hold:
    """A legal hold as its entries say: what it covers, and between which entries it held."""

    id: int
    placed: int
    released: int | None
    devices: tuple[str, ...]
    points: tuple[str, ...]
    start: str | None
    end: str | None
    held: frozenset[tuple[str, str]] | None = None
    """The (device, point) pairs its decision allowed (its entry's ``held``): it covers those
    alone, not what was deployed after it was placed."""

    def covers(self, device: str, point: str, window: tuple[str, str]) -> bool:
        """Whether it covers a point's records of a batch window (docs/retention.md)."""
        return (
            self.names(device, point)
            and (self.start is None or window[1] > self.start)
            and (self.end is None or window[0] < self.end)
        )

    def names(self, device: str, point: str) -> bool:
        """Whether its devices (all, when none) and point globs (all, when none) take in
        ``device``'s ``point``, whenever stored."""
        if self.held is not None and (device, point) not in self.held:
            return False
        return (not self.devices or device in self.devices) and (
            not self.points or any(fnmatchcase(point, glob) for glob in self.points)
        )

    def in_force_at(self, seq: int) -> bool:
        return self.placed < seq and (self.released is None or self.released > seq)


def _check_retention(bundle: Bundle, retained: Retained, verdict: Verdict) -> dict[int, set[int]]:
    """Deletion receipts and legal holds touching the range: each an entry of the bundle; no
    exported record is one a receipt deleted; and each receipt was lawful (docs/bundle.md).
    The positions the receipts that verify removed, by batch."""
    removed: dict[int, set[int]] = {}
    if not bundle.has(RETENTION):
        return removed
    said = _json(bundle.read(RETENTION), RETENTION)
    if not isinstance(said, dict) or set(said) != {"receipts", "holds"}:
        verdict.fail(RETENTION, "not a retention member (receipts and holds)")
        return removed
    holds = _safely(_holds, said["holds"], retained.entries)
    if isinstance(holds, str):
        verdict.fail(RETENTION, f"its holds: {holds}")
        return removed
    holds = [_decided(hold, retained.entries, verdict) for hold in holds]
    receipts = said["receipts"]
    if not isinstance(receipts, list) or not all(type(s) is int for s in receipts):
        verdict.fail(RETENTION, "its receipts are not a list of entry numbers")
        return removed
    deleted = 0
    for seq in receipts:
        found = _safely(_receipt_problem, seq, retained, holds)
        if isinstance(found, str):
            verdict.fail(f"receipt (audit entry {seq})", found)
            continue
        earlier = removed.setdefault(found.batch.id, set())
        if earlier & found.positions:
            again = min(earlier & found.positions)
            verdict.fail(
                f"receipt (audit entry {seq})",
                f"deletes position {again} of batch {found.batch.id} a second time",
            )
            continue
        earlier.update(found.positions)
        deleted += len(found.positions)
    verdict.counts["deletion receipts"] = len(receipts)
    verdict.counts["holds"] = len(holds)
    if receipts:
        verdict.notes.append(
            f"{deleted:,} records of the range were deleted by {len(receipts)} deletion receipts"
            " (retention.json); the receipts that verify were lawful"
        )
    return removed


def _holds(listed: Any, entries: dict[int, dict[str, Any]]) -> list[Hold]:
    """The holds ``retention.json`` lists, as their ``hold.placed`` (and ``hold.released``)
    entries of the bundle state them; raises ValueError for one the entries do not bear out."""
    found = []
    for said in listed:
        hold, placed, released = said["hold"], said["placed"], said["released"]
        entry = entries.get(placed, {})
        gone = entries.get(released, {}) if released is not None else None
        if (
            entry.get("kind") != "hold.placed"
            or entry["payload"].get("hold") != hold
            or (gone is not None and (gone.get("kind") != "hold.released" or released < placed))
            or (gone is not None and gone["payload"].get("hold") != hold)
        ):
            raise ValueError(f"hold {hold} is not placed (and released) by the entries it names")
        p = entry["payload"]
        held = None if "held" not in p else frozenset((h["device"], h["point"]) for h in p["held"])
        found.append(
            Hold(
                hold,
                placed,
                released,
                tuple(p["devices"]),
                tuple(p["points"]),
                p["from"],
                p["to"],
                held,
            )
        )
    return found


def _decided(hold: Hold, entries: dict[int, dict[str, Any]], verdict: Verdict) -> Hold:
    """The hold as the decisions its entries name allow it: each entry names an earlier
    ``access.decision`` of the bundle that allowed its actor a hold on the hold's whole scope
    as placed (docs/retention.md, legal holds). One that does not is named; a release none
    allowed leaves the hold in force."""
    for seq in (hold.placed, hold.released):
        why = None if seq is None else _undecided(seq, hold, entries)
        if seq is not None and why is not None:
            verb = "places" if seq == hold.placed else "releases"
            verdict.fail(f"audit entry {seq}", f"{verb} hold {hold.id}, but {why}")
            if seq == hold.released:
                return replace(hold, released=None)
    return hold


def _undecided(seq: int, hold: Hold, entries: dict[int, dict[str, Any]]) -> str | None:
    """Why the decision entry ``seq`` names did not allow its actor a hold on ``hold``'s
    scope; None if it did. Its decision is the first entry of its id before it, and allows
    one placing or one release: no earlier hold entry of the bundle may name it."""
    entry = entries[seq]
    named = entry["payload"].get("decision")
    earlier = sorted(
        (e for e in entries.values() if e["seq"] < seq and e["payload"].get("decision") == named),
        key=lambda e: int(e["seq"]),
    )
    found = [e for e in earlier if e.get("kind") == "access.decision"]
    if not found:
        return "no earlier access.decision entry of the bundle is the decision it names"
    said, who = found[0]["payload"], _actor_id(entry)
    where = f"its decision (audit entry {found[0]['seq']})"
    if said.get("action") != "hold" or said.get("outcome") != "allow":
        return f"{where} did not allow a hold"
    if said.get("principal") != who or _actor_id(found[0]) != who:
        return f"{where} was not {who}'s"
    if not _same_span((said.get("from"), said.get("to")), hold) or not _held_points(
        hold, said.get("points")
    ):
        return f"{where} was on another scope than the hold's as placed"
    return _reused(earlier)


def _reused(earlier: list[dict[str, Any]]) -> str | None:
    """Why a decision allows no hold entry but the first to name it (``earlier``: the
    entries naming its id before this one, in seq order); None if none did."""
    used = [e["seq"] for e in earlier if e.get("kind") in ("hold.placed", "hold.released")]
    if not used:
        return None
    return (
        f"its decision was named already, by audit entry {used[0]}: a decision allows one"
        " placing or one release"
    )


def _actor_id(entry: dict[str, Any]) -> str:
    """The id of an entry's actor: an object's ``id``, or (older entries) the string itself."""
    actor = entry["actor"]
    return str(actor.get("id")) if isinstance(actor, dict) else str(actor)


def _same_span(said: tuple[Any, Any], hold: Hold) -> bool:
    """Whether a decision's ``from``/``to`` are the hold's: open alike, or the same instant
    spelled as instants are (``2026-06-01T12:00:00.000000Z``). A hold's range is compared with
    batch windows as text, so the same moment spelled otherwise (``…T13:00:00+01:00``) would
    cover other windows than the ones decided."""
    try:
        return all(
            a == b and (b is None or (isinstance(b, str) and _instant(b) == b))
            for a, b in zip(said, (hold.start, hold.end), strict=True)
        )
    except (ValueError, OverflowError):  # year 1 at a positive offset is no instant in UTC
        return False


def _held_points(hold: Hold, points: Any) -> bool:
    """Whether a decision's points are all allowed, all within the hold's devices and globs,
    and name each device it names and match each glob on each device decided."""
    if not isinstance(points, list) or not points:
        return False
    if not all(isinstance(p, dict) and p.get("allowed") is True for p in points):
        return False
    pairs = {(str(p.get("device")), str(p.get("point"))) for p in points}
    if hold.held is not None and pairs != hold.held:
        return False  # it holds exactly what was decided
    devices = {device for device, _ in pairs}
    if hold.devices and devices != set(hold.devices):
        return False
    if not all(hold.names(device, point) for device, point in pairs):
        return False
    return all(
        any(fnmatchcase(point, glob) for named, point in pairs if named == device)
        for glob in hold.points
        for device in devices
    )


@dataclass(frozen=True)
class Expired:
    """An expiry group of a receipt: its points, its positions, and the calculation it states
    (its other members)."""

    points: list[str]
    positions: set[int]
    stated: dict[str, Any]


@dataclass(frozen=True)
class Deleted:
    """What a receipt deleted from its batch: the positions, and its expiry groups."""

    batch: Batch
    positions: set[int]
    groups: list[Expired]


def _receipt_problem(seq: int, retained: Retained, holds: list[Hold]) -> Deleted | str:
    """What a lawful receipt deleted, or why it is not one."""
    entry = retained.entries.get(seq)
    if entry is None or entry.get("kind") != "retention.deleted":
        return "not a retention.deleted entry of the bundle"
    said = entry["payload"]
    found = _receipt_batch(said, retained)
    deleted = found if isinstance(found, str) else _deleted(said, found)
    if isinstance(deleted, str):
        return deleted
    batch = deleted.batch
    exported = sorted(deleted.positions & batch.hashes.keys())
    if exported:
        return f"deleted position {exported[0]} of batch {batch.id}, yet the bundle exports it"
    plan = retained.plans.get(batch.plan)
    problem = _dated_late(entry, retained.checkpoints) or _mislabelled(deleted)
    if plan is None or problem:
        return problem or f"its batch's plan {batch.plan} is not in the bundle"
    return _unlawful(deleted, plan, (seq, entry), retained, holds) or deleted


def _unlawful(
    deleted: Deleted,
    plan: Plan,
    receipt: tuple[int, dict[str, Any]],
    retained: Retained,
    holds: list[Hold],
) -> str | None:
    """Why a receipt's (seq, entry) deletion of each point, by its plan, was not lawful: a
    calculation that is not the plan's, records not yet expired, a hold, an archive not
    written."""
    (seq, entry), batch = receipt, deleted.batch
    at = _aware(entry["time"])
    for group in deleted.groups:
        for point in group.points:
            kept, where = plan.retention.get(point, {}), f"{batch.device}/{point}"
            if _misstated(group.stated, kept, plan.policies.get(point, []), batch):
                return f"its expiry calculation for {where} is not its plan's"
            problem = (
                _expiry_problem(kept, batch, at)
                or _held(holds, seq, batch, point)
                or _unarchived(kept, entry["payload"], group.positions, retained, batch, seq=seq)
            )
            if problem:
                return f"deletes {where} {problem}"
    return None


def _mislabelled(deleted: Deleted) -> str | None:
    """Why an expiry group of a receipt deleted a position its batch's signed point map gives
    none of the group's points: the group's points are what the receipt is judged lawful by."""
    names = deleted.batch.points
    if names is None:
        return f"its batch {deleted.batch.id} carries no point map"
    for group in deleted.groups:
        stray = min((p for p in group.positions if names[p] not in group.points), default=None)
        if stray is not None:
            return (
                f"deletes position {stray} of batch {deleted.batch.id} as"
                f" {', '.join(group.points)}, where its signed point map says {names[stray]}"
            )
    return None


def _dated_late(entry: dict[str, Any], checkpoints: list[Checkpoint]) -> str | None:
    """Why a receipt is dated after the first checkpoint of the bundle that signs it (anyone
    who can write the database may append one to the log's unsigned tail, dated when its
    deletion would have been lawful, for the next checkpoint to sign)."""
    signing = next((c for c in checkpoints if c.size > entry["seq"]), None)
    if signing is None or _aware(entry["time"]) <= signing.at:
        return None
    return (
        f"dated {entry['time']}, after the checkpoint of size {signing.size} that signs it"
        f" ({signing.at.isoformat()})"
    )


def _deleted(said: dict[str, Any], batch: Batch) -> Deleted | str:
    """What a receipt says it deleted, or why that is not a receipt's statement: each expiry
    group names points, each in one group only, and together its positions; the receipt's
    ``points`` are exactly the groups' points, of its batch's device, each group's counting its
    positions."""
    try:
        positions = runs_within(said["positions"], batch.count)
        groups = [
            (_group_points(g["points"]), runs_within(g["positions"], batch.count))
            for g in said["expiries"]
        ]
    except ValueError as exc:
        return str(exc)
    named = [point for points, _ in groups for point in points]
    if len(set(named)) != len(named):
        return "names a point in two of its expiries"
    counts = _point_counts(said["points"], batch.device)
    if counts is None or set(counts) != set(named):
        return "its points are not its expiries' points, each once, with a count"
    for number, (points, runs) in enumerate(groups, 1):
        if sum(counts[point] for point in points) != _size(runs):
            return f"its points count other than the {_size(runs)} positions of expiry {number}"
    expanded = [
        Expired(points, _expand(runs), _stated(expiry))
        for (points, runs), expiry in zip(groups, said["expiries"], strict=True)
    ]
    covered = [position for group in expanded for position in group.positions]
    deleted = _expand(positions)
    if len(covered) != len(deleted) or set(covered) != deleted:
        return "its expiries' positions are not its positions, each once"
    return Deleted(batch, deleted, expanded)


def _stated(group: dict[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in group.items() if key not in ("points", "positions")}


def _group_points(said: Any) -> list[str]:
    """The points an expiry group names: a list of names, at least one."""
    if not isinstance(said, list) or not said or not all(isinstance(p, str) for p in said):
        raise ValueError("an expiry names no point, or not a list of point names")
    return said


def _point_counts(said: Any, device: str) -> dict[str, int] | None:
    """A receipt's ``points``, point name → count (each of ``device``, named once, with a
    positive count); None for anything else."""
    if not isinstance(said, list) or not all(
        isinstance(p, dict) and isinstance(p.get("point"), str) for p in said
    ):
        return None
    counts = {p["point"]: p.get("count") for p in said if p.get("device") == device}
    if len(counts) != len(said) or not all(type(n) is int and n > 0 for n in counts.values()):
        return None
    return counts


def runs_within(said: Any, count: int) -> list[tuple[int, int]]:
    """Positions as a receipt writes them, ``[[first, last], ...]``, of a batch of ``count``
    records: each run a pair of integers, ascending, apart from the one before by at least one
    position, the last below ``count``. Raises ValueError for anything else, before any
    position is counted out (the store verifier's ``Runs.parse``, and the batch's bound)."""
    if not isinstance(said, list):
        raise ValueError("its positions are not a list of runs")
    runs: list[tuple[int, int]] = []
    after = -2
    for run in said:
        if (
            not isinstance(run, list)
            or len(run) != 2
            or type(run[0]) is not int
            or type(run[1]) is not int
            or run[0] > run[1]
            or run[0] < after + 2
        ):
            raise ValueError(f"positions: {run!r} is not a run after the ones before it")
        runs.append((run[0], run[1]))
        after = run[1]
    if after >= count:
        raise ValueError(f"positions: {after} is past the last of its batch's {count} records")
    return runs


def _size(runs: list[tuple[int, int]]) -> int:
    return sum(last - first + 1 for first, last in runs)


def _expand(runs: list[tuple[int, int]]) -> set[int]:
    return {p for first, last in runs for p in range(first, last + 1)}


def _unarchived(
    retention: dict[str, Any],
    said: dict[str, Any],
    positions: set[int],
    retained: Retained,
    batch: Batch,
    *,
    seq: int,
) -> str | None:
    """Why records whose plan archives them were deleted without their archive: the receipt
    (entry ``seq``) names an earlier ``retention.archived`` entry of the bundle that holds
    them."""
    if retention.get("on_expiry") != "archive":
        return None
    named = said.get("archive") or {}
    entry = _numbered(retained.entries, named.get("entry"))
    if (
        entry.get("kind") != "retention.archived"
        or entry["seq"] > seq
        or entry["payload"].get("file") != named.get("file")
    ):
        return "which its plan archives, without its archive (an entry of the bundle)"
    written = _numbered(retained.entries, named.get("written"))
    if (
        written.get("kind") != "retention.archive.written"
        or not entry["seq"] < written["seq"] < seq
        or written["payload"] != {"archived": entry["seq"], **_archive_file(named)}
    ):
        return (
            "which its plan archives, naming an archive no earlier retention.archive.written"
            " entry of the bundle says was written with that SHA-256"
        )
    batches = entry["payload"].get("batches")
    if not isinstance(batches, list) or not all(isinstance(b, dict) for b in batches):
        return (
            f"which its plan archives, naming an archive (audit entry {entry['seq']}) whose"
            " batches are not a list of objects"
        )
    held = set()
    for listed in batches:
        if listed.get("batch") == batch.id:
            held |= _expand(runs_within(listed.get("positions"), batch.count))
    if not positions <= held:
        return f"which its archive (audit entry {entry['seq']}) does not hold"
    return None


def _numbered(entries: dict[int, dict[str, Any]], seq: Any) -> dict[str, Any]:
    """The entry a receipt names by its number; empty when it names none (a hostile receipt
    may hold any JSON value there, a list or an object among them)."""
    return entries.get(seq, {}) if type(seq) is int else {}


def _archive_file(named: dict[str, Any]) -> dict[str, Any]:
    """The file and SHA-256 a receipt's ``archive`` names."""
    return {"file": named.get("file"), "sha256": named.get("sha256")}


def _receipt_batch(said: dict[str, Any], retained: Retained) -> Batch | str:
    """The batch a receipt names, as its statement signs it."""
    batch = retained.batches.get(said["batch"])
    if batch is None:
        return f"its batch {said['batch']} is not in the bundle"
    window = (said["window_start"], said["window_end"])
    signed = (batch.device, batch.root.hex(), batch.window, batch.plan)
    if (said["device"], said["root"], window, said["plan"]) != signed:
        return f"names batch {batch.id} otherwise than its statement signs it"
    return batch


def _misstated(
    stated: dict[str, Any], retention: dict[str, Any], policies: list[str], batch: Batch
) -> bool:
    """Whether an expiry group states another calculation than the plan's for one of its
    points (docs/retention.md: rule, bounds, ``on_expiry``, ``expires``, policies): the
    receipt's word is not what its deletion is judged by, yet an auditor reads it."""
    kept_until, due_from = _bounds(retention, batch)
    if due_from is not None and (kept_until is None or kept_until <= due_from):
        rule, expires = "keep_at_most", due_from
    elif kept_until is not None:
        rule, expires = "keep_at_least", kept_until
    else:
        return False  # kept for ever: :func:`_expiry_problem` names it
    planned = {
        "rule": rule,
        "keep_at_least_ms": retention.get("keep_at_least_ms"),
        "keep_at_most_ms": retention.get("keep_at_most_ms"),
        "on_expiry": retention.get("on_expiry") or "delete",
        "expires": _spelled(expires),
        "policies": policies,
    }
    return {key: stated.get(key) for key in planned} != planned


def _expiry_problem(retention: dict[str, Any] | None, batch: Batch, at: datetime) -> str | None:
    """Why the point's records of the batch had not expired at ``at`` (:func:`_bounds`)."""
    kept_until, due_from = _bounds(retention or {}, batch)
    if kept_until is None and due_from is None:
        return "although its plan keeps it for ever"
    if kept_until is not None and at < kept_until:
        return "before its keep_at_least"
    if due_from is not None and at < due_from:
        return "before it expired"
    return None


def _bounds(retention: dict[str, Any], batch: Batch) -> tuple[datetime | None, datetime | None]:
    """Until when the plan's retention keeps a point's records of the batch, and from when
    it lets them go, on the batch's signed window (docs/retention.md: keep_at_least from its
    end, keep_at_most from its start); None for a bound the plan does not set."""
    least, most = retention.get("keep_at_least_ms"), retention.get("keep_at_most_ms")
    start, end = _aware(batch.window[0]), _aware(batch.window[1])
    return (
        None if least is None else end + timedelta(milliseconds=least),
        None if most is None else start + timedelta(milliseconds=most),
    )


def _held(holds: list[Hold], seq: int, batch: Batch, point: str) -> str | None:
    for hold in holds:
        if hold.in_force_at(seq) and hold.covers(batch.device, point, batch.window):
            return f"during hold {hold.id}"
    return None


def _check_complete(
    asked: Asked,
    plans: dict[str, Plan],
    removed: dict[int, set[int]],
    batches: dict[int, Batch],
    verdict: Verdict,
) -> None:
    """A batch the export asks whole (every point its plan collects is one the decision
    allowed, and its signed window lies in the range) has each position exported or removed
    by a receipt that verifies, whether or not it carries proofs: the bundle's own members do
    not decide what it must hold."""
    for batch in batches.values():
        plan = plans.get(batch.plan)
        if batch.proofs is None or plan is None or not asked.whole(batch, plan.points):
            continue
        accounted = batch.hashes.keys() | removed.get(batch.id, set())
        missing = [p for p in range(batch.count) if p not in accounted]
        if missing:
            more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
            verdict.fail(
                f"batch {batch.id}",
                f"position {missing[0]}{more} is neither exported nor removed by a receipt"
                f" ({RETENTION}), though the export asks for every record of it",
            )


def _note_verifier(bundle: Bundle, verdict: Verdict) -> None:
    """Say when the bundle's ``verify.py`` is not this verifier: whoever runs a bundle's own
    copy trusts the bundle's maker with their machine, so this one is what counts."""
    with open(__file__, "rb") as source:
        ours = "sha256:" + hashlib.sha256(source.read()).hexdigest()
    if bundle.has(VERIFIER) and bundle.digest(VERIFIER) != ours:
        verdict.notes.append(
            f"the bundle's {VERIFIER} differs from this verifier ({ours}): this verdict is this"
            " verifier's; do not run a bundle's own copy unless you trust whoever made it"
        )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="verify.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("bundle", metavar="BUNDLE.zip")
    parser.add_argument("--trust", metavar="KEYS.json", help="the public keys you trust")
    parser.add_argument("--format", choices=("text", "json"), default="text")
    args = parser.parse_args(argv)
    try:
        trust = None if args.trust is None else open(args.trust, "rb").read()  # noqa: SIM115
    except OSError as exc:
        print(f"verify.py: cannot read {args.trust}: {exc.strerror}", file=sys.stderr)
        return 2
    wrong = unusable(args.bundle, trust)
    if wrong is not None:
        print(f"verify.py: {wrong}", file=sys.stderr)
        return 2
    verdict = verify(args.bundle, trust)
    if args.format == "json":
        print(json.dumps(verdict.as_json(), indent=2))
    else:
        print("\n".join(verdict.lines()))
    return 0 if verdict.ok else 1


if __name__ == "__main__":
    sys.exit(main())
