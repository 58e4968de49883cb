"""`converge run` stops cleanly on SIGINT and SIGTERM: exit 0, every record flushed whole.

Real processes end to end: `converge simulate` serves a small Modbus site on a
free port, `converge run` collects from it, and the test signals the collector.
"""

from __future__ import annotations

import json
import os
import selectors
import signal
import socket
import subprocess
import sys
import time

import pytest

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


def listening(port: int, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as probe:
            if probe.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    raise AssertionError(f"the simulator never listened on {port}")


def until_connected(fd: int, timeout: float = 30.0) -> str:
    """What the collector wrote to ``fd`` (its standard error) until it said it connected."""
    said, deadline = b"", time.monotonic() + timeout
    with selectors.DefaultSelector() as waiting:
        waiting.register(fd, selectors.EVENT_READ)
        while b'"event": "connected"' not in said:
            left = deadline - time.monotonic()
            assert left > 0 and waiting.select(left), f"it never connected: {said.decode()}"
            chunk = os.read(fd, 65536)
            assert chunk, f"it ended before it connected: {said.decode()}"
            said += chunk
    return said.decode()


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
        assert run.stderr is not None
        said = until_connected(run.stderr.fileno())  # a loaded machine may take a while
        time.sleep(2.5)
        run.send_signal(stop)
        out, rest = run.communicate(timeout=20)
        err = said + rest
    finally:
        simulator.send_signal(signal.SIGINT)
        simulator.wait(timeout=20)
    assert run.returncode == 0, err
    assert "Traceback" not in err
    lines = records.read_text().splitlines()
    parsed = [json.loads(line) for line in lines]  # every line whole: nothing cut mid-write
    readings = [r for r in parsed if r["type"] == "reading"]
    assert len(readings) >= 10
    assert {r["point"] for r in readings} == {"T1", "T2"}
    assert "collection summary" in out + err
