"""Show, from a collector's records, how one device went through a fault.

    python examples/show_recovery.py demo-out/evidence.db reactor-1-plc
    python examples/show_recovery.py demo-out/records.jsonl reactor-1-plc

Reads the evidence store (a SQLite path or a database URL) or a JSON Lines
file, and prints the device's records as runs (readings, then gap records
with their reason, then readings again), so an injected fault and its
recovery are seen at a glance.
"""

from __future__ import annotations

import json
import sys
from itertools import groupby
from pathlib import Path
from typing import Any

from sqlalchemy import select

from engine.store.store import Store
from engine.store.tables import GAPS, READINGS


def runs(records: list[dict[str, Any]]) -> list[tuple[str, list[dict[str, Any]]]]:
    def kind(record: dict[str, Any]) -> str:
        return "reading" if record["type"] == "reading" else f"gap: {record['reason']}"

    return [(k, list(group)) for k, group in groupby(records, key=kind)]


def load(source: str) -> list[dict[str, Any]]:
    """Every record, from JSON Lines or from the stored leaves (each leaf is the record's JSON)."""
    if source.endswith(".jsonl"):
        return [json.loads(line) for line in Path(source).read_text().splitlines()]
    with Store.open_existing(source).reading() as conn:
        return [
            json.loads(bytes(leaf))
            for table in (READINGS, GAPS)
            for (leaf,) in conn.execute(select(table.c.leaf))
        ]


def main(source: str, device: str) -> None:
    records = [r for r in load(source) if r["device"] == device]
    records.sort(key=lambda r: str(r.get("scheduled_at") or r.get("collected_at")))
    for kind, group in runs(records):
        first, last = group[0], group[-1]
        start = first.get("scheduled_at") or first.get("collected_at")
        end = last.get("scheduled_at") or last.get("collected_at")
        print(f"{device}: {len(group):>4} {kind:<16} {start} .. {end}")


if __name__ == "__main__":
    main(*sys.argv[1:3])
