"""The verifier's shortcuts decide as the long way does.

Every reader of an audit entry (:meth:`AuditEntry.parse`) reads it by one decoding and
one encoding when it plainly is canonical (else the long way, which decodes it twice);
`audit verify` keeps a receipt's positions as runs, and checks one point per retention class
of a receipt's expiry group; each must give the same entries, positions,
errors and verdicts as what it stands for.
"""

from __future__ import annotations

import json
import math

import pytest
import rfc8785
from evidence_kit import fill, verify
from hypothesis import given, settings
from hypothesis import strategies as st
from retention_kit import hold_on, kinds, run
from test_tamper import Named, assert_named

from engine.audit import AuditEntry
from engine.canonical import canonical_json
from engine.retention import run as runs
from engine.store.retention import Scope, positions_of
from engine.verify.retention import Runs
from plugins.fileprincipals import PrincipalsFile

# --- audit entries -----------------------------------------------------------------------

scalars = (
    st.none()
    | st.booleans()
    | st.text()
    | st.integers()
    | st.sampled_from([2**53 - 1, 2**53, -(2**53), 10**15, 10**16, 0, -1])
    | st.floats()
    | st.sampled_from([20.0, 1e21, 1e-7, -0.0, math.nan, math.inf])
    | st.sampled_from(["\U0001f600", "\ud800", "\ufb01", "\x00", '"\\'])
)
values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=20,
)
entries = st.fixed_dictionaries(
    {
        "seq": st.integers(min_value=0, max_value=2**60),
        "time": st.text(max_size=30),
        "kind": st.sampled_from(["batch.stored", "retention.deleted", ""]),
        "actor": values,
        "payload": st.dictionaries(st.text(max_size=8), values, max_size=5),
    },
    optional={"extra": values},
)


def _writings(entry: dict[str, object]) -> list[bytes]:
    """The entry as canonical JSON (when it has that form) and as other writers put it."""
    written = []
    for write in (
        canonical_json,
        rfc8785.dumps,
        lambda v: json.dumps(v, sort_keys=True, separators=(",", ":")).encode(),
        lambda v: json.dumps(v, ensure_ascii=False).encode("utf-8", "surrogatepass"),
    ):
        try:
            written.append(write(entry))
        except Exception:  # no such form (NaN, an unsafe integer, a lone surrogate, ...)
            continue
    return written + [b"\xef\xbb\xbf" + w for w in written[:1]] + [w + b" " for w in written[:1]]


def _outcome(parse: object, data: bytes) -> object:
    try:
        return parse(data)  # type: ignore[operator]
    except Exception as exc:
        return type(exc), str(exc)


@settings(max_examples=400)
@given(entries)
def test_an_entry_is_read_as_its_parse_reads_it(entry):
    for data in _writings(entry):
        assert _outcome(AuditEntry.parse, data) == _outcome(AuditEntry._parse_slowly, data), data


@pytest.mark.parametrize(
    "data",
    [
        b'{"actor":"a","kind":"k","payload":{"n":9007199254740991},"seq":1,"time":"t"}',
        b'{"actor":"a","kind":"k","payload":{"n":9007199254740992},"seq":1,"time":"t"}',
        b'{"actor":"a","kind":"k","payload":{"n":1.5},"seq":1,"time":"t"}',
        b'{"actor":"a","kind":"k","payload":{"n":1.0},"seq":1,"time":"t"}',
        b'{"actor":"a","kind":"k","payload":{"n":1e400},"seq":1,"time":"t"}',
        b'{"actor":"a","kind":"k","payload":{"\\ud83d\\ude00":1,"\xef\xac\x81":2},"seq":1,"time":"t"}',
        b'{"actor":"a","kind":"k","payload":{"s":"\\u00e9"},"seq":1,"time":"t"}',
        b'{"actor":"a","kind":"k","payload":{"s":"\xc3\xa9"},"seq":1,"time":"t"}',
        b'{"actor":"a","kind":"k","payload":{},"seq":1,"time":"t","x":1}',
        b'{"actor":"a","kind":"k","payload":{},"seq":1,"time":"t","time":"t"}',
        b'{"actor":"a","kind":"k","payload":{},"seq":1,"time":"\xff"}',
        b"[1]",
        b"",
    ],
)
def test_an_odd_entry_is_read_as_its_parse_reads_it(data):
    assert _outcome(AuditEntry.parse, data) == _outcome(AuditEntry._parse_slowly, data)


# --- positions as runs -------------------------------------------------------------------

small = st.integers(min_value=-3, max_value=40)
runs_said = st.lists(
    st.lists(small | st.booleans() | st.floats(0, 5) | st.none(), min_size=0, max_size=3)
    | small
    | st.none(),
    max_size=5,
) | st.sampled_from([None, 3, "[[0,1]]", {"0": 1}])


@settings(max_examples=400)
@given(runs_said)
def test_runs_read_as_positions_of_reads_them(said):
    try:
        want = positions_of(said)
    except ValueError as exc:
        with pytest.raises(ValueError, match=f"^{_escaped(str(exc))}$"):
            Runs.parse(said)
        return
    got = Runs.parse(said)
    assert list(got) == want
    assert len(got) == len(want)
    if want:
        assert got.last == want[-1]


@settings(max_examples=300)
@given(runs_said, runs_said)
def test_two_runs_are_equal_exactly_when_their_positions_are(one, other):
    try:
        positions = positions_of(one), positions_of(other)
    except ValueError:
        return
    assert (Runs.parse(one) == Runs.parse(other)) == (positions[0] == positions[1])


def _escaped(text: str) -> str:
    return "".join("\\" + c if c in r"\.^$*+?{}[]|()" else c for c in text)


# --- one point per retention class ----------------------------------------------------------


def test_a_run_ignoring_a_hold_on_one_point_is_named_for_that_point_alone(
    retention_site, backend, principals_file, monkeypatch, tmp_path
):
    """line-a's two points are retained alike (one class, one expiry group); a hold covers
    P1 alone. A run that ignores holds deletes both: P1 is named, P2 is not."""
    store = fill(retention_site, backend, tmp_path, 60)
    try:
        people = PrincipalsFile(principals_file)
        hold_on(retention_site, store, people, Scope(("line-a",), ("P1",)), "a dispute")
        monkeypatch.setattr(runs.HoldBook, "read", lambda book, entries: [])
        run(retention_site, store)
        report = verify(retention_site, store, tmp_path)
        receipts = [r for r in kinds(store, "retention.deleted") if r.payload["device"] == "line-a"]
    finally:
        store.close()
    assert receipts and all(len(r.payload["expiries"]) == 1 for r in receipts)
    assert_named(
        report,
        [
            Named(f"receipt (audit entry {r.seq})", "deletes line-a/P1 during hold 1")
            for r in receipts
        ],
    )
    assert not [p for p in report.problems if "line-a/P2" in p.message]
