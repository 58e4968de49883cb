"""Retention: lawful deletions told apart from tampering, holds, and data kept too long.

Every ``retention.deleted`` entry (a deletion receipt) must name a stored
batch exactly as its statement signs it, leave it as many records as it says
(``remaining``), and the positions and leaf hashes it removed must be the
store's erasure of it; the records check (:mod:`engine.verify.records`) then
rebuilds the root of each batch that still holds records from them and the
leaf hashes its receipts keep. The receipt that removes a batch's last records
keeps no leaf hashes: nothing is left whose inclusion they would prove, and
the run re-hashed those records against the signed root before deleting them. A receipt is
lawful when, for every point it deleted, the batch's *plan* expires that
point's records (:mod:`engine.plans.expiry`, on the batch's signed window) no
later than the receipt's time, no hold in force when it was written covers
them, and its time is no later than the checkpoint that signs it. Holds are
rebuilt from their ``hold.placed`` and ``hold.released`` entries, each of
which must name an earlier ``access.decision`` that allowed its actor a hold
on the hold's scope as placed (a release none allowed leaves the hold in
force), and the store's hold rows must say the same. An archiving receipt
names the ``retention.archive.written`` entry that signed its archive's
SHA-256 once the file existed.

What fails is named: a receipt that names no stored batch, deletes before a
``keep_at_least``, before the expiry, during a hold, or keeps leaf hashes the
batch does not hash to; a record missing without a receipt (records check).
Lawful deletions are listed apart (:attr:`Report.deletions`), and records kept
past their ``keep_at_most`` with no hold are findings, not failures
(:attr:`Report.findings`); held ones are notes.
"""

from __future__ import annotations

import base64
from collections import Counter, defaultdict
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from fnmatch import fnmatchcase
from itertools import chain, repeat
from typing import Any

from sqlalchemy import Connection

from engine.audit import AuditEntry
from engine.canonical import read_json
from engine.durations import format_duration
from engine.plans.body import PlanBody
from engine.plans.expiry import Expiry, expiry
from engine.sign.leaf import instant as spell
from engine.sign.leaf import point_of
from engine.sign.merkle import MerkleLog
from engine.store import data
from engine.store import retention as stored
from engine.store.retention import Hold, Scope, split_hashes
from engine.verify.batches import BatchInfo
from engine.verify.checkpoints import Signed
from engine.verify.log import Log
from engine.verify.report import Problem, Report
from engine.verify.trust import BadTime, instant


@dataclass(frozen=True)
class Known:
    """What the earlier checks established: the log, the plans and batches that verify, and
    the checkpoints that hold."""

    log: Log
    plans: Mapping[str, PlanBody]
    batches: Mapping[int, BatchInfo]
    signed: Sequence[Signed]


@dataclass(frozen=True)
class Runs:
    """Positions as a receipt and its erasure write them, ``[[first, last], ...]``
    (:func:`engine.store.retention.runs`), kept as runs: a batch deleted whole is one pair,
    not its thousands of positions, and two lists of runs are equal exactly when their
    positions are (runs are ascending, and apart by at least one position)."""

    spans: tuple[tuple[int, int], ...]

    @classmethod
    def parse(cls, said: Any) -> Runs:
        """The runs :func:`~engine.store.retention.positions_of` reads; raises the same
        ValueError for anything else (overlapping, unsorted or reversed runs included)."""
        if not isinstance(said, list):
            raise ValueError("positions are not a list of runs")
        spans: list[tuple[int, int]] = []
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
            spans.append((run[0], run[1]))
            after = run[1]
        return cls(tuple(spans))

    @classmethod
    def union(cls, parts: Sequence[Runs]) -> Runs:
        """The positions of all ``parts``, as runs; raises ValueError where two of them share
        a position. Computed on the runs (a run may name 2**53 positions)."""
        merged: list[tuple[int, int]] = []
        for first, last in sorted(span for part in parts for span in part.spans):
            if merged and first <= merged[-1][1]:
                raise ValueError(f"position {first} is in two of them")
            if merged and first == merged[-1][1] + 1:
                merged[-1] = (merged[-1][0], last)
            else:
                merged.append((first, last))
        return cls(tuple(merged))

    def within(self, other: Runs) -> bool:
        """Whether every position of these runs is one of ``other``'s."""
        spans = iter(other.spans)
        around = next(spans, None)
        for first, last in self.spans:
            while around is not None and around[1] < first:
                around = next(spans, None)
            if around is None or not around[0] <= first <= last <= around[1]:
                return False
        return True

    def __len__(self) -> int:
        return sum(last - first + 1 for first, last in self.spans)

    def __iter__(self) -> Iterator[int]:
        return chain.from_iterable(range(first, last + 1) for first, last in self.spans)

    @property
    def last(self) -> int:
        """The highest position (of runs that hold one)."""
        return self.spans[-1][1]


@dataclass
class Erased:
    """What receipts removed, by batch (the positions, the leaf hashes they keep, and the
    receipts), and the holds as the log states them."""

    positions: dict[int, Runs | set[int]] = field(default_factory=dict)
    """The positions removed: as its one receipt lists them, or a set (several receipts)."""
    hashes: dict[int, dict[int, bytes]] = field(default_factory=dict)
    """The leaf hash of each removed position whose receipt keeps it."""
    receipts: dict[int, list[int]] = field(default_factory=lambda: defaultdict(list))
    whole: set[int] = field(default_factory=set)
    """Batches whose receipts removed every record, the last saying none remain: nothing is
    left whose inclusion their root would prove, so it is not rebuilt."""
    holds: list[Hold] = field(default_factory=list)


@dataclass(frozen=True)
class Receipt:
    """A ``retention.deleted`` entry's payload, parsed."""

    batch: int
    device: str
    root: bytes
    plan: str
    window_start: str
    window_end: str
    positions: Runs
    hashes: list[bytes]
    """The leaf hash of each position; none when it removed its batch's last records."""
    remaining: int
    groups: list[tuple[list[str], Runs, Mapping[str, Any]]]
    """(points, positions, the expiry calculation) of each expiry that deleted records."""
    run: str
    archive: Mapping[str, Any] | None
    """The archive it names (file, sha256, entry), if its records were archived."""


def check_retention(conn: Connection, known: Known, report: Report) -> Erased:
    """Check every receipt and hold; what the receipts removed, for the records check."""
    erased = Erased(holds=check_holds(conn, known.log, report))
    rows = {receipt: (b, p, h) for b, receipt, p, h in stored.erasures(conn)}
    lawful: dict[tuple[str, str], list[tuple[AuditEntry, Receipt]]] = defaultdict(list)
    classes: dict[str, Mapping[str, int]] = {}
    maps: dict[tuple[bytes | None, int], _Mapped | None] = {}
    for entry in known.log.of_kind("retention.deleted"):
        label = f"receipt (audit entry {entry.seq})"
        try:
            receipt = _parse(entry.payload)
        except (ValueError, TypeError, KeyError) as exc:
            report.add(label, f"not a deletion receipt ({exc})")
            continue
        info = known.batches.get(receipt.batch)
        if not _names(label, receipt, info, report):
            continue
        assert info is not None
        plan = known.plans.get(info.plan_digest)
        if info.plan_digest not in classes:
            classes[info.plan_digest] = plan.retention_classes if plan is not None else {}
        context = _Context(entry, receipt, info, erased.holds, report, known.log)
        _check_erasure(context, rows.pop(entry.seq, None))
        if not _erase(context, erased):
            continue
        lawful_points = _mapped(context, maps) & _lawful(context, plan, classes[info.plan_digest])
        if lawful_points & _in_time(context, known.signed):
            lawful[receipt.run, receipt.device].append((entry, receipt))
    for seq, (batch_id, _, _) in rows.items():
        report.add(
            f"erasure of batch {batch_id}",
            f"names receipt audit entry {seq}, which is no deletion receipt: records"
            " deleted without one",
        )
    report.deletions.extend(_summaries(lawful))
    report.counts["deletion receipts"] = sum(len(r) for r in erased.receipts.values())
    return erased


# --- receipts --------------------------------------------------------------------------


def _parse(said: Mapping[str, Any]) -> Receipt:
    """Raises ValueError, TypeError or KeyError for anything but a receipt's payload."""
    positions = Runs.parse(said["positions"])
    hashes = split_hashes(base64.b64decode(said["leaf_hashes"], validate=True))
    remaining = said["remaining"]
    if type(remaining) is not int or remaining < 0:
        raise ValueError("its remaining is not a count")
    if len(hashes) != (len(positions) if remaining else 0) or said["count"] != len(positions):
        raise ValueError("its count, positions, remaining and leaf hashes disagree")
    groups = [_group(group) for group in said["expiries"]]
    if Runs.union([runs for _, runs, _ in groups]) != positions:
        raise ValueError("its expiries' positions are not its positions")
    _check_points(said["points"], said["device"], groups)
    run = said["run"]["id"]
    texts = (said["device"], said["plan"], said["window_start"], said["window_end"], run)
    if not all(isinstance(t, str) for t in texts) or type(said["batch"]) is not int:
        raise ValueError("its batch, device, plan, window or run is not what a receipt says")
    archive = said["archive"]
    if archive is not None and not isinstance(archive, dict):
        raise ValueError("its archive is not an object")
    return Receipt(
        said["batch"],
        said["device"],
        bytes.fromhex(said["root"]),
        said["plan"],
        said["window_start"],
        said["window_end"],
        positions,
        hashes,
        remaining,
        groups,
        run,
        archive,
    )


def _group(said: Mapping[str, Any]) -> tuple[list[str], Runs, Mapping[str, Any]]:
    """An expiry group: the points it names (at least one, each once), its positions."""
    points = said["points"]
    if (
        not isinstance(points, list)
        or not points
        or not all(map(isinstance, points, repeat(str)))
        or len(set(points)) != len(points)
    ):
        raise ValueError("an expiry's points are not a list of names, each once")
    return points, Runs.parse(said["positions"]), said


def _check_points(
    said: Any, device: str, groups: Sequence[tuple[list[str], Runs, Mapping[str, Any]]]
) -> None:
    """The receipt's ``points`` are its expiries' points, each named by one expiry, with
    counts that add up to that expiry's positions."""
    counts: dict[str, int] = {}
    if not isinstance(said, list):
        raise ValueError("its points are not a list")
    for item in said:
        count = item["count"] if isinstance(item, dict) else None
        if type(count) is not int or count < 1 or item["device"] != device:
            raise ValueError("its points are not counts of records of its device")
        counts[item["point"]] = count
    named = [p for points, _, _ in groups for p in points]
    if len(counts) != len(said) or sorted(counts) != sorted(named) or len(set(named)) != len(named):
        raise ValueError("its points are not its expiries' points, each in one expiry")
    for points, runs, _ in groups:
        if sum(counts[p] for p in points) != len(runs):
            raise ValueError("its points' counts are not its expiries' positions")


def _names(label: str, receipt: Receipt, info: BatchInfo | None, report: Report) -> bool:
    """Whether the receipt names a stored batch exactly as the batch's statement signs it."""
    if info is None:
        report.add(label, f"names batch {receipt.batch}, which the store does not hold")
        return False
    said = (receipt.device, receipt.root, receipt.plan, receipt.window_start, receipt.window_end)
    signed = (info.device, info.root, info.plan_digest, info.window_start, info.window_end)
    if said != signed:
        report.add(label, f"names batch {receipt.batch} otherwise than its statement signs it")
        return False
    return True


def _check_erasure(c: _Context, row: tuple[int, str, bytes] | None) -> None:
    """The store keeps the receipt's positions and leaf hashes, exactly."""
    if row is None:
        c.report.add(c.label, "the store does not keep the leaf hashes it removed (no erasure)")
        return
    batch_id, positions, hashes = row
    said = (c.receipt.batch, c.receipt.positions, b"".join(c.receipt.hashes))
    try:
        same = (batch_id, Runs.parse(read_json(positions)), hashes) == said
    except ValueError:
        same = False
    if not same:
        c.report.add(c.label, "the store's erasure of it differs from what it says it removed")


def _erase(c: _Context, erased: Erased) -> bool:
    """Add what the receipt removed to what the batch's receipts removed; it leaves the
    batch as many records as it says. False, and nothing added, when it names positions the
    batch does not have (checked on its runs: one may name 2**53 positions)."""
    info = c.info
    erased.receipts[info.id].append(c.entry.seq)
    deleted = c.receipt.positions
    if deleted and deleted.last >= info.count:
        c.report.add(c.label, f"deletes position {deleted.last} of a batch of {info.count}")
        return False
    removed = erased.positions.get(info.id)
    if removed is None:
        removed = erased.positions[info.id] = deleted
    else:
        if not isinstance(removed, set):
            removed = erased.positions[info.id] = set(removed or ())
        for position in deleted:
            if position in removed:
                c.report.add(c.label, f"deletes position {position} of {info.label} a second time")
            removed.add(position)
    if c.receipt.hashes:
        kept = erased.hashes.setdefault(info.id, {})
        kept.update(zip(deleted, c.receipt.hashes, strict=True))
    left = info.count - len(removed)
    if c.receipt.remaining != left:
        c.report.add(
            c.label,
            f"says {c.receipt.remaining} records of {info.label} remain, where its receipts"
            f" leave {left}",
        )
    elif not left:
        erased.whole.add(info.id)
    return True


@dataclass(frozen=True)
class _Mapped:
    """A signed point map's names, one per position, and the distinct ones."""

    names: list[str]
    distinct: frozenset[str]


def _mapped(c: _Context, maps: dict[tuple[bytes | None, int], _Mapped | None]) -> bool:
    """Whether each expiry group of the receipt deleted only positions its batch's signed point
    map gives one of the group's points; each failure named. The group's points are what its
    expiry and the holds are judged by, so without this a receipt would decide by its own word
    which points it deleted (``maps``: each point map parsed once, by its bytes and its batch's
    size: a device's batches usually share one). A group naming every point of the map (a
    batch deleted whole, usually) is checked by that alone: positions past the batch's end
    were refused before."""
    key = c.info.point_map, c.info.count
    if key not in maps:
        names = map_names(c.info)
        maps[key] = None if names is None else _Mapped(names, frozenset(names))
    mapped = maps[key]
    if mapped is None:
        c.report.add(
            c.label,
            f"{c.info.label} keeps no point map its statement signs: which points it deleted"
            " cannot be checked",
        )
        return False
    names = mapped.names
    for points, positions, _ in c.receipt.groups:
        named = set(points)
        if mapped.distinct <= named:
            continue
        for first, last in positions.spans:
            if not set(names[first : last + 1]) <= named:
                stray = next(p for p in range(first, last + 1) if names[p] not in named)
                c.report.add(
                    c.label,
                    f"deletes position {stray} of {c.info.label} as {', '.join(points)}, where"
                    f" its signed point map says {names[stray]}",
                )
                return False
    return True


def map_names(info: BatchInfo) -> list[str] | None:
    """The points of a batch's signed point map, one per position; None when it keeps none, or
    its statement signed one that is not a list of as many names as it has records."""
    if info.point_map is None:
        return None
    try:
        names = read_json(info.point_map)
    except ValueError:
        return None
    if not isinstance(names, list) or len(names) != info.count:
        return None
    return names if all(map(isinstance, names, repeat(str))) else None


@dataclass(frozen=True)
class _Context:
    entry: AuditEntry
    receipt: Receipt
    info: BatchInfo
    holds: Sequence[Hold]
    report: Report
    log: Log

    @property
    def label(self) -> str:
        return f"receipt (audit entry {self.entry.seq})"

    @property
    def window(self) -> tuple[str, str]:
        return self.info.window_start, self.info.window_end


def _lawful(c: _Context, plan: PlanBody | None, classes: Mapping[str, int]) -> bool:
    """Whether the batch's plan expired every point the receipt deleted by its time, and no
    hold in force then covered them; each failure named. ``classes``: the retention class of
    each point of the plan (:attr:`~engine.plans.body.PlanBody.retention_classes`).

    A point retained like one of its expiry group already found lawful, and held by no hold,
    is lawful too (the verdict depends on the calculation, the group and the holds, not on
    the point), so only the first point of each retention class in a group is checked, unless
    it fails. Only holds that touch the batch's device and window can cover a point of it."""
    if plan is None:
        c.report.add(c.label, f"its batch's plan {c.info.plan_digest} is not in the store")
        return False
    try:
        at = instant(c.entry.time)
    except BadTime:
        c.report.add(c.label, f"its time {c.entry.time!r} is not an instant")
        return False
    ok = True
    start, end = instant(c.info.window_start), instant(c.info.window_end)
    touching = [h for h in c.holds if h.scope.touches(c.info.device, *c.window)]
    calculations: dict[int, Expiry | None] = {}
    for points, positions, said in c.receipt.groups:
        passed: set[int] = set()
        """Retention classes of the group with a point found lawful and held by no hold."""
        for point, kind in zip(points, map(classes.get, points, repeat(-1)), strict=True):
            if kind in passed and not (touching and _held(c, point, touching)):
                continue
            held = bool(touching) and _held(c, point, touching)
            if kind >= 0 and kind not in calculations:
                calculations[kind] = expiry(plan.point[point], start, end)
            found = calculations.get(kind)
            lawful = _point_lawful(c, point, found, said, at)
            if found is not None and found.on_expiry == "archive":
                lawful &= _archived(c, point, positions)
            if lawful and found is not None and not held:
                passed.add(kind)
            ok &= lawful
    return ok


def _held(c: _Context, point: str, holds: Sequence[Hold]) -> bool:
    """Whether one of ``holds`` covers ``point`` of the receipt's batch."""
    return any(h.scope.covers(c.info.device, point, *c.window) for h in holds)


def _archived(c: _Context, point: str, positions: Runs) -> bool:
    """Records whose plan archives them were deleted naming an archive: an earlier
    ``retention.archived`` entry, of that file, that holds those positions of the batch, and
    the ``retention.archive.written`` entry after it that signed the file's SHA-256 the
    receipt names, once the file existed."""
    said = c.receipt.archive or {}
    entry = _logged(c.log, said.get("entry"))
    where = f"{c.info.device}/{point}"
    if (
        entry is None
        or entry.kind != "retention.archived"
        or entry.seq > c.entry.seq
        or entry.payload.get("file") != said.get("file")
    ):
        c.report.add(c.label, f"deletes {where}, which its plan archives, without its archive")
        return False
    if not _written(entry, _logged(c.log, said.get("written")), said, c.entry.seq):
        c.report.add(
            c.label,
            f"deletes {where}, which its plan archives, naming an archive no earlier"
            f" retention.archive.written entry says was written with that SHA-256",
        )
        return False
    listed = entry.payload.get("batches")
    if not isinstance(listed, list) or not all(isinstance(b, dict) for b in listed):
        c.report.add(
            c.label,
            f"deletes {where}, which its plan archives, naming an archive (audit entry"
            f" {entry.seq}) whose batches are not a list of objects",
        )
        return False
    held = [b for b in listed if b.get("batch") == c.info.id]
    try:
        archived = Runs.union([Runs.parse(b.get("positions")) for b in held])
    except ValueError:
        archived = Runs(())
    if not positions.within(archived):
        c.report.add(
            c.label,
            f"deletes {where} records its archive (audit entry {entry.seq}) does not hold",
        )
        return False
    return True


def _logged(log: Log, seq: Any) -> AuditEntry | None:
    """The entry a receipt names by its number; None when it names none (a hostile receipt
    may hold any JSON value there, a list or an object among them)."""
    return log.entries.get(seq) if type(seq) is int else None


def _written(
    archived: AuditEntry, written: AuditEntry | None, said: Mapping[str, Any], before: int
) -> bool:
    """Whether ``written`` is the ``retention.archive.written`` entry of ``archived``'s file,
    between it and entry ``before``, with the SHA-256 the receipt (``said``) names."""
    return (
        written is not None
        and written.kind == "retention.archive.written"
        and archived.seq < written.seq < before
        and written.payload.get("archived") == archived.seq
        and written.payload.get("file") == said.get("file")
        and written.payload.get("sha256") == said.get("sha256")
    )


def _point_lawful(
    c: _Context, point: str, found: Expiry | None, said: Mapping[str, Any], at: datetime
) -> bool:
    where = f"{c.info.device}/{point}"
    if found is None:
        c.report.add(c.label, f"deletes {where}, whose plan keeps it for ever (no retention)")
        return False
    claimed = {k: said.get(k) for k in found.as_json()}
    if claimed != found.as_json():
        c.report.add(c.label, f"its expiry calculation for {where} is not its plan's")
        return False
    least = found.retention.keep_at_least_ms
    if least is not None and at < _end_plus(c.info.window_end, least):
        c.report.add(
            c.label,
            f"deletes {where} before its keep_at_least (kept until {found.expires.isoformat()},"
            f" deleted at {at.isoformat()})",
        )
        return False
    if not found.due(at):
        c.report.add(
            c.label,
            f"deletes {where} before it expired ({found.explain()} = "
            f"{found.expires.isoformat()}, deleted at {at.isoformat()})",
        )
        return False
    for hold in c.holds:
        if hold.in_force_at(c.entry.seq) and hold.scope.covers(
            c.info.device, point, c.info.window_start, c.info.window_end
        ):
            c.report.add(
                c.label,
                f"deletes {where} during hold {hold.id} (placed by {hold.placed_by}, audit entry"
                f" {hold.placed_seq})",
            )
            return False
    return True


def _end_plus(window_end: str, ms: int) -> datetime:
    return instant(window_end) + timedelta(milliseconds=ms)


def _in_time(c: _Context, signed: Sequence[Signed]) -> bool:
    """A receipt is dated no later than the checkpoint that first signs it, nor than now."""
    try:
        at = instant(c.entry.time)
    except BadTime:
        return False
    covering = next((s for s in signed if s.checkpoint.size > c.entry.seq), None)
    limit = covering.at if covering is not None else datetime.now(UTC)
    if at > limit:
        what = f"{covering.label} signs it" if covering else "this verification"
        c.report.add(c.label, f"dated {at.isoformat()}, after {what} ({limit.isoformat()})")
        return False
    return True


def _summaries(
    lawful: Mapping[tuple[str, str], list[tuple[AuditEntry, Receipt]]],
) -> Iterator[Problem]:
    """One line per run and device: how many records, in how many batches, by which receipts,
    by whom, and how they expired."""
    for (_, device), receipts in lawful.items():
        entries = [e for e, _ in receipts]
        seqs = [e.seq for e in entries]
        records = sum(len(r.positions) for _, r in receipts)
        rules = sorted({_rule(said) for _, r in receipts for _, _, said in r.groups})
        span = f"{seqs[0]}" if len(seqs) == 1 else f"{seqs[0]}..{seqs[-1]}"
        actor = entries[0].actor
        who = actor.get("id") if isinstance(actor, dict) else actor
        yield Problem(
            f"receipt{'s' if len(seqs) > 1 else ''} (audit entr{'ies' if len(seqs) > 1 else 'y'}"
            f" {span})",
            f"{records:,} records of {device} in {len(receipts)} batch"
            f"{'es' if len(receipts) > 1 else ''}, deleted lawfully at {entries[0].time} by {who}"
            f" ({'; '.join(rules)})",
        )


def _rule(said: Mapping[str, Any]) -> str:
    rule = str(said.get("rule"))
    ms = said.get(f"{rule}_ms")
    return f"{rule} {format_duration(ms)}" if isinstance(ms, int) else rule


# --- holds -----------------------------------------------------------------------------


HOLD_KINDS = frozenset({"hold.placed", "hold.released"})


@dataclass
class HoldBook:
    """The holds as the log states them, read up to the end of ``log``: what a retention run
    decides by. Its check fills it from the verified log; in each of its transactions the run
    folds in the hold entries written since (each signed in its own transaction by a holder of
    the audit key, or the run's checkpoint refuses to sign), every entry since bound to the
    signed log (:func:`engine.store.auditlog.signed_since`). The ``holds`` table is never
    read: anyone who can write the database can change a row after the check."""

    holds: dict[int, Hold] = field(default_factory=dict)
    log: MerkleLog = field(default_factory=MerkleLog)
    """The compact state of the log as verified, advanced by
    :func:`~engine.store.auditlog.signed_since` over the entries read since (empty for a
    reader that takes the hold entries as written: ``hold list``)."""

    def read(self, entries: Iterable[AuditEntry]) -> list[Hold]:
        """The holds in force once ``entries`` are folded in."""
        for entry in entries:
            if entry.kind in HOLD_KINDS:
                fold_hold(entry, self.holds, Report(), None)
        return [h for h in self.holds.values() if h.in_force]


def check_holds(conn: Connection, log: Log, report: Report) -> list[Hold]:
    """The holds as their ``hold.placed`` and ``hold.released`` entries state them, each
    allowed by the decision it names; the store's hold rows must say exactly the same (a hold
    is never deleted)."""
    placed: dict[int, Hold] = {}
    entries = sorted((e for e in log.entries.values() if e.kind in HOLD_KINDS), key=_seq)
    decisions = Decisions.of(log, entries)
    for entry in entries:
        fold_hold(entry, placed, report, decisions)
    _compare_rows(stored.hold_rows(conn), placed, report)
    report.counts["holds"] = len(placed)
    return list(placed.values())


def _seq(entry: AuditEntry) -> int:
    return entry.seq


@dataclass(frozen=True)
class Decisions:
    """What a hold entry is judged by: the ``access.decision`` entries of each decision id, in
    log order, and, for each hold entry naming a decision an earlier hold entry named, that
    earlier one's seq. A hold entry's decision is the first entry of its id before it (so a
    later entry reusing the id changes nothing), and it allows one placing or one release."""

    logged: Mapping[str, Sequence[AuditEntry]]
    reused: Mapping[int, int]

    @classmethod
    def of(cls, log: Log, holds: Sequence[AuditEntry]) -> Decisions:
        """From the log and its hold entries (in seq order)."""
        logged: dict[str, list[AuditEntry]] = defaultdict(list)
        for entry in sorted(log.of_kind("access.decision"), key=_seq):
            logged[str(entry.payload.get("decision"))].append(entry)
        first: dict[str, int] = {}
        reused = {}
        for entry in holds:
            earlier = first.setdefault(str(entry.payload.get("decision")), entry.seq)
            if earlier != entry.seq:
                reused[entry.seq] = earlier
        return cls(logged, reused)

    def named(self, entry: AuditEntry) -> AuditEntry | None:
        """The decision hold entry ``entry`` names: the first of its id before it."""
        found = self.logged.get(str(entry.payload.get("decision")), ())
        return next((d for d in found if d.seq < entry.seq), None)


def fold_hold(
    entry: AuditEntry,
    placed: dict[int, Hold],
    report: Report,
    decisions: Decisions | None,
) -> None:
    """Apply one ``hold.placed`` or ``hold.released`` entry to ``placed``, the holds by id.

    With ``decisions``, each must name an earlier decision that allowed its actor a hold on
    the hold's whole scope as placed, and that no earlier hold entry named; a release none
    allowed is named and leaves the hold in force, so that what it kept is still judged
    held. Without (a retention run reading entries signed since its check), they are taken
    as written."""
    if entry.kind == "hold.placed":
        found = _placed(entry, placed, report)
        if found is not None:
            placed[found.id] = found
            if decisions is not None:
                _decided(entry, found, decisions, report)
        return
    hold_id = entry.payload.get("hold")
    was = placed.get(hold_id) if type(hold_id) is int else None
    label = f"audit entry {entry.seq}"
    if was is None or was.placed_seq > entry.seq:
        report.add(label, f"releases hold {hold_id!r}, which no earlier entry placed")
    elif not was.in_force:
        report.add(label, f"releases hold {hold_id} a second time")
    elif decisions is None or _decided(entry, was, decisions, report):
        placed[was.id] = replace(
            was,
            released_by=_actor_id(entry.actor),
            released_at=entry.time,
            release_reason=str(entry.payload.get("reason")),
            released_seq=entry.seq,
        )


def _decided(entry: AuditEntry, hold: Hold, decisions: Decisions, report: Report) -> bool:
    """Whether the decision ``entry`` names allowed it (see :func:`fold_hold`); named if not."""
    why = _undecided(entry, hold.scope, decisions.named(entry))
    earlier = decisions.reused.get(entry.seq)
    if why is None and earlier is not None:
        why = (
            f"its decision was named already, by audit entry {earlier}: a decision allows one"
            " placing or one release"
        )
    if why is not None:
        verb = "places" if entry.kind == "hold.placed" else "releases"
        report.add(f"audit entry {entry.seq}", f"{verb} hold {hold.id}, but {why}")
    return why is None


def _undecided(entry: AuditEntry, scope: Scope, decision: AuditEntry | None) -> str | None:
    """Why ``decision`` did not allow ``entry``'s actor a hold on ``scope``; None if it did."""
    if decision is None:
        return "no earlier access.decision entry is the decision it names"
    said, who = decision.payload, _actor_id(entry.actor)
    where = f"its decision (audit entry {decision.seq})"
    if said.get("action") != "hold" or said.get("outcome") != "allow":
        return f"{where} did not allow a hold"
    if said.get("principal") != who or _actor_id(decision.actor) != who:
        return f"{where} was not {who}'s"
    span = (said.get("from"), said.get("to"))
    if not _same_times(span, (scope.start, scope.end)) or not _on_scope(scope, said.get("points")):
        return f"{where} was on another scope than the hold's as placed"
    return None


def _same_times(said: tuple[Any, Any], scope: tuple[str | None, str | None]) -> bool:
    """Whether a decision's ``from``/``to`` are the scope's: open alike, or the same instant
    spelled as instants are (``2026-06-01T12:00:00.000000Z``, as the guard writes them). A
    hold's range is compared with batch windows as text, so the same moment spelled otherwise
    (``2026-06-01T13:00:00+01:00``) would cover other windows than the ones decided."""
    return all(a == b and (b is None or _spelled(b)) for a, b in zip(said, scope, strict=True))


def _spelled(text: str) -> bool:
    """Whether ``text`` is an instant spelled as :func:`engine.sign.leaf.instant` spells it."""
    try:
        return spell(instant(text)) == text
    except (BadTime, OverflowError):  # year 1 at a positive offset is no instant in UTC
        return False


def _on_scope(scope: Scope, points: Any) -> bool:
    """Whether a decision's points are all allowed, all covered by ``scope``, and name every
    device and match every point glob the scope names (the guard decides on each point the
    hold covers: engine/retention/holds.py)."""
    if not isinstance(points, list) or not points:
        return False
    pairs: set[tuple[str, str]] = set()
    for p in points:
        if not isinstance(p, dict) or p.get("allowed") is not True:
            return False
        pairs.add((str(p.get("device")), str(p.get("point"))))
    if scope.held is not None and pairs != scope.held:
        return False  # it holds exactly what was decided
    if not all(scope.names(device, point) for device, point in pairs):
        return False
    devices = {d for d, _ in pairs}
    if scope.devices and devices != set(scope.devices):
        return False
    return all(
        any(fnmatchcase(point, glob) for named, point in pairs if named == device)
        for glob in scope.points
        for device in devices
    )


def _placed(entry: AuditEntry, placed: Mapping[int, Hold], report: Report) -> Hold | None:
    label = f"audit entry {entry.seq}"
    said = entry.payload
    try:
        scope = Scope.from_json(said)
        hold_id, reason = said["hold"], said["reason"]
        if type(hold_id) is not int or not isinstance(reason, str):
            raise ValueError("its hold id or reason is not what a hold's placing says")
    except (KeyError, ValueError) as exc:
        report.add(label, f"not a hold's placing ({exc})")
        return None
    if hold_id in placed:
        report.add(label, f"places hold {hold_id} a second time")
        return None
    return Hold(hold_id, scope, reason, _actor_id(entry.actor), entry.time, entry.seq)


def _compare_rows(rows: dict[int, Hold | None], placed: Mapping[int, Hold], report: Report) -> None:
    for hold_id, hold in placed.items():
        if hold_id not in rows:
            report.add(
                f"hold {hold_id}",
                f"placed by audit entry {hold.placed_seq}, missing from the store's holds",
            )
            continue
        row = rows.pop(hold_id)
        if row is None:
            report.add(f"hold {hold_id}", "the store's row does not read as a hold's")
        elif row != replace(hold, scope=hold.scope.as_asked):
            report.add(f"hold {hold_id}", "the store's row differs from its audit entries")
    for hold_id in rows:
        report.add(f"hold {hold_id}", "in the store's holds, but no audit entry placed it")


def _actor_id(actor: Any) -> str:
    return str(actor.get("id")) if isinstance(actor, dict) else str(actor)


# --- data kept too long ------------------------------------------------------------------


def check_kept(conn: Connection, known: Known, erased: Erased, report: Report) -> None:
    """Records still stored past their ``keep_at_most``: a finding when no hold keeps them, a
    note when one does. Only batches whose plan has a ceiling already passed are read."""
    plans, holds = known.plans, erased.holds
    now = datetime.now(UTC)
    ceilings = {d: _ceiling(p) for d, p in plans.items()}
    past: Counter[tuple[str, str]] = Counter()
    held: dict[tuple[str, str], set[int]] = defaultdict(set)
    held_count: Counter[tuple[str, str]] = Counter()
    for info in known.batches.values():
        most = ceilings.get(info.plan_digest)
        if most is None or _end_plus(info.window_end, most) > now:
            continue
        if info.id in erased.whole:
            continue
        for point, keeping in _overdue(conn, plans[info.plan_digest], info, holds, now):
            if keeping:
                held[info.device, point].update(keeping)
                held_count[info.device, point] += 1
            else:
                past[info.device, point] += 1
    for device, (n, points) in _per_device(past).items():
        report.findings.append(
            Problem(
                device,
                f"{n:,} records ({points}) kept past their keep_at_most with no hold (data"
                " minimisation: they should be gone; run converge retention apply)",
            )
        )
    for device, (n, points) in _per_device(held_count).items():
        ids = ", ".join(
            str(h) for h in sorted({h for (d, _), hs in held.items() if d == device for h in hs})
        )
        report.notes.append(
            f"{device}: {n:,} records ({points}) held past their keep_at_most by hold {ids}"
        )


def _per_device(counts: Counter[tuple[str, str]]) -> dict[str, tuple[int, str]]:
    """Records by device, and the points they are of (the first few named)."""
    found: dict[str, list[tuple[str, int]]] = defaultdict(list)
    for (device, point), n in sorted(counts.items()):
        found[device].append((point, n))
    said = {}
    for device, points in found.items():
        names = ", ".join(p for p, _ in points[:5]) + (
            f" and {len(points) - 5} more" if len(points) > 5 else ""
        )
        said[device] = (sum(n for _, n in points), f"point{'s' * (len(points) > 1)} {names}")
    return said


def _ceiling(plan: PlanBody) -> int | None:
    """The shortest ``keep_at_most`` of the plan's points, in ms (None: none has one)."""
    found = [p.retention.keep_at_most_ms for p in plan.points]
    return min((m for m in found if m is not None), default=None)


def _overdue(
    conn: Connection, plan: PlanBody, info: BatchInfo, holds: Sequence[Hold], now: datetime
) -> Iterator[tuple[str, tuple[int, ...]]]:
    """(point, holds in force covering it) of each record of the batch past its ceiling."""
    start, end = instant(info.window_start), instant(info.window_end)
    verdicts: dict[str, tuple[bool, tuple[int, ...]]] = {}
    for _, leaf in data.leaves(conn, info.id):
        try:
            point = point_of(leaf)
        except ValueError:
            continue  # not a record: the records check names it
        if point not in verdicts:
            planned = plan.point.get(point)
            found = None if planned is None else expiry(planned, start, end)
            overdue = found is not None and found.gone_by is not None and found.gone_by <= now
            keeping = tuple(
                h.id
                for h in holds
                if h.in_force
                and h.scope.covers(info.device, point, info.window_start, info.window_end)
            )
            verdicts[point] = (overdue, keeping)
        overdue, keeping = verdicts[point]
        if overdue:
            yield point, keeping
