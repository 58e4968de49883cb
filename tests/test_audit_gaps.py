"""`converge audit gaps`: per device, point and UTC day, the slots a plan promised and what filled
them, as a user counts them, on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import csv
import io
import json
from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from evidence_kit import Site, collect, open_store, verify

from engine.access import Question, ask
from engine.access.data import Range
from engine.access.guard import Decision
from engine.cli import main
from engine.collect.scheduler import Schedule
from engine.export import Target, export
from engine.records import Gap, GapReason, Reading, Record
from engine.report import Readings
from engine.report import health as completeness
from engine.report.facts import gather
from engine.report.health import DAY_MS, bin_slots, spread
from engine.report.page import page
from engine.sign.leaf import instant
from engine.store import data
from engine.store.spool import Spool
from engine.store.store import Store
from plugins.fileprincipals import PrincipalsFile

DEVICE = "reactor-1-plc"
PRINCIPALS = Path(__file__).resolve().parents[1] / "examples/sites/plant-basel/principals.yaml"
AUDITOR = "inspector@audit.example"
MIDNIGHT = (datetime.now(UTC) - timedelta(days=1)).replace(
    hour=0, minute=0, second=0, microsecond=0
)
START = MIDNIGHT - timedelta(minutes=2)
"""Two minutes before yesterday's (UTC) midnight; three after it the records end."""
STOPPED = (MIDNIGHT - timedelta(seconds=30), MIDNIGHT + timedelta(minutes=1))
"""The device refused connections for these 90 seconds."""
LOST = (MIDNIGHT + timedelta(minutes=2), MIDNIGHT + timedelta(seconds=150))
"""Nothing at all is on record for these 30 seconds."""
END = MIDNIGHT + timedelta(minutes=3)


def plant_records(site: Site) -> Iterator[Record]:
    """Every slot of every polled group of the device from START to END: a reading, a refused
    gap while it was stopped, nothing while records were lost."""
    plan = next(p for p in site.plans if p.device.id == DEVICE)
    for group in plan.read_groups:
        every = timedelta(milliseconds=group.spec["every_ms"])
        at = START
        while at < END:
            for i, point in enumerate(group.points):
                if STOPPED[0] <= at < STOPPED[1]:
                    yield Gap(DEVICE, point, at, GapReason.REFUSED, "connection refused")
                elif not LOST[0] <= at < LOST[1]:
                    yield Reading(DEVICE, point, at + timedelta(milliseconds=12), 20.5 + i,
                                  scheduled_at=at)  # fmt: skip
            at += every


@pytest.fixture
def stopped_store(evidence_site, backend, tmp_path) -> str:
    """A store of the device's records around midnight, with its stop and the lost stretch."""
    store = open_store(evidence_site, backend, witness=tmp_path / "witness.jsonl")
    spool = Spool(tmp_path / "spool.db")
    asyncio.run(collect(evidence_site, store, spool, list(plant_records(evidence_site))))
    spool.close()
    assert verify(evidence_site, store, tmp_path).ok
    store.close()
    return backend


def gaps(capsys: pytest.CaptureFixture[str], db: str, *more: str, form: str = "json") -> str:
    capsys.readouterr()
    assert main(["audit", "gaps", "--db", db, *more, "--format", form]) == 0
    return capsys.readouterr().out


def by_day(out: str) -> dict[tuple[str, str], dict[str, object]]:
    rows = [json.loads(line) for line in out.splitlines()]
    return {(row["point"], row["day"]): row for row in rows}


def test_a_stopped_device_shows_its_gap_reason_and_counts_per_day(
    stopped_store, capsys, evidence_site
):
    rows = by_day(gaps(capsys, stopped_store, "--device", DEVICE))
    day0, day1 = (MIDNIGHT - timedelta(days=1)).date().isoformat(), MIDNIGHT.date().isoformat()
    # every 5 s: 24 slots before midnight (the last 6 refused), 36 after it up to the last
    # record at 00:02:55 (12 refused, then 6 with nothing on record)
    assert rows[("TT101_PV", day0)] == {
        "device": DEVICE,
        "point": "TT101_PV",
        "day": day0,
        "scheduled": 24,
        "readings": 18,
        "gaps": 6,
        "reasons": {"refused": 6},
        "unaccounted": 0,
        "extra": 0,
    }
    after = rows[("TT101_PV", day1)]
    assert (after["scheduled"], after["readings"], after["reasons"], after["unaccounted"]) == (
        36,
        18,
        {"refused": 12},
        6,
    )
    # every minute: 23:58 and 23:59 read; 00:00 refused, 00:01 read, 00:02 lost
    agitator = rows[("AGITATOR_RUN", day1)]
    assert (agitator["scheduled"], agitator["readings"], agitator["reasons"]) == (
        3,
        1,
        {"refused": 1},
    )
    assert agitator["unaccounted"] == 1
    assert rows[("AGITATOR_RUN", day0)]["readings"] == 2
    plan = next(p for p in evidence_site.plans if p.device.id == DEVICE)
    assert {point for point, _ in rows} == {p.name for p in plan.points}


def test_a_range_counts_the_slots_up_to_its_edges(stopped_store, capsys):
    frm, to = MIDNIGHT.isoformat(), (MIDNIGHT + timedelta(minutes=1)).isoformat()
    rows = by_day(gaps(capsys, stopped_store, "--from", frm, "--to", to))
    assert {day for _, day in rows} == {MIDNIGHT.date().isoformat()}
    row = rows[("TT101_PV", MIDNIGHT.date().isoformat())]
    assert (row["scheduled"], row["readings"], row["reasons"], row["unaccounted"]) == (
        12,
        0,
        {"refused": 12},
        0,
    )
    # from 00:02 on, records lie before the range: its first 30 s are unaccounted
    late = by_day(gaps(capsys, stopped_store, "--from", LOST[0].isoformat()))
    row = late[("TT101_PV", MIDNIGHT.date().isoformat())]
    assert (row["scheduled"], row["readings"], row["unaccounted"]) == (12, 6, 6)


def test_csv_and_table_say_the_same(stopped_store, capsys):
    table = gaps(capsys, stopped_store, "--device", DEVICE, form="csv")
    rows = list(csv.DictReader(io.StringIO(table)))
    row = next(
        r for r in rows if r["point"] == "TT101_PV" and r["day"] == MIDNIGHT.date().isoformat()
    )
    assert (row["scheduled"], row["readings"], row["refused"], row["unaccounted"]) == (
        "36",
        "18",
        "12",
        "6",
    )
    text = gaps(capsys, stopped_store, "--device", DEVICE, form="table")
    assert "TT101_PV" in text and "refused 12" in text


def test_a_device_the_store_does_not_hold_is_named_not_shown_as_empty(stopped_store, capsys):
    """A mistyped device is a mistake of the command (exit 2), not a device with no records."""
    capsys.readouterr()
    assert main(["audit", "gaps", "--db", stopped_store, "--device", "reactor-l-plc"]) == 2
    said = capsys.readouterr().err
    assert "no device reactor-l-plc in the store (its devices: " in said and DEVICE in said


def test_an_empty_store_has_no_rows(tmp_path, capsys, evidence_site):
    open_store(evidence_site, str(tmp_path / "empty.db")).close()
    assert gaps(capsys, str(tmp_path / "empty.db"), form="table").strip() == "no records"


def test_a_run_of_slots_is_split_over_the_days_its_slots_fall_in():
    every_5s = Schedule(5000, (), ZoneInfo("UTC"))
    midnight = int(MIDNIGHT.timestamp() * 1000)
    first, last = midnight - 60_000, midnight + 55_000  # 12 slots before midnight, 12 after
    run = (first, last, 24)
    assert dict(spread(run, every_5s, (first, last + 1), DAY_MS)) == {
        midnight - DAY_MS: 12,
        midnight: 12,
    }
    assert dict(spread(run, every_5s, (midnight, last + 1), DAY_MS)) == {midnight: 12}
    # a run the schedule does not explain counts whole, on its first slot's day
    assert dict(spread((first, last, 7), every_5s, (first, last + 1), DAY_MS)) == {
        midnight - DAY_MS: 7
    }
    assert list(bin_slots(every_5s, midnight, midnight + 60_000, 20_000)) == [
        (midnight, 4),
        (midnight + 20_000, 4),
        (midnight + 40_000, 4),
    ]


def counted(tally: completeness.Tally) -> tuple[int, int, int, dict[str, int]]:
    return tally.scheduled, tally.readings, tally.extra, dict(tally.gaps)


def shown(found: completeness.Health, devices: list[str]) -> object:
    """Everything the report and ``audit gaps`` read of a health."""
    rows = [row.as_json() for row in found.rows()]
    lines = {d: [(s, counted(t)) for s, t in found.timeline(d, found.bucket_ms)] for d in devices}
    totals = {d: {p: counted(t) for p, t in found.totals(d).items()} for d in devices}
    return rows, lines, totals


@pytest.mark.parametrize("bucket_ms", [1000, 15_000, 60_000, DAY_MS])
def test_a_batch_counted_at_once_counts_what_its_leaves_count_one_by_one(
    stopped_store, monkeypatch, bucket_ms
):
    """The usual readings of a batch are counted at once (one regular expression over the
    batch); a batch that holds anything else, a point not asked or a slot outside the range
    is counted leaf by leaf. Both count the same, whatever the range and points asked."""
    store = Store.open_existing(stopped_store)
    spans = [
        Range(),
        Range(instant(MIDNIGHT), None),
        Range(None, instant(MIDNIGHT + timedelta(seconds=75))),
        Range(instant(START + timedelta(seconds=7)), instant(END - timedelta(seconds=3))),
    ]
    usual = completeness._Device._usual
    taken: list[bool] = []

    def spied(self: completeness._Device, leaves: list[bytes]) -> bool:
        taken.append(usual(self, leaves))
        return taken[-1]

    monkeypatch.setattr(completeness._Device, "_usual", spied)
    with store.reading() as conn:
        devices = data.devices(conn)
        for span in spans:
            for wanted in (dict.fromkeys(devices), {DEVICE: ["TT101_PV", "AGITATOR_RUN"]}):
                at_once = shown(completeness.health(conn, wanted, span, bucket_ms), devices)
                with monkeypatch.context() as m:
                    m.setattr(completeness._Device, "_usual", lambda self, leaves: False)
                    one_by_one = completeness.health(conn, wanted, span, bucket_ms)
                assert at_once == shown(one_by_one, devices)
    store.close()
    assert any(taken)
    assert not all(taken)


@pytest.mark.parametrize("within", [False, True])
def test_the_report_of_an_export_counts_from_its_readings_what_it_counts_from_the_store(
    stopped_store, evidence_site, tmp_path, within
):
    """An export hands its report the readings of each batch it read whole (whose records are
    all the usual reading of a point asked, in the range); the page counted from them is the
    page counted from the store, byte for byte. A batch with a gap record, or one only partly
    in the range, is handed to nobody: the report reads it."""
    handed: dict[int, Readings] = {}

    def report(store: Store, decision: Decision, *, counted: dict[int, Readings]) -> bytes:
        handed.update(counted)
        return b""

    start, end = (
        (START + timedelta(seconds=7), END - timedelta(seconds=3)) if within else (None,) * 2
    )
    span = Range(start and instant(start), end and instant(end))
    with Store.open_existing(stopped_store) as store:
        with store.reading() as conn:
            asked = Question(AUDITOR, "export", [DEVICE], start=start, end=end)
            decision = ask(conn, PrincipalsFile(PRINCIPALS), asked)
            batches = data.batches(conn, DEVICE, None, None)
        keys = evidence_site.key_store()
        export(store, decision, span, keys, Target(tmp_path / "bundle.zip", report))
        at = datetime.now(UTC)
        pages = [
            page(replace(gather(store, decision, None, None, given), made_at=at))
            for given in (None, handed)
        ]
    assert 0 < len(handed) < len(batches)
    assert pages[0] == pages[1]


def test_a_batchs_readings_count_by_point_and_day_whichever_days_its_slots_are_of():
    before, after = (instant(at).encode() for at in (MIDNIGHT - timedelta(seconds=5), MIDNIGHT))
    day = completeness.to_ms(instant(MIDNIGHT))
    one_day = Readings.of([b"TT", b"PT", b"TT"], [after, after, after])
    assert one_day.days == {("TT", day): 2, ("PT", day): 1}
    two_days = Readings.of([b"TT", b"PT", b"TT"], [before, after, after])
    assert two_days.days == {("TT", day - DAY_MS): 1, ("PT", day): 1, ("TT", day): 1}
    assert two_days.slots == {day - 5000: 1, day: 2}
    assert (two_days.first, two_days.last) == (before.decode(), after.decode())
