"""Prometheus metrics of the read API (``converge serve --metrics ADDR:PORT``).

A request that cannot be authenticated is not a guard decision (there is no principal to
decide on) and is not an audit entry: anyone who reaches the port could otherwise grow the
tamper-evident log without bound. It is counted here, by status and by the kind of
credential sent, and logged by the server (docs/access.md).
"""

from __future__ import annotations

from collections.abc import Mapping

from prometheus_client import CollectorRegistry, Counter

from engine.collect.metrics import serve_registry

CREDENTIALS = ("none", "malformed", "token", "certificate", "unchecked")
"""The kinds of credential a refused request is counted under (``unchecked``: the principals
file did not load, so none was looked at)."""


class ApiMetrics:
    """The read API's metrics, on a registry of their own."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.unauthenticated = Counter(
            "converge_api_unauthenticated",
            "Requests refused before any guard decision: not authenticated (401) or the"
            " principals file not loading (503); not in the audit log",
            ["status", "credential"],
            registry=self.registry,
        )

    def refused(self, status: int, via: Mapping[str, str]) -> None:
        """Count one request refused with ``status`` before it reached the guard."""
        kind = via.get("credential", "unchecked").partition(" ")[0]
        self.unauthenticated.labels(str(status), kind if kind in CREDENTIALS else "none").inc()

    def serve(self, address: str) -> None:
        """Serve ``/metrics`` on ``ADDR:PORT`` (``:PORT`` for every address), on a thread
        that ends with the process."""
        serve_registry(address, self.registry)
