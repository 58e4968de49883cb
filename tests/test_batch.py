"""Record leaves and signed batches: golden bytes, windows, waivers, and every tamper named."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
from datetime import UTC, datetime, timedelta
from hashlib import sha256
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import given, settings
from hypothesis import strategies as st

from engine.canonical import CanonicalError, canonical_json
from engine.errors import ConvergeError, PlanRejected
from engine.evidence import batcher as batch_module
from engine.evidence.batcher import Batcher, Window, batch_spec
from engine.plans.body import PlanBody, parse_body
from engine.records import Gap, GapReason, Quality, Reading, Record
from engine.sign import merkle
from engine.sign import note as sign_note
from engine.sign.batch import (
    ZERO_ROOT,
    BadSignature,
    Batch,
    ChainBroken,
    CountMismatch,
    Entry,
    MalformedStatement,
    MissingSignature,
    MissingSigner,
    PointMapMismatch,
    Signature,
    Statement,
    make_batch,
    point_map,
    point_map_hash,
    sign_batch,
    statement,
    verify_batch,
    verify_record,
    verify_statement,
)
from engine.sign.leaf import (
    LeafError,
    leaf_bytes,
    leaf_object,
    new_salt,
    point_map_of,
    record_leaf_hash,
)

REPO = Path(__file__).resolve().parents[1]
VECTORS = sorted((REPO / "tests" / "vectors" / "leaf").glob("*.json"))
DIGEST = "sha256:513ee802b3f51da28db3b1cb9e2629b90333f30239fe51e7e534e777be4ac173"
T0 = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)
KEY_A = Ed25519PrivateKey.from_private_bytes(bytes(range(32)))
KEY_B = Ed25519PrivateKey.from_private_bytes(bytes(range(32, 64)))
WAIVER = {
    "approved_by": "j.doe@example.com",
    "at": "policies/gmp/x.yaml:65:5",
    "expires": "2027-03-31",
    "facets": ["signing"],
    "policy": "gmp-critical-process-data",
    "reason": "legacy RTU",
}


def t(text: str) -> datetime:
    return datetime.fromisoformat(text)


def record_from(fields: dict[str, Any]) -> Record:
    args = {k: v for k, v in fields.items() if k != "type"}
    for k in ("collected_at", "scheduled_at", "source_at", "server_at", "last_scheduled_at"):
        if k in args:
            args[k] = t(args[k])
    if fields["type"] == "gap":
        return Gap(**{**args, "reason": GapReason(args["reason"])})
    return Reading(**{**args, "quality": Quality(args["quality"])})


def plan(window_ms: int = 60_000, **points: dict[str, Any]) -> PlanBody:
    """A device plan of reactor-7; default: TT701 and PT701 signed by key a."""
    signed = {"signing": {"required": True, "keys": ["a"], "batch_window_ms": window_ms}}
    points = points or {"TT701": signed, "PT701": signed}
    body = {
        "site": "plant",
        "timezone": "UTC",
        "as_of": "2026-06-01",
        "device": {"id": "reactor-7", "protocol": "modbus", "endpoint": {}, "limits": {}},
        "digest": DIGEST,
        "points": [{"name": n, "address": {}, **p} for n, p in points.items()],
        "read_groups": [],
    }
    return parse_body(body, b"", "test plan")


def reading(at: datetime, value: float = 21.5, point: str = "TT701") -> Reading:
    return Reading("reactor-7", point, at + timedelta(milliseconds=12), value, scheduled_at=at)


def gap(at: datetime, point: str = "PT701") -> Gap:
    return Gap("reactor-7", point, at, GapReason.TIMEOUT)


def batches_of(records: list[Record], body: PlanBody | None = None) -> list[Batch]:
    out: list[Batch] = []
    batcher = Batcher([body or plan()], out.append)

    async def feed() -> None:
        for r in records:
            await batcher.put(r)
        await batcher.close()

    asyncio.run(feed())
    return out


def pairs(batch: Batch) -> list[tuple[Record, bytes]]:
    return [(e.record, e.salt) for e in batch.entries]


def one_batch(n: int = 6) -> Batch:
    records: list[Record] = [reading(T0 + timedelta(seconds=5 * i), 20 + i) for i in range(n)]
    (batch,) = batches_of([*records, gap(T0 + timedelta(seconds=5))])
    return batch


# --- leaf bytes ------------------------------------------------------------


@pytest.mark.parametrize("path", VECTORS, ids=lambda p: p.stem)
def test_leaf_vectors(path: Path):
    v = json.loads(path.read_text("utf-8"))
    data = leaf_bytes(record_from(v["record"]), bytes.fromhex(v["salt"]))
    assert data == v["leaf"].encode("utf-8")
    assert data.hex() == v["leaf_hex"]
    assert merkle.leaf_hash(data).hex() == v["leaf_hash"]
    assert canonical_json(json.loads(data)) == data


def test_the_documented_examples_are_the_vectors():
    page = (REPO / "docs" / "records.md").read_text("utf-8")
    for name in ("reading-scheduled", "gap-exception", "reading-held", "gap-run"):
        v = json.loads((REPO / "tests" / "vectors" / "leaf" / f"{name}.json").read_text("utf-8"))
        assert v["leaf"] in page
        assert v["leaf_hash"] in page
        assert (
            f"{len(v['leaf'].encode())}\nbytes" in page
            or f"{len(v['leaf'].encode())} bytes" in page
        )


def test_golden_reading_leaf():
    r = Reading(
        "reactor-7",
        "TT701_PV",
        t("2026-06-01T12:00:05.012345Z"),
        21.35,
        scheduled_at=t("2026-06-01T12:00:05Z"),
    )
    data = leaf_bytes(r, bytes(range(16)))
    assert data == (
        b'{"collected_at":"2026-06-01T12:00:05.012345Z","device":"reactor-7","point":"TT701_PV",'
        b'"quality":"good","salt":"000102030405060708090a0b0c0d0e0f",'
        b'"scheduled_at":"2026-06-01T12:00:05.000000Z","type":"reading","v":1,"value":21.35}'
    )
    assert merkle.leaf_hash(data).hex() == (
        "743ba23ec78d3f533c5131dd98e96d0cc81e9b731460484c27721a4cd8aabfde"
    )


def test_optional_members_appear_only_when_set():
    r = Reading("d", "p", T0, None, Quality.BAD, coalesced=0)
    assert set(leaf_object(r, bytes(16))) == {
        "v",
        "type",
        "device",
        "point",
        "collected_at",
        "value",
        "quality",
        "salt",
    }
    g = Gap("d", "p", T0, GapReason.REFUSED)
    assert set(leaf_object(g, bytes(16))) == {
        "v",
        "type",
        "device",
        "point",
        "scheduled_at",
        "reason",
        "salt",
    }
    assert leaf_object(dataclasses.replace(r, coalesced=4), bytes(16))["coalesced"] == 4


def test_times_in_other_offsets_are_written_in_utc():
    cet = datetime.fromisoformat("2026-06-01T14:00:05+02:00")
    assert leaf_bytes(reading(cet), bytes(16)) == leaf_bytes(
        reading(t("2026-06-01T12:00:05Z")), bytes(16)
    )


def test_salt_changes_the_leaf_hash():
    r = reading(T0)
    assert record_leaf_hash(r, bytes(16)) != record_leaf_hash(r, bytes(15) + b"\x01")
    assert len(new_salt()) == 16
    assert new_salt() != new_salt()


def test_the_batchers_salts_are_distinct_and_a_forked_child_never_repeats_its_parents():
    salts = batch_module._salts().__next__
    drawn = [salts() for _ in range(3000)]  # across pool refills
    assert len(set(drawn)) == 3000 and {len(s) for s in drawn} == {16}
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child draws from the pool it inherited
        os.write(write, salts())
        os._exit(0)
    os.waitpid(pid, 0)
    child = os.read(read, 16)
    os.close(read)
    os.close(write)
    assert child != salts() and child not in drawn


@pytest.mark.parametrize(
    "record, salt",
    [
        (reading(T0), bytes(15)),
        (reading(T0), bytes(17)),
        (Reading("d", "p", datetime(2026, 6, 1), 1.0), bytes(16)),
        (Reading("d", "p", T0, float("nan")), bytes(16)),
        (Reading("d", "p", T0, float("inf")), bytes(16)),
    ],
    ids=["short-salt", "long-salt", "naive-time", "nan", "infinity"],
)
def test_records_without_a_leaf_are_refused(record: Record, salt: bytes):
    with pytest.raises(LeafError):
        leaf_bytes(record, salt)


def test_unsafe_integers_are_refused():
    with pytest.raises(CanonicalError):
        leaf_bytes(Reading("d", "p", T0, 2**53), bytes(16))


# --- batching --------------------------------------------------------------


def test_windows_split_at_their_boundaries():
    ms = timedelta(milliseconds=1)
    at = [T0 - ms, T0, T0 + 60_000 * ms - ms, T0 + 60_000 * ms]
    batches = batches_of([reading(a) for a in at])
    assert [b.count for b in batches] == [1, 2, 1]
    assert [(b.window_start, b.window_end) for b in batches] == [
        ("2026-06-01T11:59:00.000000Z", "2026-06-01T12:00:00.000000Z"),
        ("2026-06-01T12:00:00.000000Z", "2026-06-01T12:01:00.000000Z"),
        ("2026-06-01T12:01:00.000000Z", "2026-06-01T12:02:00.000000Z"),
    ]


def test_unscheduled_readings_go_by_collection_time():
    r = Reading("reactor-7", "TT701", T0 + timedelta(seconds=60), 1.0)
    late_slot = reading(T0 + timedelta(seconds=59))  # collected 12 ms later, slot still in 1st
    batches = batches_of([late_slot, r])
    assert [b.count for b in batches] == [1, 1]


def test_the_smallest_window_of_the_plan_wins():
    body = plan(
        TT701={"signing": {"required": True, "keys": ["a"], "batch_window_ms": 10_000}},
        PT701={"signing": {"required": True, "keys": ["a"], "batch_window_ms": 60_000}},
    )
    assert body.window_ms == 10_000
    assert plan(TT701={}).window_ms == 60_000


def test_gaps_are_in_batches_and_chained():
    records = [
        reading(T0),
        gap(T0),
        gap(T0 + timedelta(seconds=61)),
        reading(T0 + timedelta(seconds=61)),
    ]
    first, second = batches_of(records)
    assert [type(e.record) for e in first.entries] == [Gap, Reading]
    assert first.previous_root == ZERO_ROOT
    assert second.previous_root == first.root
    assert first.root == merkle.root_of_hashes([e.leaf_hash for e in first.entries])


def test_a_late_record_gets_a_further_batch_of_its_window():
    late = gap(T0 + timedelta(seconds=55))
    batches = batches_of([reading(T0), reading(T0 + timedelta(seconds=60)), late])
    assert [(b.window_start, b.count) for b in batches] == [
        ("2026-06-01T12:00:00.000000Z", 1),
        ("2026-06-01T12:00:00.000000Z", 1),
        ("2026-06-01T12:01:00.000000Z", 1),
    ]
    assert batches[1].entries[0].record == late
    assert [b.previous_root for b in batches[1:]] == [b.root for b in batches[:-1]]


def test_flush_waits_for_the_grace():
    out: list[Batch] = []

    async def run() -> None:
        batcher = Batcher([plan()], out.append, grace_ms=2_000)
        await batcher.put(reading(T0))
        await batcher.flush(T0 + timedelta(seconds=61.999))
        assert out == []
        await batcher.flush(T0 + timedelta(seconds=62))
        assert len(out) == 1
        await batcher.close()
        assert len(out) == 1

    asyncio.run(run())


def test_batcher_is_a_sink_with_an_async_downstream():
    got: list[Batch] = []

    async def downstream(batch: Batch) -> None:
        await asyncio.sleep(0)
        got.append(batch)

    async def run() -> None:
        batcher = Batcher([plan()], downstream)
        await batcher.put(reading(T0))
        await batcher.close()
        with pytest.raises(ConvergeError, match="closed"):
            await batcher.put(reading(T0))

    asyncio.run(run())
    assert [b.count for b in got] == [1]


@pytest.mark.parametrize("writer", ["batches", "windows"])
def test_a_refused_record_leaves_no_window_behind(writer: str):
    """A reading with no leaf (not finite) is refused; the batches are those of the others."""
    got: list[int] = []

    async def window(_plan: Any, _index: int, records: Window) -> None:
        got.append(len(records.records))

    async def run() -> None:
        on_window = window if writer == "windows" else None
        batcher = Batcher([plan()], lambda batch: got.append(batch.count), on_window=on_window)
        await batcher.put(reading(T0))
        with pytest.raises(LeafError):
            await batcher.put(reading(T0 + timedelta(minutes=1), float("nan")))
        await batcher.put(reading(T0 + timedelta(minutes=2)))
        await batcher.close()

    asyncio.run(run())
    assert got == [1, 1]


def test_records_outside_the_plans_are_refused():
    with pytest.raises(ConvergeError, match="no plan"):
        batches_of([Reading("other", "TT701", T0, 1.0)])
    with pytest.raises(ConvergeError, match="not in the plan"):
        batches_of([reading(T0, point="XX")])


def test_required_signing_without_keys_is_refused():
    with pytest.raises(PlanRejected, match="names no key"):
        plan(TT701={"signing": {"required": True}})


entries_st = st.lists(
    st.tuples(
        st.integers(0, 59_999),
        st.sampled_from(["TT701", "PT701"]),
        st.booleans(),
        st.floats(-1e6, 1e6),
        st.binary(min_size=16, max_size=16),
    ),
    min_size=1,
    max_size=30,
)


@settings(max_examples=60)
@given(entries_st, st.randoms(use_true_random=False))
def test_the_root_does_not_depend_on_arrival_order(specs: list[Any], rnd: Any):
    def entry(ms: int, point: str, is_gap: bool, value: float, salt: bytes) -> Entry:
        at = T0 + timedelta(milliseconds=ms)
        return Entry.of(gap(at, point) if is_gap else reading(at, value, point), salt)

    entries = [entry(*s) for s in specs]
    shuffled = entries[:]
    rnd.shuffle(shuffled)
    dp = batch_spec(plan())
    window = int(T0.timestamp() * 1000) // dp.window_ms
    a, b = make_batch(dp, window, entries, ZERO_ROOT), make_batch(dp, window, shuffled, ZERO_ROOT)
    assert a.root == b.root and a.entries == b.entries
    verify_batch(statement(a), [], {}, [(e.record, e.salt) for e in shuffled], previous_root=None)


# --- signing and waivers ---------------------------------------------------


def test_every_batch_carries_every_key_its_plan_requires():
    """Whichever points a batch holds: one holding only a waived point is still signed by the
    keys the plan's other points require, so a batch cannot shed a key by shedding points."""
    body = plan(
        TT701={"waived": [WAIVER, {**WAIVER, "facets": ["capture"]}]},
        PT701={"signing": {"required": True, "keys": ["b", "a"]}},
    )
    (waived_point_only,) = batches_of([reading(T0)], body)
    assert (waived_point_only.signed, waived_point_only.keys) == (True, ("a", "b"))
    (mixed,) = batches_of([reading(T0), gap(T0)], body)
    assert (mixed.signed, mixed.keys, mixed.waiver) == (True, ("a", "b"), ())


def test_a_plan_whose_signing_is_all_waived_gives_unsigned_batches_with_the_waivers():
    body = plan(TT701={"waived": [WAIVER, {**WAIVER, "facets": ["capture"]}]}, PT701={})
    (waived,) = batches_of([reading(T0), gap(T0)], body)
    assert (waived.signed, waived.keys, waived.waiver) == (False, (), (WAIVER,))
    assert sign_batch(waived, {}) == []
    verify_batch(statement(waived), [], {}, pairs(waived), previous_root=ZERO_ROOT)


def test_the_documented_statement_and_signature():
    v = {
        n: json.loads((REPO / "tests/vectors/leaf" / f"{n}.json").read_text("utf-8"))
        for n in ("reading-scheduled", "gap-exception")
    }
    signed = {"signing": {"required": True, "keys": ["site-integrity"], "batch_window_ms": 60_000}}
    body = plan(TT701_PV=signed, PT701_PV=signed)
    dp = batch_spec(body)
    entries = [Entry.of(record_from(x["record"]), bytes.fromhex(x["salt"])) for x in v.values()]
    batch = make_batch(dp, int(T0.timestamp() * 1000) // 60_000, entries, ZERO_ROOT)
    page = (REPO / "docs" / "records.md").read_text("utf-8")
    assert statement(batch).decode() in page
    (sig,) = sign_batch(batch, {"site-integrity": KEY_A})
    assert sig.signature.hex() in page


def two_key_batch() -> Batch:
    body = plan(TT701={"signing": {"required": True, "keys": ["a", "b"]}}, PT701={})
    (batch,) = batches_of([reading(T0 + timedelta(seconds=i), i) for i in range(5)], body)
    return batch


PUBLIC = {"a": KEY_A.public_key(), "b": KEY_B.public_key()}
SIGNERS = {"a": KEY_A, "b": KEY_B}


def test_signatures_verify_with_real_keys():
    batch = two_key_batch()
    sigs = sign_batch(batch, SIGNERS)
    assert [s.key for s in sigs] == ["a", "b"] and all(len(s.signature) == 64 for s in sigs)
    parsed = verify_batch(statement(batch), sigs, PUBLIC, pairs(batch), previous_root=ZERO_ROOT)
    assert parsed.root == batch.root and parsed.count == 5


def test_signing_without_a_required_key_names_it():
    with pytest.raises(MissingSigner, match="'b'"):
        sign_batch(two_key_batch(), {"a": KEY_A})


def test_signatures_of_unknown_keys_are_ignored():
    batch = two_key_batch()
    sigs = [*sign_batch(batch, SIGNERS), Signature("c", bytes(64))]
    verify_statement(statement(batch), sigs, PUBLIC, previous_root=None)


# --- tampering -------------------------------------------------------------


def check(
    batch: Batch,
    records: list[tuple[Record, bytes]],
    sigs: list[Signature] | None = None,
    previous: bytes | None = ZERO_ROOT,
    data: bytes | None = None,
) -> None:
    sigs = sign_batch(batch, SIGNERS) if sigs is None else sigs
    verify_batch(data or statement(batch), sigs, PUBLIC, records, previous_root=previous)


def replace(records: list[tuple[Record, bytes]], i: int, **kw: Any) -> list[tuple[Record, bytes]]:
    out = records[:]
    out[i] = (dataclasses.replace(out[i][0], **kw), out[i][1])
    return out


@pytest.mark.parametrize(
    "change",
    [
        {"value": 99.0},
        {"collected_at": T0 + timedelta(seconds=1, microseconds=1)},
        {"quality": Quality.UNCERTAIN},
        {"point": "PT701"},
        {"raw_code": 0},
    ],
    ids=["value", "timestamp", "quality", "point", "raw-code"],
)
def test_a_changed_record_is_a_root_mismatch(change: dict[str, Any]):
    batch = two_key_batch()
    with pytest.raises(merkle.RootMismatch) as info:
        check(batch, replace(pairs(batch), 1, **change))
    assert info.value.want == batch.root and info.value.got != batch.root


def test_a_changed_salt_is_a_root_mismatch():
    batch = two_key_batch()
    records = pairs(batch)
    records[0] = (records[0][0], bytes(16))
    with pytest.raises(merkle.RootMismatch):
        check(batch, records)


def test_a_deleted_record_is_a_count_mismatch():
    batch = two_key_batch()
    with pytest.raises(CountMismatch) as info:
        check(batch, pairs(batch)[1:])
    assert (info.value.got, info.value.want) == (4, 5)


def test_an_inserted_forged_record_is_detected():
    batch = two_key_batch()
    forged = (reading(T0 + timedelta(seconds=2), 1.0), new_salt())
    with pytest.raises(CountMismatch):
        check(batch, [*pairs(batch), forged])
    with pytest.raises(merkle.RootMismatch):  # and in place of a deleted one
        check(batch, [*pairs(batch)[1:], forged])


def test_reordered_records_still_verify_but_not_at_another_index():
    batch = two_key_batch()
    check(batch, pairs(batch)[::-1])
    data = statement(batch)
    entry = batch.entries[2]
    verify_record(data, entry.record, entry.salt, 2, batch.inclusion_proof(2))
    with pytest.raises(merkle.RootMismatch):
        verify_record(data, entry.record, entry.salt, 3, batch.inclusion_proof(2))
    with pytest.raises(merkle.RootMismatch):
        verify_record(
            data, batch.entries[3].record, batch.entries[3].salt, 2, batch.inclusion_proof(2)
        )


def test_a_stripped_signature_is_named():
    batch = two_key_batch()
    with pytest.raises(MissingSignature) as info:
        check(batch, pairs(batch), sign_batch(batch, SIGNERS)[:1])
    assert info.value.key == "b"


def test_a_swapped_signature_is_named():
    batch = two_key_batch()
    a, b = sign_batch(batch, SIGNERS)
    with pytest.raises(BadSignature) as info:
        check(batch, pairs(batch), [Signature("a", b.signature), Signature("b", a.signature)])
    assert info.value.key == "a"
    assert isinstance(info.value, sign_note.BadSignature)


def test_a_signature_of_another_batch_is_bad():
    batch, other = two_key_batch(), one_batch()
    with pytest.raises(BadSignature):
        check(batch, pairs(batch), sign_batch(other, {"a": KEY_A}) + sign_batch(batch, SIGNERS)[1:])


def test_a_changed_statement_breaks_the_signatures():
    batch = two_key_batch()
    sigs = sign_batch(batch, SIGNERS)
    forged = statement(dataclasses.replace(batch, entries=batch.entries[1:]))
    with pytest.raises(BadSignature):
        check(batch, pairs(batch)[1:], sigs, data=forged)


def test_records_of_other_points_than_the_signed_point_map_are_refused():
    """The same records under a statement whose point map names each of another point (the
    gap's and a reading's points swapped): the root holds, the map does not."""
    batch = one_batch()
    points = [e.record.point for e in batch.entries]
    points[0], points[1] = points[1], points[0]
    assert points != [e.record.point for e in batch.entries]
    lying = dataclasses.replace(Statement.of(batch), point_map=point_map_hash(points))
    with pytest.raises(PointMapMismatch):
        verify_batch(lying.to_bytes(), [], {}, pairs(batch), previous_root=None)


def test_the_point_map_is_read_from_the_leaves_as_the_collector_writes_it():
    """The store's map, read from the leaves (names with escapes and beyond ASCII included),
    is the bytes whose SHA-256 the collector signed."""
    names = ["TT701", 'quote"d', "back\\slash", "tab\there", "Temperatur-Ü"]
    records = [reading(T0 + timedelta(seconds=i), point=n) for i, n in enumerate(names)]
    (batch,) = batches_of(records, plan(**{name: {} for name in names}))
    leaves = [e.leaf for e in batch.entries]
    assert point_map_of(leaves) == point_map([e.record.point for e in batch.entries])
    assert json.loads(point_map_of(leaves)) == [e.record.point for e in batch.entries]
    assert sha256(point_map_of(leaves)).digest() == Statement.of(batch).point_map


def test_a_v1_statement_is_refused():
    """A statement of before point maps: no ``point_map``, format v1 (docs/records.md)."""
    said = json.loads(statement(one_batch()))
    del said["point_map"]
    v1 = canonical_json(said | {"format": "converge.batch/v1"})
    with pytest.raises(MalformedStatement):
        verify_statement(v1, [], {}, previous_root=None)


def test_a_wrong_previous_root_breaks_the_chain():
    batch = two_key_batch()
    with pytest.raises(ChainBroken) as info:
        check(batch, pairs(batch), previous=b"\x01" * 32)
    assert (info.value.got, info.value.want) == (ZERO_ROOT, b"\x01" * 32)


@pytest.mark.parametrize(
    "data",
    [b"{}", b"not json", b'{"count":1}', b" " + b"{}"],
    ids=["empty-object", "not-json", "missing-members", "leading-space"],
)
def test_malformed_statements_are_refused(data: bytes):
    with pytest.raises(MalformedStatement):
        verify_statement(data, [], {}, previous_root=None)


def test_a_non_canonical_statement_is_refused():
    data = statement(one_batch())
    spaced = json.dumps(json.loads(data)).encode()
    with pytest.raises(MalformedStatement):
        verify_statement(spaced, [], {}, previous_root=None)
    upper = data.replace(b'"previous_root":"00', b'"previous_root":"0A')
    with pytest.raises(MalformedStatement):
        verify_statement(upper, [], {}, previous_root=None)
    boolean = data.replace(b'"count":7', b'"count":true')
    assert boolean != data
    with pytest.raises(MalformedStatement):
        verify_statement(boolean, [], {}, previous_root=None)
