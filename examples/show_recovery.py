"""Show, from a collector's JSON Lines records, how one device went through a fault.

    python examples/show_recovery.py demo-out/records.jsonl reactor-1-plc

Prints the device's records as runs (readings, then gap records with their
reason, then readings again), so an injected fault and its recovery are seen
at a glance.
"""

from __future__ import annotations

import json
import sys
from itertools import groupby
from pathlib import Path


def runs(records: list[dict[str, object]]) -> list[tuple[str, list[dict[str, object]]]]:
    def kind(record: dict[str, object]) -> str:
        return "reading" if record["type"] == "reading" else f"gap: {record['reason']}"

    return [(k, list(group)) for k, group in groupby(records, key=kind)]


def main(path: str, device: str) -> None:
    lines = Path(path).read_text().splitlines()
    records = [r for r in map(json.loads, lines) if r["device"] == device]
    records.sort(key=lambda r: str(r.get("scheduled_at") or r.get("collected_at")))
    for kind, group in runs(records):
        first, last = group[0], group[-1]
        start = first.get("scheduled_at") or first.get("collected_at")
        end = last.get("scheduled_at") or last.get("collected_at")
        print(f"{device}: {len(group):>4} {kind:<16} {start} .. {end}")


if __name__ == "__main__":
    main(*sys.argv[1:3])
