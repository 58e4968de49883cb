"""Benchmark: verify a store of 1,000,000 readings, against hashing their leaves with hashlib.

    python bench/verify.py                      # 1,000,000 readings
    python bench/verify.py --readings 200000    # fewer
    python bench/verify.py --workers 1          # records hashed in one process

Builds a SQLite store with the ingest benchmark's pipeline (bench/ingest.py:
100 devices x 100 points at 1 s, 6,000 readings per batch signed by two
keys, a signed checkpoint of the audit log), then times
:func:`engine.verify.whole.verify_store` over it: every leaf hashed, every batch
root rebuilt, every signature, plan, audit entry and checkpoint checked; the
records by worker processes, one per CPU, unless ``--workers`` says. The
floor is ``hashlib.sha256(b"\\x00" + leaf)`` of every stored leaf, the leaves
read into memory first. Targets (the ingest issue): >= 200,000 readings/s,
and within 3x the hashlib time. A verify that finds a problem is not a
benchmark: the run stops if the report is not ok.
"""

from __future__ import annotations

import argparse
import hashlib
import sqlite3
import tempfile
import time
from pathlib import Path

from ingest import READINGS, build_store, machine  # bench/ is on the path when run as a script

from engine.store.store import Store
from engine.verify.trust import Trust
from engine.verify.whole import verify_store

TARGET_RATE = 200_000
TARGET_RATIO = 3.0


def leaves(path: Path) -> list[bytes]:
    """Every stored reading's leaf bytes, in memory."""
    with sqlite3.connect(path) as db:
        return [leaf for (leaf,) in db.execute("SELECT leaf FROM readings ORDER BY id")]


def hash_floor(data: list[bytes]) -> float:
    """Seconds for hashlib to compute every leaf's Merkle leaf hash."""
    sha256 = hashlib.sha256
    started = time.perf_counter()
    for leaf in data:
        sha256(b"\x00" + leaf).digest()
    return time.perf_counter() - started


def timed_verify(store: Store, trust: Trust, count: int, workers: int | None) -> float:
    """Seconds for one ``verify_store``; exits if it finds a problem or misses readings."""
    started = time.perf_counter()
    report = verify_store(store, trust, workers=workers)
    elapsed = time.perf_counter() - started
    if not report.ok:
        problems = "\n  ".join(str(p) for p in report.problems[:10])
        raise SystemExit(f"verify found {len(report.problems)} problems:\n  {problems}")
    if report.counts.get("readings") != count:
        raise SystemExit(f"verify counted {report.counts.get('readings')} readings, want {count}")
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--readings", type=int, default=READINGS)
    parser.add_argument(
        "--workers",
        type=int,
        help="processes hashing the records (default: "
        "one per CPU, for a store of 100,000 records or more)",
    )
    args = parser.parse_args()
    print(machine())
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "evidence.db"
        store, keys, built = build_store(str(path), args.readings, Path(tmp))
        print(
            f"store: {args.readings:,} readings, {store.counts()['batches']} batches, "
            f"built in {built:.1f} s\n"
        )
        ours = timed_verify(store, keys.trust(), args.readings, args.workers)
        floor = hash_floor(leaves(path))
        store.close()
    report(args.readings, ours, floor)


def report(count: int, ours: float, floor: float) -> None:
    rate, ratio = count / ours, ours / floor
    print(
        f"  verify_store (leaves, roots, signatures, plans, audit log): {ours:6.2f} s "
        f"{rate:>10,.0f} readings/s"
    )
    print(
        f"  floor (hashlib sha256 of each leaf, in memory):            {floor:6.2f} s "
        f"{count / floor:>10,.0f} readings/s"
    )
    rate_ok = "PASS" if rate >= TARGET_RATE else "FAIL"
    ratio_ok = "PASS" if ratio <= TARGET_RATIO else "FAIL"
    print(
        f"  {rate_ok} rate {rate:,.0f}/s (target >= {TARGET_RATE:,}/s); "
        f"{ratio_ok} {ratio:.2f}x the hashlib time (target <= {TARGET_RATIO:g}x)"
    )


if __name__ == "__main__":
    main()
