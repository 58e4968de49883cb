"""The fast canonical JSON writer is byte-identical to the rfc8785 reference."""

from __future__ import annotations

import math

import pytest
import rfc8785
from hypothesis import given, settings
from hypothesis import strategies as st

from engine.canonical import CanonicalError, canonical_json, canonical_object, read_json

scalars = (
    st.none()
    | st.booleans()
    | st.text()
    | st.integers(min_value=-(2**53) + 1, max_value=2**53 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.sampled_from([20.0, 1e21, 1e-7, 1e16, 0.1 + 0.2, -0.0, 5e-324, 1.7976931348623157e308])
)
values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=30,
)


@settings(max_examples=500)
@given(values)
def test_same_bytes_as_the_reference(value):
    try:
        want = rfc8785.dumps(value)
    except Exception:  # the reference refuses it: so must we
        with pytest.raises(CanonicalError):
            canonical_json(value)
        return
    assert canonical_json(value) == want


def test_astral_keys_sort_by_utf16_code_units():
    value = {"\U0001f600": 1, "\ufb01": 2}
    assert canonical_json(value) == rfc8785.dumps(value)


@pytest.mark.parametrize("bad", [math.nan, math.inf, 2**60])
def test_values_without_a_canonical_form_are_refused(bad):
    with pytest.raises(CanonicalError):
        canonical_json({"x": bad})


def test_object_from_canonical_members():
    value = {"b": [1, 2.5], "a": {"z": None, "y": "é"}}
    members = {k: canonical_json(v) for k, v in value.items()}
    assert canonical_object(members) == rfc8785.dumps(value)


def test_stored_json_nested_too_deep_to_read_is_a_value_error():
    """What json.loads raises for it is a RecursionError; read_json says it as every other
    unreadable JSON is said, so that a reader of stored data names it."""
    with pytest.raises(ValueError, match="nested too deep"):
        read_json(b"[" * 5000 + b"]" * 5000)
    assert read_json(b"[[1]]") == [[1]]
