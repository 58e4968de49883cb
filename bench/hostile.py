"""Benchmark: careless and hostile inputs cost what their work costs, or are refused at once.

    python bench/hostile.py                        # every case
    python bench/hostile.py --case padded-bomb     # one case

The inputs of issue 15, each checked by ``converge check`` in a fresh
process (wall time, CPU time and peak RSS are that process's own; on a
shared machine, CPU time is the figure to compare):

- ``padded-bomb``: 20 MB of comment lines, then a 10-level alias bomb;
  refused (``yaml-alias-bomb``), the budget being the same whatever the padding;
- ``one-point-devices``: 50,000 Modbus devices of one point each: compiled,
  and ``fifty-point-devices``, the same 50,000 points on 1,000 devices, is
  what its time per point is judged against;
- ``name-globs``: a policy selecting by 50,000 name globs (``X0*`` ...) that
  match none of the 1,000-device site's points: 50,000 warnings;
- ``integer-list``: a policy file that is a plain list of 5,000,000 integers:
  refused (``yaml-too-long``) at the entry past the bound.

To measure another checkout, put it first on the path:
``PYTHONPATH=../other python bench/hostile.py``.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

POLICY_LINES = ("policy: p", "title: t", "owner: o", "applies:", "  devices: {class: reactor}")
POLICY = "\n".join([*POLICY_LINES, "capture:", "  every: 5s", ""])
DEVICE_LINES = ("  - id: d{i}", "    class: reactor", "    protocol: modbus")
DEVICE = "\n".join([*DEVICE_LINES, "    endpoint: {{host: 127.0.0.1}}", "    points:", ""])
POINT = "      - {{name: P{j}, signal: temperature, address: {ADDRESS}}}\n".replace(
    "{ADDRESS}", "{{table: holding, register: {j}, type: int16}}"
)


def site(devices: int, points: int) -> str:
    parts = ["site: big\ntimezone: UTC\ndevices:\n"]
    for i in range(devices):
        parts.append(DEVICE.format(i=i))
        parts += [POINT.format(j=j) for j in range(points)]
    return "".join(parts)


def padded_bomb(root: Path) -> None:
    (root / "site.yaml").write_text(site(1, 1))
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    lines += [f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 10) + "]" for i in range(1, 10)]
    padding = ("#" * 99 + "\n") * 200_000
    (root / "policies" / "p.yaml").write_text(padding + "\n".join(lines) + "\n")


def one_point_devices(root: Path) -> None:
    (root / "site.yaml").write_text(site(50_000, 1))
    (root / "policies" / "p.yaml").write_text(POLICY)


def fifty_point_devices(root: Path) -> None:
    (root / "site.yaml").write_text(site(1_000, 50))
    (root / "policies" / "p.yaml").write_text(POLICY)


def name_globs(root: Path) -> None:
    (root / "site.yaml").write_text(site(1_000, 50))
    globs = "".join(f"      - 'X{i}*'\n" for i in range(50_000))
    text = POLICY.replace("capture:", f"  points:\n    name:\n{globs}capture:")
    (root / "policies" / "p.yaml").write_text(text)


def integer_list(root: Path) -> None:
    (root / "site.yaml").write_text(site(1, 1))
    numbers = "".join(f"- {i}\n" for i in range(5_000_000))
    (root / "policies" / "p.yaml").write_text(numbers)


CASES: dict[str, Callable[[Path], None]] = {
    "padded-bomb": padded_bomb,
    "one-point-devices": one_point_devices,
    "fifty-point-devices": fifty_point_devices,
    "name-globs": name_globs,
    "integer-list": integer_list,
}


def measure(case: str, root: Path) -> dict:
    """``converge check`` of the inputs written in ``root`` (by the parent process)."""
    from engine.cli import main

    with contextlib.chdir(root):
        out = io.StringIO()
        started, cpu = time.perf_counter(), time.process_time()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
            code = main(["check", "-p", "policies", "-s", "site.yaml"])
        seconds, cpu = time.perf_counter() - started, time.process_time() - cpu
    lines = out.getvalue().splitlines()
    return {
        "case": case,
        "seconds": seconds,
        "cpu_seconds": cpu,
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "exit": code,
        "said": lines[0][:110] if len(lines) > 1 else "",
        "summary": lines[-1] if lines else "",
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--case", choices=sorted(CASES), action="append")
    parser.add_argument("--worker", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    cases = args.case or list(CASES)
    if args.worker:
        print(json.dumps(measure(cases[0], args.worker)))
        return
    print(f"{'case':<20} {'s':>7} {'CPU s':>7} {'RSS MiB':>8}  exit  summary")
    for case in cases:
        with tempfile.TemporaryDirectory() as tmp:
            (Path(tmp) / "policies").mkdir()
            CASES[case](Path(tmp))
            done = subprocess.run(
                [sys.executable, __file__, "--worker", tmp, "--case", case],
                check=True,
                capture_output=True,
                text=True,
            )
        row = json.loads(done.stdout)
        print(
            f"{row['case']:<20} {row['seconds']:>7.2f} {row['cpu_seconds']:>7.2f}"
            f" {row['peak_rss_mib']:>8.0f}"
            f"  {row['exit']:>4}  {row['summary']}"
        )
        if row["said"]:
            print(f"{'':<20} {row['said']}")


if __name__ == "__main__":
    main()
