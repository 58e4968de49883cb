"""Records through the guard as CSV: the usual reading written straight from its leaf is the
line the JSON parser and :mod:`csv` write for it, whatever its value; every other record
takes that general path."""

from __future__ import annotations

import asyncio
import csv
import io
from datetime import timedelta

from evidence_kit import T0, collect, open_store

from engine.access import data
from engine.access.data import COLUMNS, Range, csv_chunks, records
from engine.access.guard import Request, Target, decide
from engine.audit import os_user
from engine.principals import Identity
from engine.records import Gap, GapReason, Quality, Reading
from engine.sign.leaf import instant
from engine.store.data import batches as stored_batches
from engine.store.spool import Spool

DEVICE, POINT, OTHER = "reactor-1-plc", "TT101_PV", "PT101_PV"

VALUES = [
    0,
    1,
    -1,
    20.5,
    -3.25,
    -0.0,
    0.1 + 0.2,
    1e-05,
    0.0001,
    123456.789,
    1e16,
    1.5e16,
    1e300,
    2**53 - 1,
    True,
    False,
    None,
    "text, with a comma",
    'a "quoted" word',
    "two\nlines",
    "ünïcode ✓",
    "",
]


def odd_records():
    """Usual readings with every kind of value, 10 s apart (over four batches), and records
    of every other shape."""
    for i, value in enumerate(VALUES):
        at = T0 + timedelta(seconds=10 * i)
        yield Reading(DEVICE, POINT, at + timedelta(milliseconds=3), value, scheduled_at=at)
        yield Reading(DEVICE, OTHER, at, i, scheduled_at=at)
    at = T0 + timedelta(seconds=10 * len(VALUES))
    yield Reading(DEVICE, POINT, at, 1.5)  # on change: no slot
    yield Reading(DEVICE, POINT, at, 2.5, Quality.UNCERTAIN, source_at=at, raw_code=7)
    yield Reading(DEVICE, POINT, at, 3.5, scheduled_at=at, server_at=at, coalesced=3)
    yield Gap(DEVICE, POINT, at + timedelta(seconds=1), GapReason.TIMEOUT, "no answer, 1000 ms")


def reference_csv(rows) -> str:
    """The CSV the query command wrote before the usual reading had its own path."""

    def cell(value):
        if value is None:
            return ""
        if isinstance(value, bool):
            return "true" if value else "false"
        return value

    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(COLUMNS)
    writer.writerows([cell(row[c]) for c in COLUMNS] for row in rows)
    return out.getvalue()


def test_the_usual_path_writes_what_the_general_path_writes(
    evidence_site, backend, tmp_path, monkeypatch
):
    store = open_store(evidence_site, backend)
    spool = Spool(tmp_path / "spool.db")
    asyncio.run(collect(evidence_site, store, spool, list(odd_records())))
    spool.close()
    plans = [p for p in evidence_site.plans if p.device.id == DEVICE]
    alice = Identity("alice", "person", frozenset({"qa"}))
    targets = [Target(DEVICE, POINT, plans), Target(DEVICE, OTHER, plans)]
    decision = decide(Request("alice", alice, os_user(), "read", targets))
    assert decision.outcome == "allow"
    trust = evidence_site.trust()
    later = instant(T0 + timedelta(seconds=95))
    written = {}
    for span in (Range(), Range(later, None), Range(None, later)):
        with store.reading() as conn:
            written[span] = "".join(csv_chunks(conn, decision, span, trust))
        with store.reading() as conn:
            assert written[span] == reference_csv(records(conn, decision, span, trust))
    monkeypatch.setattr(data, "READ_AT_ONCE", 1)  # a query per batch: the same records
    with store.reading() as conn:
        assert len(stored_batches(conn, DEVICE, None, None)) >= 4
        assert "".join(csv_chunks(conn, decision, Range(), trust)) == written[Range()]
    lines = list(csv.DictReader(io.StringIO(written[Range()])))
    assert len(lines) == 2 * len(VALUES) + 4
    assert {line["batch_verified"] for line in lines} == {"true"}
    assert [line["value"] for line in lines if line["point"] == POINT][:3] == ["0", "1", "-1"]
    store.close()
