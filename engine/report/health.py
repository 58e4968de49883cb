"""Collection health: per device, point and period, the slots a plan promised and what filled them.

The one computation behind ``converge audit gaps`` and the report's health
section (docs/report.md says where each number comes from):

- **scheduled**: the slots of the point's schedule (the plan in force: a
  polled group's ``every_ms``/``cron``, a subscribed point's own capture) from
  the device's first slot on record to its last; where the device has records
  before (after) the range asked, from (to) the range's edge. A collector
  records every slot while it runs and, when it starts again, the slots it
  missed (``shutdown`` gaps), so between those two every slot should be filled;
- **readings**: readings with a ``scheduled_at`` (they fill a slot);
- **extra**: readings without one (on change, subscription deliveries);
- **gaps**: the slots of gap records, by reason (a gap record of a run of slots
  counts its ``slots``, split over the periods its slots fall in);
- **unaccounted**: scheduled − readings − gaps: slots nothing on record
  accounts for (below zero, more records than slots).

Periods are UTC buckets of ``bucket_ms`` (a day for ``audit gaps``; finer for
the report's chart, which sums them into days for its table).
"""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Collection, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from operator import itemgetter
from typing import Any, Generic, TypeVar
from zoneinfo import ZoneInfo

from sqlalchemy import Connection

from engine.access.data import Range
from engine.canonical import read_json
from engine.collect.runtime import CollectConfig
from engine.collect.scheduler import Schedule, group_schedule, interval_slot
from engine.errors import StoreError
from engine.plans.body import PlanBody
from engine.records import GapReason
from engine.report import stored
from engine.store import data

DAY_MS = 86_400_000
FALLBACK_MS = CollectConfig().fallback_every_ms
"""How often a collector polls a group of on-change-only points (the run's default)."""

REASONS = tuple(r.value for r in GapReason)
CSV_COLUMNS = ("device", "point", "day", "scheduled", "readings", "gaps", *REASONS)
CSV_COLUMNS += ("unaccounted", "extra")
"""The columns of ``converge audit gaps --format csv``: a gap reason's column counts its slots."""


@dataclass
class Tally:
    """What one point's slots in one period hold."""

    scheduled: int = 0
    readings: int = 0
    extra: int = 0
    gaps: Counter[str] = field(default_factory=Counter)

    @property
    def gap_slots(self) -> int:
        return sum(self.gaps.values())

    @property
    def unaccounted(self) -> int:
        return self.scheduled - self.readings - self.gap_slots

    def add(self, other: Tally) -> None:
        self.scheduled += other.scheduled
        self.readings += other.readings
        self.extra += other.extra
        self.gaps.update(other.gaps)


@dataclass(frozen=True)
class Row:
    """One line of the completeness view: a point's tally over one period."""

    device: str
    point: str
    start_ms: int
    tally: Tally

    @property
    def day(self) -> str:
        return datetime.fromtimestamp(self.start_ms / 1000, UTC).strftime("%Y-%m-%d")

    def as_json(self) -> dict[str, Any]:
        """The row as ``converge audit gaps --format json`` prints it (docs/cli.md)."""
        t = self.tally
        return {
            "device": self.device,
            "point": self.point,
            "day": self.day,
            "scheduled": t.scheduled,
            "readings": t.readings,
            "gaps": t.gap_slots,
            "reasons": dict(sorted(t.gaps.items())),
            "unaccounted": t.unaccounted,
            "extra": t.extra,
        }

    def as_csv(self) -> list[str | int]:
        """The row's :data:`CSV_COLUMNS`."""
        t = self.tally
        head: list[str | int] = [self.device, self.point, self.day]
        head += [t.scheduled, t.readings, t.gap_slots, *(t.gaps.get(r, 0) for r in REASONS)]
        return [*head, t.unaccounted, t.extra]


K = TypeVar("K")


@dataclass
class _Counts(Generic[K]):
    """Plain counts by key (a tally's parts), so that a reading costs an addition, not a
    :class:`Tally`."""

    scheduled: Counter[K] = field(default_factory=Counter)
    readings: Counter[K] = field(default_factory=Counter)
    extra: Counter[K] = field(default_factory=Counter)
    gaps: Counter[tuple[K, str]] = field(default_factory=Counter)

    def tallies(self) -> dict[K, Tally]:
        """A tally for each key anything was counted for."""
        found: dict[K, Tally] = {}
        for key, n in self.scheduled.items():
            found.setdefault(key, Tally()).scheduled = n
        for key, n in self.readings.items():
            found.setdefault(key, Tally()).readings = n
        for key, n in self.extra.items():
            found.setdefault(key, Tally()).extra = n
        for (key, reason), n in self.gaps.items():
            found.setdefault(key, Tally()).gaps[reason] = n
        return found


@dataclass
class Health:
    """Tallies by device, point and UTC day, and by device and period of ``bucket_ms`` (all its
    points summed): what the completeness view and the report show, and nothing finer."""

    bucket_ms: int
    days: dict[str, dict[tuple[str, int], Tally]] = field(default_factory=dict)
    """Per device: (point, start of the day) -> tally."""
    periods: dict[str, dict[int, Tally]] = field(default_factory=dict)
    """Per device: start of the period -> its points' tallies summed."""

    def rows(self) -> list[Row]:
        """Every (device, point, day) with anything to show, sorted."""
        return [
            Row(device, point, start, tally)
            for device, days in sorted(self.days.items())
            for (point, start), tally in sorted(days.items())
        ]

    def timeline(self, device: str, bucket_ms: int) -> list[tuple[int, Tally]]:
        """The device's points summed per period of ``bucket_ms`` (a multiple of
        :attr:`bucket_ms`), in time order."""
        summed: dict[int, Tally] = {}
        for start, tally in self.periods.get(device, {}).items():
            summed.setdefault(start // bucket_ms * bucket_ms, Tally()).add(tally)
        return sorted(summed.items())

    def totals(self, device: str) -> dict[str, Tally]:
        """The device's points, each summed over every period."""
        summed: dict[str, Tally] = {}
        for (point, _), tally in self.days.get(device, {}).items():
            summed.setdefault(point, Tally()).add(tally)
        return summed


@dataclass(frozen=True)
class Readings:
    """A batch's records when each is the usual reading (:data:`_READING`), counted: by point
    and UTC day, and by slot; its first and last slot as written. The export counts the
    batches it reads, so that its report need not read them again."""

    days: Counter[tuple[str, int]]
    """(point, start of the day) -> readings."""
    slots: Counter[int]
    """:func:`to_ms` of a slot -> readings."""
    first: str
    last: str

    @classmethod
    def of(cls, points: Sequence[bytes], slots: Sequence[bytes]) -> Readings:
        """Count the point and slot of each record (its columns, in record order)."""
        at = {slot: to_ms(slot.decode()) for slot in set(slots)}
        by_slot: Counter[int] = Counter()
        for slot, n in Counter(slots).items():
            by_slot[at[slot]] += n
        return cls(_by_day(points, slots, at), by_slot, min(at).decode(), max(at).decode())


def _by_day(
    points: Sequence[bytes], slots: Sequence[bytes], at: Mapping[bytes, int]
) -> Counter[tuple[str, int]]:
    """(point, start of the day) -> readings, of records' columns (``at``: each slot's ms):
    counted by point when every slot is of one day (as a batch's usually are), else one by
    one."""
    day = {slot: ms // DAY_MS * DAY_MS for slot, ms in at.items()}
    days = set(day.values())
    if len(days) == 1:
        (only,) = days
        return Counter({(point.decode(), only): n for point, n in Counter(points).items()})
    names = {point: point.decode() for point in set(points)}
    return Counter(zip(map(names.__getitem__, points), map(day.__getitem__, slots), strict=True))


def health(
    conn: Connection,
    wanted: Mapping[str, Collection[str] | None],
    span: Range,
    bucket_ms: int = DAY_MS,
    counted: Mapping[int, Readings] | None = None,
) -> Health:
    """The tallies of ``wanted`` (device: its points, ``None`` for all its plans' points) in
    ``span``, by day and by periods of ``bucket_ms`` (which divides a day). ``counted``: the
    readings of batches already read (by batch id), taken instead of reading them."""
    out = Health(bucket_ms)
    for device, points in sorted(wanted.items()):
        _Device(conn, device, points, span, bucket_ms).tally(out, counted or {})
    return out


def to_ms(moment: str) -> int:
    """An instant (``2026-06-01T12:00:05.000000Z``) as milliseconds since the epoch."""
    return int(datetime.fromisoformat(moment).timestamp() * 1000)


_READING = re.compile(
    rb'\{"collected_at":"[0-9T:.Z-]+","device":"[^"\\]*","point":"([A-Za-z0-9_.:/+-]+)",'
    rb'"quality":"[a-z_]+","salt":"[0-9a-f]{32}","scheduled_at":"([0-9T:.Z-]+)",'
    rb'"type":"reading","v":1,"value":(?:-?(?:0|[1-9][0-9]*)(?:\.[0-9]+)?(?:[eE][-+]?[0-9]+)?'
    rb"|true|false|null)\}"
)
"""The usual leaf: a scheduled reading whose point needs no unescaping; its point and slot."""


_READINGS = re.compile(rb"^" + _READING.pattern + rb"$", re.MULTILINE)
"""Leaves joined by newlines: the point and slot of each that is the usual reading."""


class _Device:
    """The tallies of one device: its records, then the slots its plans promised."""

    def __init__(
        self,
        conn: Connection,
        device: str,
        points: Collection[str] | None,
        span: Range,
        bucket_ms: int,
    ) -> None:
        self.conn, self.device, self.span, self.bucket_ms = conn, device, span, bucket_ms
        self.batches = data.batches(conn, device, span.start, span.end)
        self.plans = _plans(conn, device, self.batches)
        everything = {p.name for plan in self.plans.values() for p in plan.points}
        self.points = everything if points is None else set(points)
        self.lo = None if span.start is None else to_ms(span.start)
        self.hi = None if span.end is None else to_ms(span.end)
        self.first: int | None = None
        self.last: int | None = None
        self.days = _Counts[tuple[str, int]]()
        """By (point, start of the day)."""
        self.periods = _Counts[int]()
        """By start of the period, the points summed."""
        self.slots: dict[bytes, int] = {}
        """:func:`to_ms` of each slot seen: a device's points share their slots."""

    def tally(self, out: Health, counted: Mapping[int, Readings]) -> None:
        """Count the device's records (a batch in ``counted`` by its count there, when it holds
        only readings asked) and scheduled slots, then put its tallies in ``out``."""
        for batch in self.batches:
            known = counted.get(batch.id)
            if known is not None and self._readings(known):
                continue
            plan = self.plans.get(batch.plan_digest)
            records = data.leaves(self.conn, batch.id)
            leaves = [leaf for _, leaf in records]
            if not self._usual(leaves):
                for position, leaf in records:
                    try:
                        self._leaf(leaf, plan)
                    except (ValueError, KeyError, TypeError) as exc:  # an SQL edit: data
                        raise StoreError(
                            f"batch {batch.id}, position {position}: its leaf is not a record"
                            f" ({exc}): the store was changed outside Converge"
                            " (converge audit verify names it)"
                        ) from None
        if self.span.start is not None:  # runs of slots that began before the range
            for digest, leaf in stored.gap_runs_into(self.conn, self.device, self.span.start):
                self._record(
                    json.loads(leaf), self.plans.get(digest) or data.plan(self.conn, digest)
                )
        self._scheduled()
        days, periods = self.days.tallies(), self.periods.tallies()
        if days or periods:
            out.days[self.device], out.periods[self.device] = days, periods

    def _usual(self, leaves: list[bytes]) -> bool:
        """Count a batch's leaves at once when each is the usual reading (:data:`_READING`) of a
        point asked, in the range; else count nothing and say so."""
        joined = b"\n".join(leaves)
        found = _READINGS.findall(joined)
        if not found or len(found) != len(leaves) or joined.count(b"\n") != len(leaves) - 1:
            return False
        return self._readings(
            Readings.of(list(map(itemgetter(0), found)), list(map(itemgetter(1), found)))
        )

    def _readings(self, read: Readings) -> bool:
        """Count a batch's usual readings when each is of a point asked, in the range; else
        count nothing and say so."""
        if not self.points.issuperset(point for point, _ in read.days):
            return False
        if not (self.span.holds(read.first) and self.span.holds(read.last)):
            return False
        self.days.readings.update(read.days)
        for at, n in read.slots.items():
            self.periods.readings[at // self.bucket_ms * self.bucket_ms] += n
        self._seen(min(read.slots), max(read.slots) + 1)
        return True

    def _slot(self, slot: bytes) -> int:
        at = self.slots.get(slot)
        if at is None:
            at = self.slots[slot] = to_ms(slot.decode())
        return at

    def _leaf(self, leaf: bytes, plan: PlanBody | None) -> None:
        """A record's leaf: the usual reading read from its text (a point and a slot are all
        it gives), any other parsed."""
        found = _READING.fullmatch(leaf)
        if found is None:
            record = read_json(leaf)
            if not isinstance(record, dict):
                raise ValueError("not a JSON object")
            self._record(record, plan)
            return
        point = found[1].decode()
        if point in self.points and self.span.holds(found[2].decode()):
            self._reading(point, self._slot(found[2]))

    def _record(self, record: dict[str, Any], plan: PlanBody | None) -> None:
        point = record.get("point")
        if point not in self.points:
            return
        slot = record.get("scheduled_at")
        if record.get("type") == "gap":
            self._gap(record, point, plan)
        elif slot is None:
            if self.span.holds(record["collected_at"]):
                at = to_ms(record["collected_at"])
                self.days.extra[point, at // DAY_MS * DAY_MS] += 1
                self.periods.extra[at // self.bucket_ms * self.bucket_ms] += 1
        elif self.span.holds(slot):
            self._reading(point, to_ms(slot))

    def _reading(self, point: str, at: int) -> None:
        self.days.readings[point, at // DAY_MS * DAY_MS] += 1
        self.periods.readings[at // self.bucket_ms * self.bucket_ms] += 1
        self._seen(at, at + 1)

    def _gap(self, record: dict[str, Any], point: str, plan: PlanBody | None) -> None:
        first = to_ms(record["scheduled_at"])
        last = to_ms(record.get("last_scheduled_at") or record["scheduled_at"])
        lo, hi = self._clip(first, last + 1)
        if hi <= lo:
            return
        schedule = None if plan is None else schedules(plan).get(point)
        slots, reason = int(record.get("slots", 1)), record["reason"]
        for start, n in spread((first, last, slots), schedule, (lo, hi), self.bucket_ms):
            self.days.gaps[(point, start // DAY_MS * DAY_MS), reason] += n
            self.periods.gaps[start, reason] += n
        self._seen(lo, hi)

    def _clip(self, lo: int, hi: int) -> tuple[int, int]:
        """``[lo, hi)`` within the range asked."""
        low = lo if self.lo is None else max(lo, self.lo)
        return low, (hi if self.hi is None else min(hi, self.hi))

    def _seen(self, lo: int, hi: int) -> None:
        """Slots in ``[lo, hi)`` are on record."""
        self.first = lo if self.first is None else min(self.first, lo)
        self.last = hi if self.last is None else max(self.last, hi)

    def _scheduled(self) -> None:
        """Add the slots each point's plan promised between the device's first and last slot
        on record (the range's edges where it has records beyond them). Points that share a
        schedule share its count."""
        if self.lo is not None and stored.batch_before(self.conn, self.device, self.span.start):
            self.first = self.lo
        if self.hi is not None and stored.batch_after(self.conn, self.device, self.span.end):
            self.last = self.hi
        if self.first is None or self.last is None:
            return
        for plan, start, end in _segments(self.batches, self.plans):
            lo, hi = max(self.first, start), min(self.last, end)
            sharing: dict[Schedule, list[str]] = {}
            for point, schedule in schedules(plan).items():
                if point in self.points:
                    sharing.setdefault(schedule, []).append(point)
            for schedule, points in sharing.items():
                days: Counter[int] = Counter()
                for at, n in bin_slots(schedule, lo, hi, self.bucket_ms):
                    self.periods.scheduled[at] += n * len(points)
                    days[at // DAY_MS * DAY_MS] += n
                for point in points:
                    for day, n in days.items():
                        self.days.scheduled[point, day] += n


def _plans(
    conn: Connection, device: str, batches: Iterable[data.StoredBatch]
) -> dict[str, PlanBody]:
    """The plans the batches name (those that parse), else the device's latest plan."""
    found = {d: data.plan(conn, d) for d in {b.plan_digest for b in batches}}
    plans = {d: p for d, p in found.items() if p is not None}
    if not found:
        latest = data.latest_plan(conn, device)
        plans = {} if latest is None else {latest.digest: latest}
    return plans


ALWAYS = (-(2**62), 2**62)
"""Milliseconds before and after any record."""


def _segments(
    batches: Iterable[data.StoredBatch], plans: Mapping[str, PlanBody]
) -> Iterator[tuple[PlanBody, int, int]]:
    """(plan, from, until) in ms: a plan is in force from its first batch's window on, until the
    next plan's first batch (the first plan since ever, the last for ever)."""
    changes: list[tuple[int, str]] = []
    for batch in batches:
        if not changes or changes[-1][1] != batch.plan_digest:
            changes.append((to_ms(batch.window_start), batch.plan_digest))
    if not changes:
        changes = [(ALWAYS[0], digest) for digest in plans]
    starts = [ALWAYS[0]] + [at for at, _ in changes[1:]]
    ends = [at for at, _ in changes[1:]] + [ALWAYS[1]]
    for start, (_, digest), end in zip(starts, changes, ends, strict=True):
        plan = plans.get(digest)
        if plan is not None:
            yield plan, start, end


_SCHEDULES: dict[str, dict[str, Schedule]] = {}


def schedules(plan: PlanBody) -> dict[str, Schedule]:
    """Each point of ``plan`` that has slots, with its schedule: a polled group's points share
    the group's; a subscribed point has its own capture's (none when on change only)."""
    if plan.digest not in _SCHEDULES:
        zone = ZoneInfo(plan.timezone)
        found: dict[str, Schedule] = {}
        for group in plan.read_groups:
            if group.polled:
                schedule = group_schedule(group, plan.point, plan.timezone, FALLBACK_MS)
                found.update((name, schedule) for name in group.points)
                continue
            for name in group.points:
                capture = plan.point[name].capture
                if capture.every_ms or capture.cron:
                    found[name] = Schedule(capture.every_ms, capture.cron, zone)
        _SCHEDULES[plan.digest] = found
    return _SCHEDULES[plan.digest]


def bin_slots(schedule: Schedule, lo: int, hi: int, bucket_ms: int) -> Iterator[tuple[int, int]]:
    """(period start, slots) of ``schedule``'s slots in ``[lo, hi)``, by periods of
    ``bucket_ms``: counted for an interval, walked for cron."""
    if hi <= lo:
        return
    if schedule.every_ms and not schedule.cron:
        start = lo // bucket_ms * bucket_ms
        while start < hi:
            n = _interval_slots(schedule.every_ms, max(lo, start), min(hi, start + bucket_ms))
            if n:
                yield start, n
            start += bucket_ms
        return
    counts: Counter[int] = Counter()
    slot = schedule.first_at_or_after(lo)
    while slot < hi:
        counts[slot // bucket_ms * bucket_ms] += 1
        slot = schedule.next_after(slot)
    yield from sorted(counts.items())


def _interval_slots(every_ms: int, lo: int, hi: int) -> int:
    """How many multiples of ``every_ms`` lie in ``[lo, hi)``."""
    first = interval_slot(lo - 1, every_ms) + every_ms
    last = interval_slot(hi - 1, every_ms)
    return max(0, (last - first) // every_ms + 1)


def spread(
    run: tuple[int, int, int], schedule: Schedule | None, within: tuple[int, int], bucket_ms: int
) -> Iterator[tuple[int, int]]:
    """(period start, slots) of a gap record's ``run`` (first slot, last slot, how many) in
    ``within``: by its point's schedule; all in its first slot's period when the schedule does
    not give as many slots (a plan whose schedule the record does not follow)."""
    first, last, slots = run
    if schedule is not None and slots > 1 and _count(schedule, first, last + 1) == slots:
        yield from bin_slots(schedule, *within, bucket_ms)
    elif within[0] <= first < within[1]:
        yield first // bucket_ms * bucket_ms, slots


def _count(schedule: Schedule, lo: int, hi: int) -> int:
    return sum(n for _, n in bin_slots(schedule, lo, hi, DAY_MS))
