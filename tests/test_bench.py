"""Every benchmark that prints an issue's figure still runs, on a small store: a figure beside
its floor is only worth something if the script that prints it works (the figures themselves
are the benchmarks' to judge, on a quiet machine: docs/benchmarks.md)."""

from __future__ import annotations

import subprocess
import sys

import pytest
from evidence_kit import REPO

SMALL = ["--readings", "12000"]
BENCHES = {
    "export": ["export.py", *SMALL],
    "retention": ["retention.py", *SMALL, "--postgres="],
    "verify": ["verify.py", *SMALL],
    "ingest": ["ingest.py", *SMALL, "--postgres="],
    "query": ["query.py", *SMALL, "--postgres="],
}
"""Each script and its arguments: SQLite only, the PostgreSQL half skipped (its code is the
store's, which the other tests run on both backends)."""


@pytest.mark.parametrize("bench", sorted(BENCHES))
def test_a_benchmark_runs_and_prints_its_figures_beside_their_floor(bench: str):
    script, *args = BENCHES[bench]
    ran = subprocess.run(
        [sys.executable, str(REPO / "bench" / script), *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert ran.returncode == 0, ran.stdout[-2000:] + ran.stderr[-2000:]
    assert "floor" in ran.stdout and "target" in ran.stdout, ran.stdout[-2000:]
