"""`converge run` stops cleanly on SIGINT and SIGTERM: exit 0, every record flushed whole.

Real processes end to end: `converge simulate` serves a small Modbus site on a
free port, `converge run` collects from it, and the test signals the collector
once its output file holds ten readings. The collector writes that file through
a buffer, a block (4 KiB here) at a time: so the signal comes while part of the
output is still in the buffer, often a line cut in two, which the stop must
write out whole.
"""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from waiting import wait_until

from engine.testkit import ProjectBuilder

SITE = """
    site: signals
    timezone: UTC
    devices:
      - id: plc
        protocol: modbus
        endpoint: {{host: 127.0.0.1, port: {port}}}
        limits: {{min_interval: 100ms}}
        points:
          - {{name: T1, signal: temperature, address: {{table: holding, register: 0, type: int16}}}}
          - {{name: T2, signal: temperature, address: {{table: holding, register: 1, type: int16}}}}
    """
POLICY = """
    policy: capture-fast
    title: Capture fast
    owner: qa
    applies: {}
    capture: {every: 200ms}
    """
CONVERGE = [sys.executable, "-m", "engine.cli"]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def listening(port: int) -> None:
    def answers() -> bool:
        with socket.socket() as probe:
            return probe.connect_ex(("127.0.0.1", port)) == 0

    wait_until(answers, f"the simulator to listen on {port}", within=60)


def readings_in(records: Path) -> list[dict[str, object]]:
    """The readings among the whole lines written to ``records`` so far."""
    try:
        written = records.read_bytes()
    except FileNotFoundError:
        return []
    lines = [json.loads(line) for line in written.splitlines(keepends=True) if line.endswith(b"\n")]
    return [r for r in lines if r["type"] == "reading"]


@pytest.mark.parametrize("stop", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_run_stops_cleanly_and_flushes(converge_project: ProjectBuilder, stop: signal.Signals):
    port = free_port()
    root = converge_project.root
    converge_project.write({"policies/p.yaml": POLICY, "sites/s/site.yaml": SITE.format(port=port)})
    subprocess.run(
        [*CONVERGE, "plan", "-p", "policies", "-s", "sites/s", "-o", "plans"],
        cwd=root,
        check=True,
        capture_output=True,
        timeout=60,
    )
    simulator = subprocess.Popen(
        [*CONVERGE, "simulate", "sites/s"],
        cwd=root,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        listening(port)
        records = root / "records.jsonl"
        run = subprocess.Popen(
            [*CONVERGE, "run", "--plans", "plans", "--out", str(records)],
            cwd=root,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        wait_until(
            lambda: run.poll() is not None or len(readings_in(records)) >= 10,
            lambda: f"ten readings in {records.name} (it has {len(readings_in(records))})",
            within=60,
        )
        run.send_signal(stop)
        out, err = run.communicate(timeout=60)
    finally:
        simulator.send_signal(signal.SIGINT)
        simulator.wait(timeout=60)
    assert run.returncode == 0, err
    assert "Traceback" not in err
    lines = records.read_text().splitlines()
    parsed = [json.loads(line) for line in lines]  # every line whole: nothing cut mid-write
    readings = [r for r in parsed if r["type"] == "reading"]
    assert len(readings) >= 10
    assert {r["point"] for r in readings} == {"T1", "T2"}
    assert "collection summary" in out + err
