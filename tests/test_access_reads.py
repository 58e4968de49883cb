"""Records through the guard as CSV: the usual reading written straight from its leaf is the
line the JSON parser and :mod:`csv` write for it, whatever its value; every other record
takes that general path."""

from __future__ import annotations

import asyncio
import csv
import io
import json
import os
import re
from datetime import timedelta

import pytest
import sqlalchemy as sa
from evidence_kit import T0, collect, open_store
from hypothesis import given
from hypothesis import strategies as st

import engine.access.apart
from engine.access import data
from engine.access.apart import verifier
from engine.access.data import COLUMNS, Range, csv_chunks, plans_in_force, records
from engine.access.guard import Request, Target, decide
from engine.audit import os_user
from engine.errors import StoreError, VerificationError
from engine.principals import Identity
from engine.records import Gap, GapReason, Quality, Reading
from engine.sign.leaf import instant
from engine.store.data import batches as stored_batches
from engine.store.data import plans_named as stored_plans_named
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


# --- a batch at once ---------------------------------------------------------------------


def usual_records(seconds: int):
    """Usual readings, one a second, of one point over several 60 s batches, and of the other
    in the first of them."""
    for s in range(seconds):
        at = T0 + timedelta(seconds=s)
        yield Reading(DEVICE, POINT, at + timedelta(milliseconds=3), 20 + s * 0.25, scheduled_at=at)
        if s < 60:
            yield Reading(DEVICE, OTHER, at, s, scheduled_at=at)


def value_of(leaf: bytes, value: bytes) -> bytes:
    return re.sub(rb'"value":[^}]*', b'"value":' + value, leaf)


def tamper(store) -> None:
    """Leaves that a batch read at once must not take for usual readings, each in a batch of
    its own after an untouched one (so that it is read at once): one holding two usual
    leaves, one that is not UTF-8, values that ``repr`` writes otherwise, a line that is not
    a reading before or after a usual one (in the first, a middle and the last leaf), and a
    position moved."""
    with store.reading() as conn:
        rows = conn.execute(sa.text("SELECT id, batch_id, leaf FROM readings ORDER BY id")).all()
    batches: dict[int, list[tuple[int, bytes]]] = {}
    for row_id, batch, leaf in rows:
        batches.setdefault(batch, []).append((row_id, bytes(leaf)))
    two, utf8, values, first, middle, last, position = (batches[b] for b in sorted(batches)[2:16:2])
    other = b'{"point":"' + POINT.encode() + b'"}'
    leaves = [
        (two[0][0], two[0][1] + b"\n" + two[1][1]),
        (utf8[3][0], utf8[3][1].replace(b'"good"', b'"g\xffod"')),
        (values[5][0], value_of(values[5][1], b"20.10")),
        (values[6][0], value_of(values[6][1], b"0.00001")),
        (values[7][0], value_of(values[7][1], b"1234567890123456.5")),
        (first[0][0], other + b"\n" + first[0][1]),
        (middle[4][0], other + b"\n" + middle[4][1]),
        (last[-1][0], last[-1][1] + b"\n" + other),
    ]
    with store.engine.begin() as conn:
        for row_id, leaf in leaves:
            update = "UPDATE readings SET leaf = :leaf WHERE id = :id"
            conn.execute(sa.text(update), {"leaf": leaf, "id": row_id})
        update = "UPDATE readings SET position = 1000 WHERE id = :id"
        conn.execute(sa.text(update), {"id": position[2][0]})


@pytest.fixture
def tampered(evidence_site, backend, tmp_path):
    """A store of usual readings, some of them tampered with (:func:`tamper`)."""
    store = open_store(evidence_site, backend)
    spool = Spool(tmp_path / "spool.db")
    asyncio.run(collect(evidence_site, store, spool, list(usual_records(1020))))
    spool.close()
    tamper(store)
    yield store
    store.close()


def read_by(evidence_site, *points):
    plans = [p for p in evidence_site.plans if p.device.id == DEVICE]
    alice = Identity("alice", "person", frozenset({"qa"}))
    targets = [Target(DEVICE, point, plans) for point in points]
    return decide(Request("alice", alice, os_user(), "read", targets))


MID = [instant(T0 + timedelta(seconds=s, milliseconds=500)) for s in (30, 150, 990)]
SPANS = (Range(), Range(MID[0], None), Range(None, MID[2]), Range(MID[1], MID[2]))


def test_batches_read_at_once_write_what_the_general_path_writes(
    evidence_site, tampered, monkeypatch
):
    trust = evidence_site.trust()
    leaf_by_leaf = []
    monkeypatch.setattr(
        data._Usual, "lines", lambda self, *a: leaf_by_leaf.append(a[1]) or lines(self, *a)
    )
    for points in ([POINT], [POINT, OTHER]):
        decision = read_by(evidence_site, *points)
        for span in SPANS:
            leaf_by_leaf.clear()
            with tampered.reading() as conn:
                written = "".join(csv_chunks(conn, decision, span, trust))
            with tampered.reading() as conn:
                assert written == reference_csv(records(conn, decision, span, trust))
            read = {line["batch"] for line in csv.DictReader(io.StringIO(written))}
            assert read - {str(batch) for batch in leaf_by_leaf}, "no batch was read at once"
    assert "20.10" not in written and ",20.1," in written and ",1e-05," in written
    assert {line["batch_verified"] for line in csv.DictReader(io.StringIO(written))} == {
        "true",
        "false",
    }


@pytest.fixture
def apart(monkeypatch):
    """Batches verified in a worker process, a batch per chunk, even on one core; how many
    workers were started."""
    started = []

    def counted(*args):
        started.append(args)
        return verifier(*args)

    monkeypatch.setattr(data, "READ_AT_ONCE", 100)
    monkeypatch.setattr(data, "can_fork", lambda: True)
    monkeypatch.setattr(data, "verifier", counted)
    return started


def test_batches_verified_apart_get_the_verdicts_of_the_reader_s_own(
    evidence_site, tampered, apart
):
    trust = evidence_site.trust()
    decision = read_by(evidence_site, POINT, OTHER)
    for span in SPANS:
        with tampered.reading() as conn:
            here = "".join(csv_chunks(conn, decision, span, trust))
        with tampered.reading() as conn:
            assert "".join(csv_chunks(conn, decision, span, trust, apart=True)) == here
    assert len(apart) == len(SPANS)
    verdicts = [line["batch_verified"] for line in csv.DictReader(io.StringIO(here))]
    assert "false" in verdicts and "true" in verdicts


def test_a_failure_verifying_apart_is_the_reader_s_own(evidence_site, tampered, apart, monkeypatch):
    def failing(*_):
        raise StoreError("the plan is unreadable")

    monkeypatch.setattr(engine.access.apart, "batch_problem", failing)
    with tampered.reading() as conn, pytest.raises(StoreError, match="the plan is unreadable"):
        "".join(
            csv_chunks(
                conn, read_by(evidence_site, POINT), Range(), evidence_site.trust(), apart=True
            )
        )
    assert apart


def test_a_reader_that_stops_early_ends_its_worker(evidence_site, tampered, apart, monkeypatch):
    forked, fork = [], os.fork
    monkeypatch.setattr(os, "fork", lambda: forked.append(fork()) or forked[-1])
    trust = evidence_site.trust()
    with tampered.reading() as conn:
        chunks = csv_chunks(conn, read_by(evidence_site, POINT), Range(), trust, apart=True)
        assert next(chunks).startswith("device,point,")
        chunks.close()
    assert forked and forked[0] != 0
    with pytest.raises(ChildProcessError):  # ended, and waited for
        os.waitpid(forked[0], os.WNOHANG)


lines = data._Usual.lines


def written_as_itself(text: str) -> bool:
    """Whether a leaf's value ``text``, taken by the batch-at-once pattern, is what the C
    writer writes for the number the JSON parser reads from it; else ``True`` when the pattern
    does not take it."""
    if re.fullmatch(data._REPR_SAFE + r"\}", text + "}") is None:
        return True
    number = json.loads(text)
    return (str(number) if isinstance(number, int) else repr(number)) == text


@pytest.mark.parametrize(
    "text",
    ["0", "-7", "12345678901234567", "20.1", "-0.0", "0.0001", "12345678901234.5"],
)
def test_the_usual_values_are_taken_at_once(text):
    assert re.fullmatch(data._REPR_SAFE + r"\}", text + "}")
    assert written_as_itself(text)


@pytest.mark.parametrize(
    "text",
    ["20.10", "0.00001", "0.00009", "1234567890123456.5", "-0", "01.5", "1.", "1e5", "0.1000"],
)
def test_a_value_repr_writes_otherwise_is_not_taken_at_once(text):
    assert re.fullmatch(data._REPR_SAFE + r"\}", text + "}") is None


@given(st.floats(allow_nan=False, allow_infinity=False), st.integers(1, 20))
def test_every_float_taken_at_once_is_written_as_itself(value, digits):
    texts = (repr(value), f"{value:.{digits}g}", f"{value:.{digits}f}")
    assert all(written_as_itself(text) for text in texts)


@given(st.from_regex(r"-?(0|[1-9][0-9]{0,16})\.[0-9]{1,17}", fullmatch=True))
def test_every_decimal_taken_at_once_is_written_as_itself(text):
    assert written_as_itself(text)


def test_the_plans_in_force_are_the_stored_plans_the_range_s_batches_name(evidence_site, tampered):
    """Whichever plans a device's batches name, in whatever order they alternate, a request
    is decided on exactly the stored ones its range's batches name (edited in here as an
    insider would: two other plans and one that is not stored)."""
    first, second = sorted(p.digest for p in evidence_site.plans if p.device.id != DEVICE)[:2]
    with tampered.reading() as conn:
        ids = [b.id for b in stored_batches(conn, DEVICE, None, None)]
    named = {ids[3]: first, ids[4]: first, ids[9]: second, ids[12]: first, ids[-1]: "sha256:0"}
    with tampered.engine.begin() as conn:
        for batch_id, digest in named.items():
            update = "UPDATE batches SET plan_digest = :digest WHERE id = :id"
            conn.execute(sa.text(update), {"digest": digest, "id": batch_id})
    edges = [None, *(instant(T0 + timedelta(seconds=s)) for s in range(0, 1100, 75))]
    with tampered.reading() as conn:
        for start in edges:
            for end in edges:
                batches = stored_batches(conn, DEVICE, start, end)
                want = sorted({b.plan_digest for b in batches})
                found = stored_plans_named(conn, DEVICE, start, end)
                assert [d for d, _ in found] == want, (start, end)
                assert all((p is None) == (d == "sha256:0") for d, p in found), (start, end)
                assert all(p is None or p.digest == d for d, p in found), (start, end)


def test_a_plan_row_holding_another_plan_s_bytes_is_no_plan_in_force(evidence_site, tampered):
    """An insider who swaps the bytes of the plan the batches name for another plan's (one
    that grants more, say), or deletes that plan, has the guard decide nothing on the
    device's data: neither on the swapped plan nor on the device's latest one."""
    other = next(p for p in evidence_site.plans if p.device.id != DEVICE)
    with tampered.reading() as conn:
        (named,) = {b.plan_digest for b in stored_batches(conn, DEVICE, None, None)}
        assert [d for d, p in stored_plans_named(conn, DEVICE, None, None) if p] == [named]
    with tampered.engine.begin() as conn:
        body = conn.execute(
            sa.text("SELECT body FROM plans WHERE digest = :d"), {"d": other.digest}
        )
        swap = "UPDATE plans SET body = :body WHERE digest = :digest"
        conn.execute(sa.text(swap), {"body": body.scalar_one(), "digest": named})
    with tampered.reading() as conn:
        assert stored_plans_named(conn, DEVICE, None, None) == [(named, None)]
        with pytest.raises(VerificationError, match=f"the plan {named} its batches name"):
            plans_in_force(conn, DEVICE, Range())
    with tampered.engine.begin() as conn:
        conn.execute(sa.text("DELETE FROM plans WHERE digest = :d"), {"d": named})
    with tampered.reading() as conn, pytest.raises(VerificationError, match="not stored"):
        plans_in_force(conn, DEVICE, Range())
