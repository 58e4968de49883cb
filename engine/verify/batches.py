"""Batches: each row agrees with its signed statement and its audit entry, is signed by the
keys its plan names, and each device's batches form one chain."""

from __future__ import annotations

import hashlib
import re
from collections import defaultdict
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, Row

from engine import audit
from engine.canonical import canonical_json, read_json
from engine.keys import SignatureRejected, verify_signature
from engine.plans.body import PlanBody
from engine.sign.batch import ZERO_ROOT, MalformedStatement, Statement
from engine.store import reads
from engine.verify.log import Log
from engine.verify.report import Report
from engine.verify.trust import BadTime, Trust, instant

_HEX64 = re.compile("[0-9a-fA-F]{64}")


@dataclass
class BatchInfo:
    """What a batch's signed statement says, for its chain and its records to be checked by."""

    id: int
    device: str
    label: str
    count: int
    root: bytes
    previous_root: bytes
    window_start: str
    window_end: str
    plan_digest: str
    point_map: bytes | None
    """Its stored point map, when it hashes to the one its statement signs (else None, and
    named): which point each position was, after retention deleted the record there."""


def check_batches(
    conn: Connection,
    log: Log,
    plans: Mapping[str, PlanBody],
    trust: Trust,
    report: Report,
    *,
    only: frozenset[int] | None = None,
) -> dict[int, BatchInfo]:
    """The stored batches whose statement parses, by id; every ``batch.stored`` entry has one.
    Every check of every batch, but the Ed25519 verification of its signatures, which is made
    of the batches ``only`` alone when given (a retention run's check: the batches it deletes
    from, :mod:`engine.retention.run`)."""
    signatures = reads.batch_signatures(conn)
    batches: dict[int, BatchInfo] = {}
    recorded: set[int] = set()
    for row in reads.batches(conn):
        label = f"batch {row.id} ({row.device} {row.window_start})"
        info = _check_batch(
            row,
            label,
            log,
            plans,
            signatures=signatures.pop(row.id, {}),
            trust=trust,
            report=report,
            verify=only is None or row.id in only,
        )
        recorded.add(row.audit_seq)
        if info is not None:
            batches[row.id] = info
    for batch_id in signatures:
        report.add(f"batch {batch_id}", "signatures of a batch that is not stored")
    _check_recorded(recorded, log, report)
    report.counts["batches"] = len(batches)
    return batches


def _check_recorded(recorded: set[int], log: Log, report: Report) -> None:
    """Every ``batch.stored`` entry is the audit entry of a stored batch."""
    for entry in log.of_kind("batch.stored"):
        if entry.seq not in recorded:
            p = entry.payload
            report.add(
                f"batch of {p.get('device')} {p.get('window_start')}",
                f"deleted: audit entry {entry.seq} records it (root {p.get('root')}), "
                "the store has no such batch",
            )


def _check_batch(
    row: Row[Any],
    label: str,
    log: Log,
    plans: Mapping[str, PlanBody],
    *,
    signatures: dict[str, bytes],
    trust: Trust,
    report: Report,
    verify: bool,
) -> BatchInfo | None:
    """One batch row, its statement parsed: None if it does not parse. ``verify``: its
    signatures are verified, not only looked for."""
    try:
        head = Statement.parse(bytes(row.statement))
    except MalformedStatement as exc:
        report.add(label, f"statement: {exc}")
        return None
    if _columns(row) != _said(head):
        report.add(label, "its columns disagree with its signed statement")
    keys = _keys(row.keys)
    if row.keys != canonical_json(list(keys)).decode():
        report.add(label, "its keys column is not the canonical JSON of its keys")
    entry = _check_entry(label, row, head, keys, log=log, report=report)
    required = _required(label, head, row, plans, report)
    plan = plans.get(head.plan_digest)
    _check_signatures(
        label,
        bytes(row.statement),
        required,
        signatures=signatures,
        trust=trust.of_site(plan.site) if plan else trust,
        signed_at=entry.time if entry and verify else None,
        report=report,
    )
    return BatchInfo(
        row.id,
        head.device,
        label,
        head.count,
        head.root,
        head.previous_root,
        head.window_start,
        head.window_end,
        head.plan_digest,
        _point_map(label, row.point_map, head, report),
    )


def _point_map(label: str, stored: Any, head: Statement, report: Report) -> bytes | None:
    """The batch's stored point map, if it is the one its statement signs (by its SHA-256);
    else None, and the batch is named."""
    if stored is None:
        report.add(label, "the store keeps no point map of it (its statement signs one)")
        return None
    mapped = reads.as_bytes(stored)
    if hashlib.sha256(mapped).digest() != head.point_map:
        report.add(label, "its stored point map is not the one its statement signs")
        return None
    return mapped


def _columns(row: Row[Any]) -> tuple[object, ...]:
    """What a batch row's columns say of it."""
    return (
        row.device,
        row.window_start,
        row.window_end,
        row.count,
        bytes(row.root),
        bytes(row.previous_root),
        row.plan_digest,
    )


def _said(head: Statement) -> tuple[object, ...]:
    """What a signed statement says, in the order of :func:`_columns`."""
    return (
        head.device,
        head.window_start,
        head.window_end,
        head.count,
        head.root,
        head.previous_root,
        head.plan_digest,
    )


def _check_entry(
    label: str,
    row: Row[Any],
    head: Statement,
    keys: tuple[str, ...],
    *,
    log: Log,
    report: Report,
) -> audit.AuditEntry | None:
    """The entry at the row's ``audit_seq``, which must be the ``batch.stored`` entry of exactly
    this batch; its time is when the batch was signed."""
    entry = log.entries.get(row.audit_seq)
    if entry is None or entry.kind != "batch.stored":
        report.add(label, f"audit entry {row.audit_seq} does not record it")
    elif entry.payload != _payload(head, keys, row.waiver):
        report.add(label, f"differs from what audit entry {entry.seq} records of it")
    return entry


def _keys(text: str) -> tuple[str, ...]:
    try:
        keys = read_json(text)
    except ValueError:
        return ("<not JSON>",)
    return tuple(keys) if isinstance(keys, list) else ("<not a list>",)


def _json(text: str) -> Any:
    """A stored JSON column's value; the text itself when it is not JSON."""
    try:
        return read_json(text)
    except ValueError:
        return text


def _payload(head: Statement, keys: tuple[str, ...], waiver: str) -> dict[str, Any]:
    """The payload of the ``batch.stored`` entry of a batch with this statement, keys and waiver."""
    return {**head.members(), "keys": list(keys), "waiver": _json(waiver)}


def _required(
    label: str, head: Statement, row: Row[Any], plans: Mapping[str, PlanBody], report: Report
) -> tuple[str, ...]:
    """The keys that must sign the batch: its plan's (the union over the plan's points that
    require signing), never what the batch row says. A batch whose plan is not stored must
    carry the keys its row names, and fails anyway."""
    plan = plans.get(head.plan_digest)
    keys = _keys(row.keys)
    if plan is None:
        report.add(label, f"its plan {head.plan_digest} is not in the store")
        return keys
    if plan.device.id != head.device:  # another device's plan may ask for fewer keys
        report.add(label, f"its plan {head.plan_digest} is of device {plan.device.id}")
    required = plan.required_keys
    if keys != required:
        report.add(label, f"its keys column says {list(keys)}, its plan requires {list(required)}")
    waiver = list(plan.signing_waivers) if not required else []
    if _json(row.waiver) != waiver:
        report.add(label, "its waiver is not the one its plan records")
    return required


def _check_signatures(
    label: str,
    statement: bytes,
    keys: tuple[str, ...],
    *,
    signatures: dict[str, bytes],
    trust: Trust,
    signed_at: str | None,
    report: Report,
) -> None:
    """Each key the batch requires signed its statement, by a version valid at ``signed_at``
    (None: the signatures are looked for, not verified)."""
    for key in keys:
        signature = signatures.pop(key, None)
        if signature is None:
            report.add(label, f"signature of key {key!r} is missing")
        elif key not in trust.keys:
            report.add(label, f"key {key!r} is not among the trusted keys")
        elif signed_at is not None:
            try:
                verify_signature(trust.keys[key], statement, signature, instant(signed_at))
            except (SignatureRejected, BadTime) as exc:
                report.add(label, f"signature of key {key!r} does not verify ({exc})")
    for key in signatures:
        report.add(label, f"signature of key {key!r}, which the batch does not require")


def check_chains(batches: Mapping[int, BatchInfo], log: Log, report: Report) -> None:
    """Each device's batches form one chain from the zero root; dropped batches excused."""
    dropped = _dropped(log)
    by_device: dict[str, list[BatchInfo]] = defaultdict(list)
    for info in batches.values():
        by_device[info.device].append(info)
    for device, device_batches in by_device.items():
        excused = {root for d, root in dropped if d == device}
        _check_chain(device_batches, excused, report)


def _dropped(log: Log) -> set[tuple[str, bytes]]:
    """The device and root of each ``batch.dropped`` entry that names them as a batch does
    (a hostile entry may hold any JSON value there: it excuses nothing)."""
    found = set()
    for entry in log.of_kind("batch.dropped"):
        device, root = entry.payload.get("device"), entry.payload.get("root")
        if isinstance(device, str) and isinstance(root, str) and _HEX64.fullmatch(root):
            found.add((device, bytes.fromhex(root)))
    return found


def _check_chain(device_batches: list[BatchInfo], excused: set[bytes], report: Report) -> None:
    """One device's batches: each follows a stored (or excused) batch, and no two the same."""
    roots = {b.root for b in device_batches} | excused
    following: dict[bytes, BatchInfo] = {}
    for b in sorted(device_batches, key=lambda b: b.id):
        if b.previous_root != ZERO_ROOT and b.previous_root not in roots:
            report.add(
                b.label,
                f"chain broken: the batch before it (root "
                f"{b.previous_root.hex()[:16]}…) is not stored",
            )
        other = following.setdefault(b.previous_root, b)
        if other is not b:
            report.add(b.label, f"chain forked: {other.label} follows the same batch")
