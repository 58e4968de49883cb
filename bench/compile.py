"""Benchmark: compile (check + plan) a synthetic site, against just parsing its YAML.

    python bench/compile.py                 # 25k, 50k and 100k points (2,000 devices x 50)
    python bench/compile.py --points 100000 # one size

Each size runs in a fresh process so peak RSS is that size's own. Printed per
size: the time to parse the same YAML files with PyYAML's C loader (the
floor), the time of ``check`` (load, validate, select, merge, plan in
memory), the time to write the plans, peak RSS, and the ratio to parsing.
Targets (issue 3): check + plan <= 10 s and <= 1 GiB at 100k points, <= 3x
the parse time, and linear growth.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import random
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

POINTS_PER_DEVICE = 50
POLICIES = 100
CLASSES = ["reactor", "filler", "mixer", "dryer", "boiler", "chiller", "pump", "tank"]
ZONES = ["production", "utilities", "packaging", "warehouse", "lab"]
SIGNALS = ["temperature", "pressure", "flow", "level", "speed", "status", "ph", "weight"]


def site(devices: int, rng: random.Random) -> dict:
    return {
        "site": "bench-site",
        "timezone": "Europe/Zurich",
        "devices": [device(i, rng) for i in range(devices)],
    }


def device(i: int, rng: random.Random) -> dict:
    kind = (
        "modbus",
        "modbus",
        "modbus",
        "modbus",
        "modbus",
        "modbus",
        "modbus",
        "opcua",
        "opcua",
        "mqtt",
    )[i % 10]
    body = {
        "id": f"dev-{i:05d}",
        "class": CLASSES[i % len(CLASSES)],
        "zone": ZONES[i % len(ZONES)],
        "labels": {"gmp": "true" if i % 3 == 0 else "false", "line": f"l{i % 12}"},
        "protocol": kind,
        "endpoint": endpoint(kind, i),
        "limits": {"min_interval": "1s", "max_requests_per_second": 100},
        "points": [point(kind, i, n) for n in range(POINTS_PER_DEVICE)],
    }
    return body


def endpoint(kind: str, i: int) -> dict:
    if kind == "modbus":
        return {"host": "127.0.0.1", "port": 5020 + i % 1000, "unit": 1}
    if kind == "opcua":
        return {"url": f"opc.tcp://127.0.0.1:{4840 + i % 100}/"}
    return {"broker": "mqtt://127.0.0.1:1883"}


def point(kind: str, i: int, n: int) -> dict:
    signal = SIGNALS[n % len(SIGNALS)]
    body = {"name": f"{signal[:2].upper()}{n:03d}_PV", "signal": signal, "unit": "u"}
    if kind == "modbus":
        body["address"] = {"table": "holding", "register": 2 * n + (n // 10), "type": "float32"}
    elif kind == "opcua":
        body["address"] = {"node": f"ns=2;s=Dev{i}.P{n}"}
    else:
        body["address"] = {"topic": f"site/dev{i}/p{n}", "field": "value"}
    return body


def policy(n: int, rng: random.Random) -> dict:
    body: dict = {
        "policy": f"bench-policy-{n:03d}",
        "title": f"Benchmark policy {n}",
        "owner": "quality-assurance",
        "controls": ["21 CFR 11.10(e)"],
        "applies": {
            "devices": {"class": [CLASSES[n % len(CLASSES)]], "zone": rng.sample(ZONES, 2)},
            "points": {"signal": rng.sample(SIGNALS, 3)},
        },
        "capture": {"every": rng.choice(["5s", "10s", "30s", "60s"])},
        "retention": {"keep_at_least": rng.choice(["1y", "3y", "7y"]), "on_expiry": "archive"},
        "signing": {
            "required": True,
            "keys": [rng.choice(["qa-signing", "site-integrity"])],
            "batch_window": "60s",
        },
        "access": {"read": ["qa"], "export": ["auditor"], "deny": ["contractor"]},
    }
    if n % 10 == 0:
        body["applies"]["devices"]["labels"] = {"gmp": "true"}
        body["applies"]["points"] = {"name": ["TE*", "PR*"]}
    return body


def write_inputs(root: Path, devices: int) -> tuple[list[Path], Path]:
    rng = random.Random(42)
    site_file = root / "site" / "site.yaml"
    site_file.parent.mkdir(parents=True)
    site_file.write_text(yaml.dump(site(devices, rng), Dumper=yaml.CSafeDumper, sort_keys=False))
    policy_files = []
    (root / "policies").mkdir()
    for n in range(POLICIES):
        path = root / "policies" / f"p{n:03d}.yaml"
        path.write_text(yaml.dump(policy(n, rng), Dumper=yaml.CSafeDumper, sort_keys=False))
        policy_files.append(path)
    return policy_files, site_file


def parse_floor(files: list[Path]) -> float:
    """Seconds for PyYAML's C loader to parse ``files``, with the compiler's GC settings."""
    from engine.heap import fewer_collections

    with fewer_collections():
        started = time.perf_counter()
        for path in files:
            yaml.load(path.read_bytes(), Loader=yaml.CSafeLoader)
        return time.perf_counter() - started


def measure(points: int) -> dict:
    from engine.compile import Inputs, compile_project
    from engine.plans.folder import write_plans
    from engine.plugin_manager import make_plugin_manager

    devices = points // POINTS_PER_DEVICE
    pm = make_plugin_manager()
    with tempfile.TemporaryDirectory() as tmp, contextlib.chdir(tmp):
        policies, site_file = write_inputs(Path(tmp), devices)
        parse = parse_floor([*policies, site_file])
        started, cpu = time.perf_counter(), time.process_time()
        result = compile_project(Inputs([Path("policies")], [Path("site")]), pm)
        check, check_cpu = time.perf_counter() - started, time.process_time() - cpu
        assert result.ok, [str(f) for f in result.findings[:5]]
        started = time.perf_counter()
        write_plans(Path(tmp) / "plans", result.plans, result.index())
        write = time.perf_counter() - started
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {
        "points": points,
        "devices": devices,
        "parse_s": parse,
        "check_s": check,
        "check_cpu_s": check_cpu,
        "write_s": write,
        "peak_rss_mib": rss,
        "plans": len(result.plans),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--points", type=int, nargs="*", default=[25_000, 50_000, 100_000])
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(measure(args.points[0])))
        return
    rows = []
    for points in args.points:
        out = subprocess.run(
            [sys.executable, __file__, "--worker", "--points", str(points)],
            check=True,
            capture_output=True,
            text=True,
        ).stdout
        rows.append(json.loads(out))
    report(rows)


def report(rows: list[dict]) -> None:
    print(
        f"{'points':>8} {'devices':>7} {'parse s':>8} {'check s':>8} {'CPU s':>7} {'write s':>8} "
        f"{'total s':>8} {'x parse':>8} {'RSS MiB':>8} {'us/point':>9}"
    )
    for r in rows:
        total = r["check_s"] + r["write_s"]
        cpu, ratio = r.get("check_cpu_s", 0), total / r["parse_s"]
        print(
            f"{r['points']:>8} {r['devices']:>7} {r['parse_s']:>8.2f} {r['check_s']:>8.2f} "
            f"{cpu:>7.2f} {r['write_s']:>8.2f} {total:>8.2f} {ratio:>8.2f} "
            f"{r['peak_rss_mib']:>8.0f} {total / r['points'] * 1e6:>9.1f}"
        )
    big = rows[-1]
    total = big["check_s"] + big["write_s"]
    print(
        f"\ntargets at {big['points']} points: check+plan {total:.2f} s (<= 10 s), "
        f"peak RSS {big['peak_rss_mib']:.0f} MiB (<= 1024 MiB), "
        f"{total / big['parse_s']:.2f}x parse (<= 3x)"
    )
    if len(rows) > 1:
        first = rows[0]
        growth = (total / big["points"]) / ((first["check_s"] + first["write_s"]) / first["points"])
        print(
            f"growth: time per point at {big['points']} is {growth:.2f}x that at "
            f"{first['points']} (1.0 = linear)"
        )


if __name__ == "__main__":
    main()
