"""The fast acceptor says yes only where cerberus says yes, and says it for the examples.

``engine/compile/validate/fastcheck.py`` compiles a schema, nested mappings
and lists and ``check_with`` checks included, into a plain predicate that
skips cerberus for valid documents (cerberus spends half a millisecond on a
device). It must never accept what cerberus refuses: every finding comes from
cerberus. Documents are the example policies, devices, points and addresses,
damaged at one random place.
"""

from __future__ import annotations

import copy
import math
from datetime import date, datetime
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from engine.compile.validate import schemas
from engine.compile.validate.schema_errors import _validator
from engine.plugin_manager import make_plugin_manager

REPO = Path(__file__).resolve().parent.parent
PM = make_plugin_manager()


def examples() -> dict[str, list[tuple[dict[str, Any], dict[str, Any]]]]:
    """(schema, document) pairs from the example files, by kind."""
    policies = [
        yaml.safe_load(p.read_text())
        for p in sorted((REPO / "policies").rglob("*.yaml"))
        if "tests" not in p.parts
    ]
    sites = [
        yaml.safe_load(p.read_text()) for p in sorted((REPO / "examples/sites").rglob("site.yaml"))
    ]
    devices = [d for s in sites for d in s["devices"]]
    found: dict[str, list[tuple[dict[str, Any], dict[str, Any]]]] = {
        "policy": [(schemas.POLICY, p) for p in policies],
        "site": [(schemas.SITE_SHAPE, s) for s in sites],
        "device": [(schemas.DEVICE_SHAPE, d) for d in devices],
        "point": [(schemas.POINT, p) for d in devices for p in d["points"]],
        "address": [
            (PM.hook.converge_address_schema(protocol=d["protocol"]), p["address"])
            for d in devices
            for p in d["points"]
        ],
        "endpoint": [
            (PM.hook.converge_endpoint_schema(protocol=d["protocol"]), d.get("endpoint", {}))
            for d in devices
        ],
    }
    return found


EXAMPLES = examples()
PLUGIN_KINDS = ("address", "endpoint")
"""A plugin's schema may use rules the acceptor leaves to cerberus (``dependencies``)."""
ALL = [pair for pairs in EXAMPLES.values() for pair in pairs if _validator(pair[0], True)[1]]

SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**53), 2**53),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=12),
    st.sampled_from(
        [
            "",
            "5s",
            "0s",
            "1.5m",
            "7y",
            "x",
            "*",
            "[",
            "reactor-*",
            "0 0 * * *",
            "61 * * * *",
            "Europe/Zurich",
            "Mars/Olympus",
            "2027-03-31",
            "2027-02-30",
            "modbus",
            "holding",
            "float32",
            "ns=2;s=x",
            "qa",
            "Qa",
            "archive",
            "capture",
        ]
    ),
    st.dates(),
    st.datetimes(),
)
VALUES = st.recursive(
    SCALARS,
    lambda inner: st.one_of(
        st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=8), inner, max_size=3)
    ),
    max_leaves=6,
)


def places(document: Any, path: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Every path to a value inside ``document``."""
    found = [path]
    if isinstance(document, dict):
        for key, value in document.items():
            found += places(value, (*path, key))
    elif isinstance(document, list):
        for index, value in enumerate(document):
            found += places(value, (*path, index))
    return found


def damaged(document: dict[str, Any], data: st.DataObject) -> dict[str, Any]:
    document = copy.deepcopy(document)
    path = data.draw(st.sampled_from(places(document)[1:] or [()]))
    if not path:
        return document
    *parents, last = path
    parent: Any = document
    for part in parents:
        parent = parent[part]
    action = data.draw(st.sampled_from(["replace", "delete", "add"]))
    if action == "delete" and isinstance(parent, dict):
        del parent[last]
    elif action == "add" and isinstance(parent, dict):
        parent[data.draw(st.text(max_size=8))] = data.draw(VALUES)
    else:
        parent[last] = data.draw(VALUES)
    return document


def same(a: Any, b: Any) -> bool:
    """Equal, with NaN equal to itself (a NaN the acceptor passed through)."""
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    return bool(a == b) and type(a) is type(b)


@pytest.mark.parametrize("kind", EXAMPLES)
def test_every_example_takes_the_fast_path(kind: str) -> None:
    for schema, document in EXAMPLES[kind]:
        validator, accept = _validator(schema, True)
        if accept is None and kind in PLUGIN_KINDS:
            continue
        assert accept is not None, f"the {kind} schema is not compiled"
        assert accept(copy.deepcopy(document)) is not None, document
        assert validator.validate(copy.deepcopy(document)), validator.errors


@settings(max_examples=600)
@given(data=st.data())
def test_the_fast_path_never_accepts_what_cerberus_refuses(data: st.DataObject) -> None:
    schema, original = data.draw(st.sampled_from(ALL))
    document = damaged(original, data)
    validator, accept = _validator(schema, True)
    assert accept is not None
    accepted = accept(copy.deepcopy(document))
    if accepted is None:
        return
    valid = validator.validate(copy.deepcopy(document))
    assert valid, (document, validator.errors)
    assert same(accepted, validator.document), (accepted, validator.document)


def test_dates_and_times_are_kept_apart() -> None:
    """cerberus's date type excludes datetimes; so does the acceptor."""
    schema = {"expires": {"type": "date"}}
    validator, accept = _validator(schema, True)
    assert accept is not None
    assert accept({"expires": date(2027, 3, 31)}) is not None
    assert accept({"expires": datetime(2027, 3, 31, 10)}) is None
    assert not validator.validate({"expires": datetime(2027, 3, 31, 10)})
