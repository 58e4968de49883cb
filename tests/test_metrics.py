"""``converge run --metrics ADDR:PORT`` serves Prometheus metrics (issue 15).

The metrics are read as Prometheus reads them: scraped over HTTP and parsed
with ``prometheus_client``'s own parser. One test feeds a :class:`Metrics`
records and events and checks every family; one runs ``converge run``
against ``converge simulate`` and scrapes it while it collects; one asks for
a port that is in use.
"""

from __future__ import annotations

import asyncio
import signal
import socket
import subprocess
import sys
import urllib.request
from datetime import UTC, datetime, timedelta

import pytest
from prometheus_client.parser import text_string_to_metric_families
from waiting import wait_until

from engine.collect.metrics import Metrics
from engine.collect.status import DeviceStats, QuietReporter, Summary
from engine.records import Gap, GapReason, Reading
from engine.testkit import ProjectBuilder

CONVERGE = [sys.executable, "-m", "engine.cli"]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def scrape(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample at ``/metrics``: (name, sorted labels) to value."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as answer:
        text = answer.read().decode()
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


class Sink:
    def __init__(self) -> None:
        self.records: list[object] = []

    async def put(self, record: object) -> None:
        self.records.append(record)

    async def close(self) -> None:
        pass


def test_every_family_counts_what_the_collector_did() -> None:
    metrics = Metrics()
    port = free_port()
    metrics.serve(f"127.0.0.1:{port}")
    try:
        slot = datetime(2026, 6, 1, 12, tzinfo=UTC)
        inner = Sink()
        sink = metrics.sink(inner)
        reporter = metrics.reporter(QuietReporter())
        summary = Summary({"plc": DeviceStats("plc", state="circuit open")})
        reporter.showing(summary)

        async def collect() -> None:
            for late in (0.02, 0.3):
                collected = slot + timedelta(seconds=late)
                await sink.put(Reading("plc", "T1", collected, 1, scheduled_at=slot))
            await sink.put(Gap("plc", "T1", slot, GapReason.TIMEOUT, "no answer"))
            await sink.put(Gap("plc", "T1", slot, GapReason.REFUSED, "connect failed"))
            await sink.put(Gap("plc", "T1", slot, GapReason.REFUSED, "connect failed"))

        asyncio.run(collect())
        for kind in ("connected", "connection-lost", "connect-failed", "connected", "circuit-open"):
            reporter.event("plc", kind)
        metrics.refresh_states()
        metrics.spool_depth.set(3)
        got = scrape(port)
    finally:
        metrics.close()
    plc = (("device", "plc"),)
    assert len(inner.records) == 5
    assert got[("converge_readings_total", plc)] == 2
    assert got[("converge_gaps_total", (("device", "plc"), ("reason", "timeout")))] == 1
    assert got[("converge_gaps_total", (("device", "plc"), ("reason", "refused")))] == 2
    assert got[("converge_reading_lateness_seconds_count", plc)] == 2
    assert got[("converge_reading_lateness_seconds_bucket", (*plc, ("le", "0.025")))] == 1
    assert got[("converge_reading_lateness_seconds_sum", plc)] == pytest.approx(0.32)
    assert (
        got[("converge_last_reading_timestamp_seconds", plc)]
        == (slot + timedelta(seconds=0.3)).timestamp()
    )
    assert got[("converge_reconnects_total", plc)] == 1
    assert got[("converge_connect_failures_total", plc)] == 1
    assert got[("converge_connections_lost_total", plc)] == 1
    assert got[("converge_circuit_breaker_opens_total", plc)] == 1
    assert got[("converge_device_state", (*plc, ("state", "circuit open")))] == 1
    assert got[("converge_device_state", (*plc, ("state", "connected")))] == 0
    assert got[("converge_spool_batches", ())] == 3
    assert got[("converge_sealer_backlog_windows", ())] == 0


SITE = """
    site: metered
    timezone: UTC
    devices:
      - id: plc
        protocol: modbus
        endpoint: {{host: 127.0.0.1, port: {port}}}
        limits: {{min_interval: 100ms}}
        points:
          - {{name: T1, signal: temperature, address: {{table: holding, register: 0, type: int16}}}}
    """
POLICY = """
    policy: capture-fast
    title: Capture fast
    owner: qa
    applies: {}
    capture: {every: 200ms}
    """


def test_converge_run_serves_its_metrics_while_it_collects(converge_project: ProjectBuilder):
    device_port, metrics_port = free_port(), free_port()
    root = converge_project.root
    converge_project.write(
        {"policies/p.yaml": POLICY, "sites/s/site.yaml": SITE.format(port=device_port)}
    )
    plan = [*CONVERGE, "plan", "-p", "policies", "-s", "sites/s", "-o", "plans"]
    subprocess.run(plan, cwd=root, check=True, capture_output=True, timeout=60)
    simulator = subprocess.Popen([*CONVERGE, "simulate", "sites/s"], cwd=root)
    address = f"127.0.0.1:{metrics_port}"
    run = subprocess.Popen(
        [*CONVERGE, "run", "--plans", "plans", "--out", "records.jsonl", "--metrics", address],
        cwd=root,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    readings = ("converge_readings_total", (("device", "plc"),))
    connected = ("converge_device_state", (("device", "plc"), ("state", "connected")))

    def counted() -> bool:
        got = _scraped(metrics_port)
        return got.get(readings, 0) >= 3 and got.get(connected) == 1

    try:
        wait_until(
            lambda: run.poll() is not None or counted(),
            lambda: (
                f"three readings and the device connected at /metrics: {_scraped(metrics_port)}"
            ),
            within=60,
        )
        got = _scraped(metrics_port)
        assert got[("converge_reading_lateness_seconds_count", (("device", "plc"),))] >= 3
    finally:
        run.send_signal(signal.SIGINT)
        run.communicate(timeout=60)
        simulator.send_signal(signal.SIGINT)
        simulator.wait(timeout=60)
    assert run.returncode == 0


def _scraped(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    try:
        return scrape(port)
    except OSError:  # not listening yet
        return {}


def test_metrics_on_a_port_in_use_is_one_line(converge_project: ProjectBuilder) -> None:
    root = converge_project.root
    converge_project.write(
        {"policies/p.yaml": POLICY, "sites/s/site.yaml": SITE.format(port=free_port())}
    )
    plan = [*CONVERGE, "plan", "-p", "policies", "-s", "sites/s", "-o", "plans"]
    subprocess.run(plan, cwd=root, check=True, capture_output=True, timeout=60)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = subprocess.run(
            [*CONVERGE, "run", "--plans", "plans", "--metrics", f"127.0.0.1:{port}"],
            cwd=root,
            capture_output=True,
            text=True,
            check=False,
            timeout=60,
        )
    assert done.returncode == 2
    assert done.stderr == (
        f"converge: error: --metrics: cannot serve metrics on 127.0.0.1:{port}:"
        " Address already in use\n"
    )
