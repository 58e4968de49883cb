"""Prometheus metrics of a running collector (``converge run --metrics ADDR:PORT``).

Nothing inside the collector changes for them: :meth:`Metrics.sink` wraps
the sink every record goes through (readings, gaps by reason, lateness),
:meth:`Metrics.reporter` wraps the reporter that hears the collector's
events (reconnects, lost connections, opened breakers) and the live
per-device state, and :meth:`Metrics.refresh` reads the evidence
pipeline's spool depth and sealer backlog. The HTTP endpoint is
``prometheus_client``'s, on a thread of its own; every value it serves is
set on the event loop, so it never reads the collector's state while the
collector changes it. Names follow Prometheus conventions (``converge_``
prefix, base units, ``_total`` counters); docs/runtime.md lists them with
example alert rules.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

from engine.collect.sinks import Sink
from engine.collect.status import Reporter, Summary
from engine.errors import ConvergeError
from engine.records import Gap, Reading, Record

LATENESS_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
"""Seconds a reading was taken after its slot: a healthy poll is milliseconds late."""

STATES = ("starting", "connected", "disconnected", "circuit open")
REFRESH_S = 1.0
"""Seconds between two readings of the gauges set from state (a scrape is every 15 s or so)."""


class Metrics:
    """The collector's metrics, on a registry of their own."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.summary: Summary | None = None
        self._server: Any = None
        self.readings = Counter(
            "converge_readings",
            "Readings collected (good, bad or uncertain quality)",
            ["device"],
            registry=self.registry,
        )
        self.gaps = Counter(
            "converge_gaps",
            "Gap records: samples not taken, by reason",
            ["device", "reason"],
            registry=self.registry,
        )
        self.lateness = Histogram(
            "converge_reading_lateness_seconds",
            "How long after its scheduled slot a polled reading was taken",
            ["device"],
            buckets=LATENESS_BUCKETS,
            registry=self.registry,
        )
        self.last_reading = Gauge(
            "converge_last_reading_timestamp_seconds",
            "Unix time of the device's last reading",
            ["device"],
            registry=self.registry,
        )
        self._events(self.registry)
        self._pipeline(self.registry)
        self._connected: set[str] = set()
        self._counters = {
            "connect-failed": self.connect_failures,
            "connection-lost": self.connections_lost,
            "circuit-open": self.breaker_opens,
        }

    def _events(self, registry: CollectorRegistry) -> None:
        self.reconnects = Counter(
            "converge_reconnects",
            "Connections made after the device's first one (after a loss or a restart of the link)",
            ["device"],
            registry=registry,
        )
        self.connect_failures = Counter(
            "converge_connect_failures", "Failed connection attempts", ["device"], registry=registry
        )
        self.connections_lost = Counter(
            "converge_connections_lost", "Connections lost", ["device"], registry=registry
        )
        self.breaker_opens = Counter(
            "converge_circuit_breaker_opens",
            "Times a circuit breaker opened (per unit)",
            ["device"],
            registry=registry,
        )
        self.state = Gauge(
            "converge_device_state",
            "1 for the device's current state: starting, connected, disconnected, circuit open",
            ["device", "state"],
            registry=registry,
        )

    def _pipeline(self, registry: CollectorRegistry) -> None:
        self.spool_depth = Gauge(
            "converge_spool_batches",
            "Batches waiting in the spool for the store (with --db)",
            registry=registry,
        )
        self.sealer_backlog = Gauge(
            "converge_sealer_backlog_windows",
            "Closed windows waiting for the sealer to sign and store them (with --db)",
            registry=registry,
        )

    # --- serving -----------------------------------------------------------------------------

    def serve(self, address: str) -> None:
        """Serve ``/metrics`` on ``ADDR:PORT`` (``:PORT`` for every address)."""
        self._server = serve_registry(address, self.registry)

    def close(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.shutdown()
            server.server_close()

    # --- what feeds them ---------------------------------------------------------------------

    def sink(self, inner: Sink) -> Sink:
        return _MeteredSink(inner, self)

    def reporter(self, inner: Reporter) -> Reporter:
        return _MeteredReporter(inner, self)

    def observe(self, record: Record) -> None:
        """Count one record the collector produced."""
        if isinstance(record, Gap):
            self.gaps.labels(record.device, record.reason.value).inc()
            return
        if isinstance(record, Reading):
            self.readings.labels(record.device).inc()
            self.last_reading.labels(record.device).set(record.collected_at.timestamp())
            if record.scheduled_at is not None:
                late = (record.collected_at - record.scheduled_at).total_seconds()
                self.lateness.labels(record.device).observe(max(late, 0.0))

    def event(self, device: str, kind: str) -> None:
        """Count one event the collector reported; a connection after the first is a reconnect."""
        if kind == "connected":
            if device in self._connected:
                self.reconnects.labels(device).inc()
            self._connected.add(device)
        counter = self._counters.get(kind)
        if counter is not None:
            counter.labels(device).inc()

    async def refresh(
        self,
        spool_depth: Callable[[], int] | None = None,
        sealer_backlog: Callable[[], int] | None = None,
        every: float = REFRESH_S,
    ) -> None:
        """Set the gauges read from state, now and every ``every`` seconds, until cancelled.

        ``spool_depth`` reads a file, so it runs on a worker thread; a spool busy
        with a write leaves the gauge as it was until the next time.
        """
        while True:
            self.refresh_states()
            if sealer_backlog is not None:
                self.sealer_backlog.set(sealer_backlog())
            if spool_depth is not None:
                with contextlib.suppress(OSError, sqlite3.Error):
                    self.spool_depth.set(await asyncio.to_thread(spool_depth))
            await asyncio.sleep(every)

    def refresh_states(self) -> None:
        """Each device's state gauges from the live summary."""
        if self.summary is None:
            return
        for name, stats in list(self.summary.devices.items()):
            for state in STATES:
                self.state.labels(name, state).set(1 if stats.state == state else 0)


def serve_registry(address: str, registry: CollectorRegistry) -> Any:
    """Serve ``registry`` as ``/metrics`` on ``ADDR:PORT`` on a thread; the HTTP server (its
    ``shutdown`` stops it)."""
    host, port = parse_address(address)
    try:
        server, _ = start_http_server(port, host or "0.0.0.0", registry=registry)
    except OSError as error:
        reason = error.strerror or str(error)
        raise ConvergeError(f"--metrics: cannot serve metrics on {address}: {reason}") from error
    return server


def parse_address(address: str) -> tuple[str, int]:
    """``ADDR:PORT`` as (host, port); ``:PORT`` is every address (host ``""``)."""
    host, _, port = address.rpartition(":")
    host = host.strip("[]")
    if not port.isdigit() or not 0 < int(port) < 65536:
        raise ConvergeError(f"--metrics: {address!r} is not ADDR:PORT, such as 127.0.0.1:9464")
    return host, int(port)


class _MeteredSink:
    """A sink that counts every record, then hands it on."""

    def __init__(self, inner: Sink, metrics: Metrics) -> None:
        self.inner, self.metrics = inner, metrics

    async def put(self, record: Record) -> None:
        self.metrics.observe(record)
        await self.inner.put(record)

    async def close(self) -> None:
        await self.inner.close()


class _MeteredReporter:
    """A reporter that counts every event, then hands it on, and keeps the live summary."""

    def __init__(self, inner: Reporter, metrics: Metrics) -> None:
        self.inner, self.metrics = inner, metrics

    def event(self, device: str, kind: str, **fields: Any) -> None:
        self.metrics.event(device, kind)
        self.inner.event(device, kind, **fields)

    def showing(self, summary: Summary) -> AbstractContextManager[object]:
        self.metrics.summary = summary
        return self.inner.showing(summary)
