"""Merge properties on generated projects.

1. A small, obviously-correct reference merger, written from the table in
   POLICY-LANGUAGE.md without sharing code with ``engine.compile.merge``, agrees
   with the real one on every generated project.
2. Plan bytes do not depend on the order of files or of policies, nor on a
   file being given twice; the order of list items changes nothing but the
   files' bytes, so only the plan's ``sources`` digests and its own digest.
"""

from __future__ import annotations

import contextlib
import json
import random
import tempfile
from datetime import date
from pathlib import Path
from typing import Any

import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from engine.compile import Inputs, compile_project
from engine.durations import parse_duration

AT = date(2026, 6, 1)
DEVICES = ["plc-1", "plc-2", "rtu-7"]
POINTS = [("TT101_PV", "temperature"), ("PT201_PV", "pressure"), ("FT301_PV", "flow")]
ROLES = ["qa", "auditor", "process-engineering", "contractor", "ops"]
KEYS = ["qa-signing", "site-integrity", "ops-signing"]


def site_yaml() -> str:
    devices = []
    for n, device in enumerate(DEVICES):
        points = [
            {
                "name": name,
                "signal": signal,
                "unit": "u",
                "address": {"table": "holding", "register": 10 * i, "type": "float32"},
            }
            for i, (name, signal) in enumerate(POINTS)
        ]
        devices.append(
            {
                "id": device,
                "class": "reactor" if n < 2 else "rtu",
                "protocol": "modbus",
                "endpoint": {"host": "127.0.0.1", "port": 5020 + n},
                "limits": {"min_interval": "1s"},
                "points": points,
            }
        )
    return yaml.safe_dump({"site": "plant", "timezone": "Europe/Zurich", "devices": devices})


durations_s = st.sampled_from(["1s", "5s", "10s", "60s", "1h"])
retention_min = st.sampled_from(["30d", "1y", "7y"])
retention_max = st.sampled_from(["10y", "20y"])
roles = st.lists(st.sampled_from(ROLES), max_size=3)

facet_groups = st.fixed_dictionaries(
    {},
    optional={
        "capture": st.fixed_dictionaries(
            {},
            optional={
                "every": durations_s,
                "cron": st.lists(
                    st.sampled_from(["0 * * * *", "*/15 * * * *", "0 0 * * *"]), max_size=2
                ),
                "on_change": st.fixed_dictionaries({"deadband": st.sampled_from([0, 0.1, 0.5, 2])}),
            },
        ),
        "retention": st.fixed_dictionaries(
            {},
            optional={
                "keep_at_least": retention_min,
                "keep_at_most": retention_max,
                "on_expiry": st.sampled_from(["delete", "archive"]),
            },
        ),
        "signing": st.fixed_dictionaries(
            {},
            optional={
                "required": st.booleans(),
                "keys": st.lists(st.sampled_from(KEYS), max_size=2),
                "batch_window": st.sampled_from(["10s", "60s", "5m"]),
            },
        ),
        "access": st.fixed_dictionaries(
            {}, optional={"read": roles, "export": roles, "hold": roles, "deny": roles}
        ),
    },
)

applies = st.fixed_dictionaries(
    {},
    optional={
        "devices": st.fixed_dictionaries(
            {},
            optional={
                "id": st.lists(st.sampled_from([*DEVICES, "plc-*"]), min_size=1, max_size=2),
                "class": st.sampled_from(["reactor", "rtu"]),
            },
        ),
        "points": st.fixed_dictionaries(
            {},
            optional={
                "signal": st.lists(st.sampled_from([s for _, s in POINTS]), min_size=1, max_size=2),
            },
        ),
    },
)

exception = st.fixed_dictionaries(
    {
        "devices": st.fixed_dictionaries(
            {"id": st.lists(st.sampled_from(DEVICES), min_size=1, max_size=2)}
        ),
        "waive": st.lists(
            st.sampled_from(["capture", "retention", "signing", "access"]),
            min_size=1,
            max_size=2,
            unique=True,
        ),
        "reason": st.just("legacy device, replacement planned"),
        "approved_by": st.just("j.doe"),
        "expires": st.sampled_from([date(2026, 1, 1), date(2027, 1, 1)]),
    }
)


@st.composite
def policies(draw: st.DrawFn) -> list[dict[str, Any]]:
    count = draw(st.integers(1, 4))
    result = []
    for i in range(count):
        body = {
            "policy": f"policy-{i}",
            "title": f"P{i}",
            "owner": "qa",
            "applies": draw(applies),
            **draw(facet_groups),
        }
        excs = draw(st.lists(exception, max_size=1))
        if excs:
            body["exceptions"] = excs
        result.append(body)
    return result


# --- the reference merger -----------------------------------------------------------------


def _selected(policy: dict[str, Any], device: str, device_class: str, signal: str) -> bool:
    devices = policy["applies"].get("devices", {})
    ids = devices.get("id")
    if ids and not any(device == i or (i.endswith("*") and device.startswith(i[:-1])) for i in ids):
        return False
    if "class" in devices and devices["class"] != device_class:
        return False
    signals = policy["applies"].get("points", {}).get("signal")
    return not signals or signal in signals


def _waived(policy: dict[str, Any], device: str) -> set[str]:
    waived: set[str] = set()
    for exc in policy.get("exceptions", []):
        if device in exc["devices"]["id"] and exc["expires"] >= AT:
            waived |= set(exc["waive"])
    return waived


def reference_merge(  # noqa: PLR0912 - one branch per row of the merge table, on purpose
    pols: list[dict[str, Any]], device: str, device_class: str, signal: str
) -> dict[str, Any]:
    """The merged facets of one point, straight from the table in POLICY-LANGUAGE.md."""
    values: dict[str, list[Any]] = {}
    for policy in pols:
        if not _selected(policy, device, device_class, signal):
            continue
        waived = _waived(policy, device)
        for group in ("capture", "retention", "signing", "access"):
            if group in waived:
                continue
            for key, value in policy.get(group, {}).items():
                if key == "on_change":
                    values.setdefault("capture.on_change.deadband", []).append(value["deadband"])
                else:
                    values.setdefault(f"{group}.{key}", []).append(value)
    merged: dict[str, Any] = {}
    for facet, vals in values.items():
        if facet in ("capture.every", "retention.keep_at_most", "signing.batch_window"):
            merged[facet + "_ms"] = min(parse_duration(v) for v in vals)
        elif facet == "retention.keep_at_least":
            merged[facet + "_ms"] = max(parse_duration(v) for v in vals)
        elif facet == "capture.on_change.deadband":
            merged[facet] = min(vals)
        elif facet == "retention.on_expiry":
            merged[facet] = "archive" if "archive" in vals else "delete"
        elif facet == "signing.required":
            merged[facet] = any(vals)
        else:  # cron, keys and roles: the union
            merged[facet] = sorted({name for v in vals for name in v})
    return merged


def engine_merge(pols: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    with _project(pols) as (root, files), contextlib.chdir(root):
        result = compile_project(Inputs(files, [Path("site.yaml")], at=AT), _PM)
    assert not [str(f) for f in result.findings if f.code.startswith(("yaml", "wrong", "unknown"))]
    out = {}
    for mp in result.merged.points:
        out[mp.target.ref] = {
            f: (list(m.value) if isinstance(m.value, tuple) else m.value)
            for f, m in mp.facets.items()
        }
    return out


@contextlib.contextmanager
def _project(pols: list[dict[str, Any]], order: list[int] | None = None):
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        (root / "site.yaml").write_text(site_yaml())
        files = []
        for i, policy in enumerate(pols):
            path = root / f"p{i}.yaml"
            path.write_text(yaml.safe_dump(policy, sort_keys=False, default_flow_style=None))
            files.append(path.relative_to(root))
        yield root, [files[i] for i in (order or range(len(files)))]


from engine.plugin_manager import make_plugin_manager  # noqa: E402

_PM = make_plugin_manager()
SETTINGS = settings(max_examples=60)


@SETTINGS
@given(policies())
def test_engine_agrees_with_the_reference_merger(pols):
    merged = engine_merge(pols)
    for n, device in enumerate(DEVICES):
        for name, signal in POINTS:
            want = reference_merge(pols, device, "reactor" if n < 2 else "rtu", signal)
            assert merged[f"{device}/{name}"] == want, f"{device}/{name}"


def _plan_bytes(pols: list[dict[str, Any]], order: list[int], twice: bool) -> dict[str, bytes]:
    with _project(pols, order) as (root, files), contextlib.chdir(root):
        given_files = [*files, files[0]] if twice else files
        result = compile_project(Inputs(given_files, [Path("site.yaml")], at=AT), _PM)
    return {p.device: p.canonical for p in result.plans}


def _without_file_digests(plans: dict[str, bytes]) -> dict[str, dict[str, Any]]:
    """The plans with the digests that follow from file bytes left out (file names kept)."""
    out = {}
    for device, data in plans.items():
        body = {k: v for k, v in json.loads(data).items() if k != "digest"}
        body["sources"] = sorted(body["sources"])
        out[device] = body
    return out


def _shuffled_lists(value: Any, rng: random.Random) -> Any:
    if isinstance(value, dict):  # key order decides line numbers, hence provenance: kept
        return {k: _shuffled_lists(v, rng) for k, v in value.items()}
    if isinstance(value, list):
        copy = [_shuffled_lists(v, rng) for v in value]
        rng.shuffle(copy)
        return copy + copy[:1] if copy and isinstance(copy[0], str) else copy
    return value


@SETTINGS
@given(policies(), st.randoms(use_true_random=False))
def test_plan_bytes_ignore_order_and_duplicates(pols, rng):
    baseline = _plan_bytes(pols, list(range(len(pols))), twice=False)
    order = list(range(len(pols)))
    rng.shuffle(order)
    shuffled = [_shuffled_lists(p, rng) for p in pols]
    in_order = _plan_bytes(shuffled, list(range(len(pols))), twice=False)
    assert _plan_bytes(shuffled, order, twice=True) == in_order
    assert _without_file_digests(in_order) == _without_file_digests(baseline)
