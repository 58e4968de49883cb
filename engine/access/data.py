"""Data through the guard: the plans a request is decided on, and the records it may read.

:func:`targets` finds, for each point asked for, every plan its data in the
range was stored under (each batch names its plan), or the device's latest
plan when the range holds none. :func:`records` reads the allowed points'
records in batch order, each with its batch, its position and whether its
batch verifies on its own (:mod:`engine.verify.single`) when trusted keys
are given.
"""

from __future__ import annotations

import csv
import io
import json
import re
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection

from engine.access.apart import can_fork, verifier
from engine.access.guard import Decision, Target
from engine.canonical import canonical_json
from engine.errors import VerificationError
from engine.plans.body import PlanBody
from engine.store import data
from engine.verify.single import batch_problem
from engine.verify.trust import Trust

COLUMNS = (
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
    "batch_verified",
)
"""The columns of a record read through the guard (docs/access.md)."""


@dataclass(frozen=True)
class Range:
    """Instants (``instant`` text) bounding the records' times: ``[start, end)``, either open."""

    start: str | None = None
    end: str | None = None

    def holds(self, moment: str) -> bool:
        return (self.start is None or moment >= self.start) and (
            self.end is None or moment < self.end
        )


def targets(
    conn: Connection, device: str, points: Sequence[str] | None, span: Range
) -> list[Target]:
    """What to decide on: ``points`` of ``device`` (all its plans' points when ``None``), each
    with the plans in force for its data in ``span``."""
    plans = plans_in_force(conn, device, span)
    names = (
        points if points is not None else sorted({p.name for plan in plans for p in plan.points})
    )
    return [Target(device, name, plans) for name in names]


def plans_in_force(conn: Connection, device: str, span: Range) -> list[PlanBody]:
    """The plans the device's batches in ``span`` name; else (no data there) the plan the
    newest ``plan.deployed`` entry of the audit log for the device names
    (:func:`engine.store.data.deployed_last`; a plan row no entry names never decides).
    Raises VerificationError when a plan they name is not stored as its digest says
    (missing, or its bytes swapped for another plan's), or is another device's plan: no
    decision is taken on the others alone."""
    named = data.plans_named(conn, device, span.start, span.end)
    whose = "its batches name"
    if not named:
        last = data.deployed_last(conn, device)
        if last is None:
            return []
        named, whose = [last], "its last plan.deployed entry names"
    for digest, plan in named:
        if plan is None:
            unsettled = "is not stored as its digest says (missing, changed or another device's)"
            raise _undecided(device, digest, f"{whose} {unsettled}")
        if plan.device.id != device:
            raise _undecided(device, digest, f"{whose} is device {plan.device.id}'s plan")
    return [plan for _, plan in named if plan is not None]


def _undecided(device: str, digest: str, why: str) -> VerificationError:
    """Nothing is decided on a device's data whose plan is not the one its digest names."""
    return VerificationError(
        f"device {device}: the plan {digest} {why}; nothing is decided on its data"
        " (audit verify names it)"
    )


Found = tuple[int, dict[str, Any], str]
"""A record read: its position in its batch, the record (its leaf parsed), its time."""
_NO_RECORDS: data.Records = ((), ())
"""A batch none of whose records is stored."""


def records(
    conn: Connection, decision: Decision, span: Range, trust: Trust | None
) -> Iterator[dict[str, Any]]:
    """The records of the points ``decision`` allows, in ``span``, device by device in batch
    order; each a dict of :data:`COLUMNS`."""
    for device, points in allowed(decision).items():
        for batch, verified, got in _device_batches(conn, device, span, trust):
            for position, record, moment in _matching(got, points, span):
                yield _row(record, moment, batch, position, verified)


def csv_chunks(
    conn: Connection, decision: Decision, span: Range, trust: Trust | None, *, apart: bool = False
) -> Iterator[str]:
    """:func:`records` as CSV text, a chunk each time about :data:`CHUNK_LINES` records have
    been read: a header of :data:`COLUMNS`, then one line per record, as :mod:`csv` writes
    rows (``\\n`` ending lines, minimal quoting), with empty cells for ``None`` and
    ``true``/``false`` for booleans (docs/access.md).

    The usual record, a scheduled reading whose leaf has the usual members, is written
    straight from its leaf's text (:class:`_Usual`); any other goes through the JSON parser
    and the C writer, which write the same line for the usual record. ``apart``: the batches
    may be verified in a worker process (:mod:`engine.access.apart`; only for a caller alone
    in its process).
    """
    out, held = [csv_line(COLUMNS)], 0
    for device, points in allowed(decision).items():
        usual = _Usual(device, points, span)
        batches = _device_batches(conn, device, span, trust, apart=apart)
        for batch, verified, records in batches:
            flag = "" if verified is None else "true" if verified else "false"
            out.append(usual.text(records, batch, flag))
            held += len(records[0])
            if held >= CHUNK_LINES:
                yield "".join(out)
                out.clear()
                held = 0
    yield "".join(out)


CHUNK_LINES = 1024


def allowed(decision: Decision) -> dict[str, set[str]]:
    """The points ``decision`` allows, by device, devices in the order it names them."""
    by_device: dict[str, set[str]] = {}
    for point in decision.allowed:
        by_device.setdefault(point.device, set()).add(point.point)
    return by_device


def csv_line(row: Sequence[Any]) -> str:
    """One CSV line as :mod:`csv` writes it, ``true``/``false`` for booleans."""
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="\n").writerow([cell(value) for value in row])
    return buffer.getvalue()


def cell(value: Any) -> Any:
    """A CSV cell as the C writer takes it: ``true``/``false`` for booleans."""
    if value.__class__ is bool:
        return "true" if value else "false"
    return value


def _usual(device: str, point: str, value: str) -> str:
    """The pattern of a usual reading's leaf of ``device``: ``point`` and ``value`` match its
    point and its value; it captures collected, point, quality, scheduled and value."""
    return (
        r'\{"collected_at":"([0-9:.TZ-]+)","device":'
        + re.escape(canonical_json(device).decode())
        + r',"point":'
        + point
        + r',"quality":"([a-z_]+)","salt":"[0-9a-f]{32}","scheduled_at":"([0-9:.TZ-]+)",'
        + r'"type":"reading","v":1,"value":'
        + value
        + r"\}"
    )


_VALUE = r"(0|-?[1-9][0-9]{0,300}(\.[0-9]+)?)"
"""An integer, or a decimal fraction (which ``repr`` must then write back as it is)."""
_REPR_SAFE = (
    r"(0|-?[1-9][0-9]{0,300}|-?(?=[0-9.]{3,16}\})(?!0\.0000)(?:0|[1-9][0-9]*)\.(?:0|[0-9]*[1-9]))"
)
"""An integer, or a decimal fraction that ``repr`` writes back as it is by its form alone: at
most 15 digits (so it is the shortest text of its float), no trailing zero but in ``.0``, and
at least 0.0001 (``repr`` writes less with an exponent), as ``repr`` writes floats between
0.0001 and 1e16."""


class _Usual:
    """Writes the CSV line of the usual record, a scheduled reading in canonical form,
    straight from its leaf's text, without parsing it as JSON.

    The pattern admits only leaves whose members the JSON parser would read as exactly the
    matched text: strings without escapes, an integer, or a decimal fraction that ``repr``
    writes back as it is (the C writer writes floats by ``repr``); the device and the
    point's names are matched as their canonical JSON. Any other leaf takes the general
    path, which writes the same line for the usual record
    (``tests/test_access_reads.py`` compares them).

    A batch whose leaves are all usual readings (the common case) is matched at once, its
    leaves joined a line each (:meth:`_columns`), and its lines formatted by ``str.format``
    mapped over the matched columns: no Python code runs per record. That needs point names
    that are their own CSV cell and JSON string, and a value that ``repr`` writes back by
    its form alone (:data:`_REPR_SAFE`); when a batch is not all usual, the batches after it
    go leaf by leaf until one is.
    """

    def __init__(self, device: str, points: set[str], span: Range) -> None:
        self.points, self.span = points, span
        names = {canonical_json(p).decode(): p for p in sorted(points)}
        self.prefix = {
            text: csv_line((device, p, "reading"))[:-1] + "," for text, p in names.items()
        }
        self.match = re.compile(
            _usual(device, "(" + "|".join(map(re.escape, names)) + ")", _VALUE)
        ).fullmatch
        plain = all(
            canonical_json(p).decode() == f'"{p}"' and csv_line((p,)) == f"{p}\n" for p in points
        )
        alternatives = '"(' + "|".join(re.escape(p) for p in sorted(points)) + ')"'
        self.every = (
            re.compile(f"^{_usual(device, alternatives, _REPR_SAFE)}$", re.MULTILINE).split
            if plain and points
            else None
        )
        self.cell = csv_line((device, ""))[:-2].replace("%", "%%")
        """The device's CSV cell, as a %-format."""
        self.whole = True
        """Whether to try the next batch at once: the last one was all usual readings."""

    def text(self, records: data.Records, batch: int, flag: str) -> str:
        """The CSV lines of the records of the points in the range among a batch's records."""
        positions, leaves = records
        columns = self._columns(self.every, leaves) if self.every and self.whole else None
        if columns is None:
            return "".join(self.lines(records, batch, flag))
        collected, point, quality, scheduled, value = columns
        line = f"{self.cell},%s,reading,%s,%s,%s,,,%s,%s,,,{batch},%s,{flag}\n"
        rows = zip(point, scheduled, value, quality, collected, scheduled, positions, strict=True)
        return "".join(map(line.__mod__, rows))

    def _columns(
        self, every: Callable[[str], list[str]], leaves: Sequence[bytes]
    ) -> list[list[str]] | None:
        """(collected, point, quality, scheduled, value) of every leaf, as five columns, when
        every leaf is a usual reading of one of the points, in the range; else ``None``.

        The leaves are joined by line breaks and split by the pattern, which captures five
        members of each: when nothing is left between the matches but the line breaks
        joining them, every leaf was matched whole, in order.
        """
        try:
            parts = every(b"\n".join(leaves).decode())
        except UnicodeDecodeError:
            parts = []
        count = len(leaves)
        if not (
            count
            and len(parts) == 6 * count + 1
            and parts[0] == parts[-1] == ""
            and parts[6:-1:6].count("\n") == count - 1
        ):
            self.whole = False
            return None
        columns = [parts[i::6] for i in range(1, 6)]
        start, end = self.span.start, self.span.end
        if (start is not None and min(columns[3]) < start) or (
            end is not None and max(columns[3]) >= end
        ):
            self.whole = False
            return None
        return columns

    def lines(self, records: data.Records, batch: int, flag: str) -> list[str]:
        """The CSV lines of the records of the points in the range among a batch's records,
        leaf by leaf."""
        start, end = self.span.start, self.span.end
        out: list[str] = []
        candidates = _candidates(records, self.points)
        usual = 0
        for position, leaf in candidates:
            try:
                found = self.match(leaf.decode())
            except UnicodeDecodeError:
                found = None
            if found is None:
                out.extend(self._general(position, leaf, batch, flag))
                continue
            collected, point, quality, scheduled, value, fraction = found.groups()
            if fraction and repr(float(value)) != value:
                out.extend(self._general(position, leaf, batch, flag))
                continue
            usual += 1
            if (start is None or scheduled >= start) and (end is None or scheduled < end):
                out.append(
                    f"{self.prefix[point]}{scheduled},{value},{quality},,,{collected},"
                    f"{scheduled},,,{batch},{position},{flag}\n"
                )
        self.whole = usual == len(records[1])
        return out

    def _general(self, position: int, leaf: bytes, batch: int, flag: str) -> list[str]:
        """The CSV line of any record (none for a leaf that is not one of the points, in the
        range)."""
        return [
            csv_line(
                (
                    r.get("device"),
                    r["point"],
                    r.get("type"),
                    moment,
                    r.get("value"),
                    r.get("quality"),
                    r.get("reason"),
                    r.get("detail"),
                    r.get("collected_at"),
                    r.get("scheduled_at"),
                    r.get("source_at"),
                    r.get("raw_code"),
                    batch,
                    position,
                    flag,
                )
            )
            for _, r, moment in _matching(((position,), (leaf,)), self.points, self.span)
        ]


def _device_batches(
    conn: Connection, device: str, span: Range, trust: Trust | None, *, apart: bool = False
) -> Iterator[tuple[int, bool | None, data.Records]]:
    """Each batch of ``device`` in ``span``: its id, whether it verifies, and its records."""
    chunks = _chunks(data.batches(conn, device, span.start, span.end))
    if trust is not None and apart and len(chunks) > 1 and can_fork():
        yield from _verified_apart(conn, chunks, trust)
        return
    plans: dict[str, PlanBody | None] = {}
    for chunk in chunks:
        found = data.records_of(conn, [b.id for b in chunk])
        for batch in chunk:
            got = found.get(batch.id, _NO_RECORDS)
            yield batch.id, _verified(conn, batch, got, plans, trust), got


def _verified_apart(
    conn: Connection, chunks: list[list[data.StoredBatch]], trust: Trust
) -> Iterator[tuple[int, bool | None, data.Records]]:
    """:func:`_device_batches` with the batches verified in a worker process: each chunk is
    sent as soon as it is read, and the one before it then comes back with its verdicts."""
    digests = {b.plan_digest for chunk in chunks for b in chunk}
    plans = {digest: data.plan(conn, digest) for digest in sorted(digests)}
    with verifier(plans, trust) as worker:
        sent: list[tuple[data.StoredBatch, data.Records]] = []
        for chunk in chunks:
            found = data.records_of(conn, [b.id for b in chunk])
            read = [(batch, found.get(batch.id, _NO_RECORDS)) for batch in chunk]
            worker.send(read)
            if sent:
                yield from _with(sent, worker.verdicts())
            sent = read
        yield from _with(sent, worker.verdicts())


def _with(
    batches: list[tuple[data.StoredBatch, data.Records]], verdicts: list[bool]
) -> Iterator[tuple[int, bool | None, data.Records]]:
    for (batch, records), verified in zip(batches, verdicts, strict=True):
        yield batch.id, verified, records


READ_AT_ONCE = 20_000
"""About how many records are read in one query: the batches' leaves come a few batches at a
time, so that memory stays bounded however long the range."""
BATCHES_AT_ONCE = 500
"""At most this many batches in one query (each is a bound parameter)."""


def _chunks(batches: list[data.StoredBatch]) -> list[list[data.StoredBatch]]:
    """``batches`` in order, cut where a query would read more than :data:`READ_AT_ONCE`
    records or :data:`BATCHES_AT_ONCE` batches (a batch of more is a chunk of its own)."""
    chunks: list[list[data.StoredBatch]] = []
    start = 0
    while start < len(batches):
        end, held = start, 0
        while end < len(batches) and (
            end == start
            or (held + batches[end].count <= READ_AT_ONCE and end - start < BATCHES_AT_ONCE)
        ):
            held += max(batches[end].count, 0)
            end += 1
        chunks.append(batches[start:end])
        start = end
    return chunks


def _candidates(records: data.Records, points: set[str]) -> list[tuple[int, bytes]]:
    """(position, leaf) of the records that name one of ``points`` (the others are not
    parsed)."""
    needles = [b'"point":' + canonical_json(p) + b"," for p in points]
    pairs = zip(*records, strict=True)
    if len(needles) == 1:
        needle = needles[0]
        return [(p, leaf) for p, leaf in pairs if needle in leaf]
    return [(p, leaf) for p, leaf in pairs if any(n in leaf for n in needles)]


_scan: Callable[[str, int], tuple[Any, int]] = json.JSONDecoder().scan_once  # type: ignore[attr-defined]
"""The C scanner of :mod:`json`, without ``json.loads``' layers (a record's leaf is one
canonical JSON object)."""


def _matching(records: data.Records, points: set[str], span: Range) -> list[Found]:
    """The records of ``points`` in ``span`` among a batch's records.

    A leaf that is not a record (not JSON, no point or time: its batch does not verify) is
    left out.
    """
    start, end = span.start, span.end
    found: list[Found] = []
    for position, leaf in _candidates(records, points):
        try:
            record = _scan(leaf.decode(), 0)[0]
            moment = record.get("scheduled_at") or record["collected_at"]
            if (
                record["point"] in points
                and (start is None or moment >= start)
                and (end is None or moment < end)
            ):
                found.append((position, record, moment))
        except (ValueError, KeyError, TypeError, AttributeError):
            continue
    return found


def _verified(
    conn: Connection,
    batch: data.StoredBatch,
    records: data.Records,
    plans: dict[str, PlanBody | None],
    trust: Trust | None,
) -> bool | None:
    if trust is None:
        return None
    if batch.plan_digest not in plans:
        plans[batch.plan_digest] = data.plan(conn, batch.plan_digest)
    positions, leaves = records
    return batch_problem(batch, positions, leaves, plans[batch.plan_digest], trust) is None


def _row(
    record: dict[str, Any], moment: str, batch: int, position: int, verified: bool | None
) -> dict[str, Any]:
    return {
        "device": record.get("device"),
        "point": record["point"],
        "type": record.get("type"),
        "time": moment,
        "value": record.get("value"),
        "quality": record.get("quality"),
        "reason": record.get("reason"),
        "detail": record.get("detail"),
        "collected_at": record.get("collected_at"),
        "scheduled_at": record.get("scheduled_at"),
        "source_at": record.get("source_at"),
        "raw_code": record.get("raw_code"),
        "batch": batch,
        "position": position,
        "batch_verified": verified,
    }
