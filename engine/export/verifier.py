#!/usr/bin/env python3
"""verify.py: check a Converge audit bundle offline, trusting nothing in it but signatures.

    python verify.py BUNDLE.zip [--trust KEYS.json] [--format text|json]

Needs Python 3.11 and the ``cryptography`` package, nothing else: no database,
no Converge. It checks every member's SHA-256 against the signed manifest,
every record's leaf against its batch (the whole batch's root, or the record's
inclusion proof), every batch statement's signatures by the keys its plan
requires with versions valid when its audit entry says it was stored, every
plan's digest and signature, every audit entry's inclusion under the latest
checkpoint, every checkpoint's signature by the log's key at the time it
states and its consistency with the latest, and that the manifest is signed
by the log's key. The layout and every byte format are in docs/bundle.md.

``KEYS.json`` is the auditor's own list of trusted public keys (the JSON of
``converge keys export-public NAME --format json``, concatenated into one
list). Without ``--trust`` the keys the bundle carries are used, and the
verdict says so: that proves the bundle consistent, not where it came from.

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
import hashlib
import io
import json
import re
import stat
import sys
import zipfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

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
"""Bounds of a bundle read: members, bytes of one member and of all, and how much a member
may expand (a zip bomb expands by thousands)."""

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

    def as_json(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "counts": self.counts,
            "notes": self.notes,
            "problems": [{"item": i, "message": m} for i, m in self.problems],
        }

    def lines(self) -> list[str]:
        out = [f"FAIL {item}: {message}" for item, message in self.problems]
        out += [f"note: {note}" for note in self.notes]
        counted = ", ".join(f"{n:,} {what}" for what, n in self.counts.items())
        out.append(("verified" if self.ok else f"{len(self.problems)} problems") + f": {counted}")
        return out


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
            self.zip = zipfile.ZipFile(path)
        except (OSError, zipfile.BadZipFile) as exc:
            raise Refused(path, f"not a readable zip file ({exc})") from None
        self.members = self._check_members(self.zip.infolist())

    @staticmethod
    def _check_members(infos: list[zipfile.ZipInfo]) -> dict[str, zipfile.ZipInfo]:
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
        return members

    def has(self, name: str) -> bool:
        return name in self.members

    def read(self, name: str) -> bytes:
        """A member's bytes, never more than the zip says it holds."""
        info = self.members[name]
        try:
            with self.zip.open(info) as member:
                data = member.read(info.file_size + 1)
        except (OSError, zipfile.BadZipFile, EOFError) as exc:
            raise Refused(name, f"cannot be read ({exc})") from None
        if len(data) != info.file_size:
            raise Refused(name, "holds more than the zip says")
        return data

    def lines(self, name: str) -> Iterator[bytes]:
        """A member's lines (without their newline), streamed, each bounded."""
        info = self.members[name]
        try:
            with self.zip.open(info) as member:
                for line in member:
                    yield line.rstrip(b"\n")
        except (OSError, zipfile.BadZipFile, EOFError) as exc:
            raise Refused(name, f"cannot be read ({exc})") from None

    def digest(self, name: str) -> str:
        sha = hashlib.sha256()
        info = self.members[name]
        try:
            with self.zip.open(info) as member:
                while chunk := member.read(1 << 20):
                    sha.update(chunk)
        except (OSError, zipfile.BadZipFile, EOFError) as exc:
            raise Refused(name, f"cannot be read ({exc})") from None
        return "sha256:" + sha.hexdigest()


def _check_name(name: str, info: zipfile.ZipInfo) -> None:
    parts = name.split("/")
    if name.startswith("/") or "\\" in name or ".." in parts or ":" in parts[0] or "" in parts:
        raise Refused(name, "a member path outside the bundle (absolute, .. or empty parts)")
    if stat.S_ISLNK(info.external_attr >> 16):
        raise Refused(name, "a symbolic link")
    if info.is_dir():
        raise Refused(name, "a folder entry (a bundle holds files only)")


# --- RFC 9162 Merkle trees ----------------------------------------------------------------


def leaf_hash(data: bytes) -> bytes:
    return hashlib.sha256(b"\x00" + data).digest()


def _node(left: bytes, right: bytes) -> bytes:
    return hashlib.sha256(b"\x01" + left + right).digest()


def tree_root(hashes: Sequence[bytes]) -> bytes:
    """The RFC 9162 root of leaf hashes (an odd last node rises unchanged)."""
    level = list(hashes)
    if not level:
        return hashlib.sha256(b"").digest()
    while len(level) > 1:
        nxt = [_node(level[i], level[i + 1]) for i in range(0, len(level) - 1, 2)]
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

    def note_key_id(self, name: str) -> bytes:
        """The signed-note key ID of this key under ``name`` (C2SP signed-note)."""
        return hashlib.sha256(name.encode() + b"\n\x01" + self.raw).digest()[:4]


def read_keys(data: bytes, source: str) -> dict[str, list[KeyVersion]]:
    """The key versions of a trust file: a JSON list of ``keys export-public --format json``
    objects (``name``, ``version``, ``public_key`` base64, ``not_before``, ``not_after``)."""
    try:
        listed = json.loads(data)
        keys: dict[str, list[KeyVersion]] = {}
        for item in listed:
            raw = base64.b64decode(item["public_key"], validate=True)
            until = item["not_after"]
            version = KeyVersion(
                str(item["name"]),
                int(item["version"]),
                Ed25519PublicKey.from_public_bytes(raw),
                raw,
                _aware(item["not_before"]),
                None if until is None else _aware(until),
            )
            keys.setdefault(version.name, []).append(version)
    except (ValueError, KeyError, TypeError) as exc:
        raise Refused(source, f"not a list of public keys ({exc})") from None
    return keys


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


def verify(path: str, trust: bytes | None = None) -> Verdict:
    """Check the bundle at ``path`` against ``trust`` (a trust file's bytes), else its own keys."""
    verdict = Verdict()
    try:
        bundle = Bundle(path)
        _verify(bundle, trust, verdict)
    except Refused as exc:
        verdict.fail(exc.item, f"refused: {exc.message}")
    return verdict


def _verify(bundle: Bundle, trust: bytes | None, verdict: Verdict) -> None:
    for name in (MANIFEST, SIGNATURE, KEYS):
        if not bundle.has(name):
            raise Refused(name, "missing: this is not a Converge bundle")
    manifest = _json(bundle.read(MANIFEST), MANIFEST)
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise Refused(MANIFEST, f"not a {FORMAT} manifest")
    keys = read_keys(trust if trust is not None else bundle.read(KEYS), "trust")
    if trust is None:
        verdict.notes.append(
            "the keys came from the bundle itself (keys.json): this proves the"
            " bundle consistent, not who made it; pass --trust KEYS.json"
        )
    log = LogKey(str(manifest.get("audit_key")), str(manifest.get("origin")), keys)
    _check_manifest(bundle, manifest, log, verdict)
    latest = _check_checkpoints(bundle, log, verdict)
    entries = _check_entries(bundle, latest, verdict)
    plans = _check_plans(bundle, manifest, keys, entries, verdict)
    batches = _check_batches(bundle, manifest, Context(plans, entries, keys), verdict)
    _check_records(bundle, batches, verdict)
    _check_export(manifest, entries, verdict)
    _check_retention(bundle, verdict)


def _json(data: bytes, item: str) -> Any:
    try:
        return json.loads(data)
    except ValueError as exc:
        raise Refused(item, f"not JSON ({exc})") from None


@dataclass(frozen=True)
class LogKey:
    """The log's key as the manifest names it, and the trusted versions of it."""

    name: str
    origin: str
    keys: dict[str, list[KeyVersion]]

    @property
    def versions(self) -> list[KeyVersion]:
        return self.keys.get(self.name, [])


def _check_manifest(
    bundle: Bundle, manifest: dict[str, Any], log: LogKey, verdict: Verdict
) -> None:
    """The manifest is signed by the log's key; every member's digest is the one it lists."""
    if not log.versions:
        verdict.fail(MANIFEST, f"its signer, the log's key {log.name}, is not trusted")
    signed = signed_by(bundle.read(SIGNATURE).decode(errors="replace"), log.origin, log.versions)
    want = f"{FORMAT}\n{log.origin}\nsha256:{hashlib.sha256(bundle.read(MANIFEST)).hexdigest()}\n"
    if signed is None or not signed[0].startswith(want):
        verdict.fail(SIGNATURE, f"not a signature of this manifest by {log.name}")
    elif (at := _signed_time(signed[0])) is None or not signed[1].valid_at(at):
        verdict.fail(SIGNATURE, f"signed by {log.name} v{signed[1].version} outside its validity")
    listed = manifest.get("files")
    if not isinstance(listed, dict):
        raise Refused(MANIFEST, "lists no files")
    for name in sorted(set(bundle.members) - {MANIFEST, SIGNATURE} - set(listed)):
        verdict.fail(name, "a member the manifest does not list")
    for name, digest in sorted(listed.items()):
        if not bundle.has(name):
            verdict.fail(name, "listed in the manifest but missing")
        elif bundle.digest(name) != digest:
            verdict.fail(name, "changed: its SHA-256 is not the one the manifest lists")


def _signed_time(text: str) -> datetime | None:
    found = [line for line in text.split("\n") if _TIME.fullmatch(line)]
    return datetime.fromtimestamp(int(found[0][5:]), UTC) if len(found) == 1 else None


@dataclass(frozen=True)
class Checkpoint:
    size: int
    root: bytes
    at: datetime


def _check_checkpoints(bundle: Bundle, log: LogKey, verdict: Verdict) -> Checkpoint | None:
    """Every checkpoint by the log's key, valid when it says it signed; each consistent with
    the latest (and signed no later); the latest returned."""
    notes = _json(bundle.read(CHECKPOINTS), CHECKPOINTS) if bundle.has(CHECKPOINTS) else []
    good: list[Checkpoint] = []
    for index, note in enumerate(notes):
        item = f"checkpoint {index} ({CHECKPOINTS})"
        found = _checkpoint(str(note), log)
        if isinstance(found, str):
            verdict.fail(item, found)
        else:
            good.append(found)
    verdict.counts["checkpoints"] = len(good)
    if not good:
        verdict.fail(
            CHECKPOINTS, "no checkpoint signed by the log's key: nothing signs the entries"
        )
        return None
    latest = max(good, key=lambda c: c.size)
    proofs = _json(bundle.read(CONSISTENCY), CONSISTENCY) if bundle.has(CONSISTENCY) else []
    _check_consistency(good, latest, proofs, verdict)
    return latest


def _checkpoint(note: str, log: LogKey) -> Checkpoint | str:
    signed = signed_by(note, log.origin, log.versions)
    if signed is None:
        return f"not signed by the log's key {log.name} under origin {log.origin}"
    text, version = signed
    lines = text.split("\n")
    at = _signed_time(text)
    if len(lines) < 4 or lines[0] != log.origin or not lines[1].isdigit():
        return "not a checkpoint of this log"
    if at is None or not version.valid_at(at):
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
    bundle: Bundle, latest: Checkpoint | None, verdict: Verdict
) -> dict[int, dict[str, Any]]:
    """Every audit entry, in the log under the latest checkpoint (its tlog-proof); by seq."""
    entries: dict[int, dict[str, Any]] = {}
    for number, line in enumerate(bundle.lines(ENTRIES) if bundle.has(ENTRIES) else (), 1):
        item = f"{ENTRIES}:{number}"
        found = _entry(line, latest)
        if isinstance(found, str):
            verdict.fail(item, found)
            continue
        entries[found["seq"]] = found
    verdict.counts["audit entries"] = len(entries)
    return entries


_ENTRY = re.compile(rb'\{"seq":(0|[1-9][0-9]*),"proof":("(?:[^"\\]|\\.)*"),"entry":(\{.*\})\}')


def _entry(line: bytes, latest: Checkpoint | None) -> dict[str, Any] | str:
    """A line ``{"seq":N,"proof":"<tlog-proof>","entry":<entry bytes>}``, checked: the entry
    is entry N, in the log under the latest checkpoint."""
    parsed = _entry_line(line)
    if isinstance(parsed, str):
        return parsed
    seq, raw, proof, entry = parsed
    if latest is None:
        return "no checkpoint to prove it against"
    path = _tlog_proof(proof, seq)
    if path is None:
        return f"its tlog-proof is malformed or not for index {seq}"
    if inclusion_root(leaf_hash(raw), seq, latest.size, path) != latest.root:
        return f"not in the log under the latest checkpoint (size {latest.size})"
    return entry


def _entry_line(line: bytes) -> tuple[int, bytes, str, dict[str, Any]] | str:
    match = _ENTRY.fullmatch(line)
    if match is None:
        return "not an entry line"
    seq, raw = int(match[1]), match[3]
    try:
        proof, entry = json.loads(match[2]), json.loads(raw)
    except ValueError:
        return "not JSON"
    if not isinstance(entry, dict) or entry.get("seq") != seq:
        return f"the entry is not entry {seq}"
    return seq, raw, str(proof), entry


def _tlog_proof(text: str, index: int) -> list[bytes] | None:
    """The hashes of a C2SP tlog-proof@v1 for ``index`` (its checkpoint is the bundle's)."""
    lines = text.split("\n")
    if lines[:2] != ["c2sp.org/tlog-proof@v1", f"index {index}"]:
        return None
    hashes = []
    for line in lines[2:]:
        if not line:
            break
        try:
            hashes.append(base64.b64decode(line, validate=True))
        except ValueError:
            return None
    return hashes if all(len(h) == 32 for h in hashes) else None


@dataclass(frozen=True)
class Plan:
    digest: str
    device: str
    required: tuple[str, ...]
    waivers: frozenset[str]
    """The signing waivers an unsigned batch of the plan names (each as :func:`_canon`)."""


def _check_plans(
    bundle: Bundle,
    manifest: dict[str, Any],
    keys: dict[str, list[KeyVersion]],
    entries: dict[int, dict[str, Any]],
    verdict: Verdict,
) -> dict[str, Plan]:
    """Every plan: its bytes hash to its digest, it was deployed (an entry), its signature (if
    any) is by a trusted key valid then and names it."""
    plans: dict[str, Plan] = {}
    deployed = {
        e["payload"].get("digest") for e in entries.values() if e.get("kind") == "plan.deployed"
    }
    for digest in manifest.get("plans", []):
        name = f"plans/{digest.removeprefix('sha256:')}.json"
        if not bundle.has(name):
            verdict.fail(name, "missing")
            continue
        found = _plan(bundle.read(name), digest)
        if isinstance(found, str):
            verdict.fail(name, found)
            continue
        if digest not in deployed:
            verdict.fail(name, "no plan.deployed entry of the bundle names it")
        signature = name.removesuffix(".json") + ".sig"
        if bundle.has(signature):
            _check_plan_signature(bundle.read(signature), found, keys, signature, verdict)
        plans[digest] = found
    verdict.counts["plans"] = len(plans)
    return plans


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
    return Plan(digest, device, tuple(required), frozenset() if required else frozenset(waivers))


def _canon(value: Any) -> str:
    """A JSON value's text with sorted keys: to compare waivers whatever their order."""
    return json.dumps(value, sort_keys=True, ensure_ascii=False, separators=(",", ":"))


def _check_plan_signature(
    note: bytes, plan: Plan, keys: dict[str, list[KeyVersion]], item: str, verdict: Verdict
) -> None:
    split = split_note(note.decode(errors="replace"))
    names = sorted({name for name, _, _ in split[1]} & set(keys)) if split else []
    signed = next((s for n in names if (s := signed_by(note.decode(), n, keys[n]))), None)
    if signed is None:
        verdict.fail(item, "not signed by a trusted key")
        return
    lines = signed[0].split("\n")
    if len(lines) < 5 or lines[1:3] != [plan.device, plan.digest]:
        verdict.fail(item, "signs another plan")
        return
    try:
        at = datetime.strptime(lines[3], "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)
    except ValueError:
        verdict.fail(item, "states no signing time")
        return
    if not signed[1].valid_at(at):
        verdict.fail(item, f"signed by {signed[1].name} v{signed[1].version} outside its validity")


@dataclass
class Batch:
    """A batch as its statement says, and how its records are proven."""

    id: int
    device: str
    count: int
    root: bytes
    window: tuple[str, str]
    proofs: dict[int, list[bytes]] | None
    """Each exported record's inclusion proof; None when every record of the batch is exported."""
    hashes: dict[int, bytes] = field(default_factory=dict)


def _check_batches(
    bundle: Bundle, manifest: dict[str, Any], ctx: Context, verdict: Verdict
) -> dict[int, Batch]:
    batches: dict[int, Batch] = {}
    for batch_id in manifest.get("batches", []):
        name = f"batches/{batch_id}.json"
        if not bundle.has(name):
            verdict.fail(name, "missing")
            continue
        found = _batch(_json(bundle.read(name), name), ctx)
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
        return "its statement is not a converge.batch/v1 statement"
    problem = _batch_problem(head, statement, said, ctx)
    if problem:
        return problem
    proofs = said.get("proofs")
    parsed = None if proofs is None else {int(k): _hashes(v) or [] for k, v in proofs.items()}
    window = (str(head["window_start"]), str(head["window_end"]))
    root = bytes.fromhex(head["root"])
    return Batch(int(said["id"]), str(head["device"]), int(head["count"]), root, window, parsed)


def _statement(data: bytes) -> dict[str, Any] | None:
    try:
        head = json.loads(data)
        bytes.fromhex(head["root"])
        int(head["count"])
    except (ValueError, KeyError, TypeError):
        return None
    return head if head.get("format") == "converge.batch/v1" else None


@dataclass(frozen=True)
class Context:
    """What a batch is checked against: the bundle's plans, entries and trusted keys."""

    plans: dict[str, Plan]
    entries: dict[int, dict[str, Any]]
    keys: dict[str, list[KeyVersion]]


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
    if payload.get("keys") != list(plan.required):
        return f"its entry says keys {payload.get('keys')}, its plan requires {list(plan.required)}"
    if {_canon(w) for w in payload.get("waiver", [])} != plan.waivers:
        return "its waiver is not the one its plan records"
    signatures = said.get("signatures", {})
    return _check_signatures(statement, signatures, plan, ctx.keys, entry["time"])


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


def _check_records(bundle: Bundle, batches: dict[int, Batch], verdict: Verdict) -> None:
    """Every record: of its batch (whole batches rebuild their root, others prove each record),
    once; and the CSV is exactly these records."""
    rows = bundle.lines(RECORDS_CSV) if bundle.has(RECORDS_CSV) else iter(())
    header = next(rows, b"").decode()
    if header != ",".join(CSV_COLUMNS):
        verdict.fail(RECORDS_CSV, "its header is not the documented one")
    count = 0
    for number, line in enumerate(bundle.lines(RECORDS) if bundle.has(RECORDS) else (), 1):
        count += 1
        problem = _record(line, batches)
        if problem:
            verdict.fail(f"{RECORDS}:{number}", problem)
        elif next(rows, None) != _csv_line(line):
            verdict.fail(f"{RECORDS_CSV}:{number + 1}", f"is not record {number} of {RECORDS}")
    if next(rows, None) is not None:
        verdict.fail(RECORDS_CSV, f"holds more rows than the {count} records")
    for batch in batches.values():
        if batch.proofs is None:
            positions = sorted(batch.hashes)
            if positions != list(range(batch.count)):
                verdict.fail(
                    f"batch {batch.id}", f"holds {len(positions)} of its {batch.count} records"
                )
            elif tree_root([batch.hashes[p] for p in positions]) != batch.root:
                verdict.fail(f"batch {batch.id}", "its records do not hash to its signed root")
    verdict.counts["records"] = count


def _record(line: bytes, batches: dict[int, Batch]) -> str | None:
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
    if (b'"device":' + json.dumps(batch.device, ensure_ascii=False).encode() + b",") not in leaf:
        return f"of another device than batch {batch.id}'s"
    return None


def csv_row(leaf: dict[str, Any], batch: int, position: int) -> list[str]:
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


def csv_text(row: list[str]) -> bytes:
    out = io.StringIO()
    csv.writer(out, lineterminator="\n").writerow(row)
    return out.getvalue().encode()


def _csv_line(line: bytes) -> bytes:
    match = _LINE.fullmatch(line)
    assert match is not None
    return csv_text(csv_row(json.loads(match[3]), int(match[1]), int(match[2]))).rstrip(b"\n")


def _check_export(
    manifest: dict[str, Any], entries: dict[int, dict[str, Any]], verdict: Verdict
) -> None:
    """The export itself is an allowed decision of the log, by the principal the manifest names."""
    decision = manifest.get("decision")
    found = [
        e
        for e in entries.values()
        if e.get("kind") == "access.decision" and e["payload"].get("decision") == decision
    ]
    if not found:
        verdict.fail(MANIFEST, f"its export decision {decision} is not an entry of the bundle")
        return
    payload = found[0]["payload"]
    if payload.get("action") != "export" or payload.get("outcome") not in ("allow", "partial"):
        verdict.fail(MANIFEST, f"decision {decision} did not allow this export")
    if payload.get("principal") != manifest.get("principal"):
        verdict.fail(MANIFEST, f"decision {decision} was another principal's")


def _check_retention(bundle: Bundle, verdict: Verdict) -> None:
    """Deletion receipts and legal holds of the range (docs/bundle.md reserves them)."""
    if not bundle.has(RETENTION):
        return
    said = _json(bundle.read(RETENTION), RETENTION)
    if not isinstance(said, dict) or set(said) != {"receipts", "holds"}:
        verdict.fail(RETENTION, "not a retention member (receipts and holds)")


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
    verdict = verify(args.bundle, trust)
    if args.format == "json":
        print(json.dumps(verdict.as_json(), indent=2))
    else:
        print("\n".join(verdict.lines()))
    return 0 if verdict.ok else 1


if __name__ == "__main__":
    sys.exit(main())
