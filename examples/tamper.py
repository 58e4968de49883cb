"""Change one stored reading's value in a SQLite evidence store, as a tamperer would.

    python examples/tamper.py demo-out/tampered.db

Edits the leaf bytes of one reading in place (its JSON stays valid), and says
which. `converge audit verify` must then name that reading's batch.
"""

from __future__ import annotations

import json
import sqlite3
import sys


def tamper(path: str) -> None:
    with sqlite3.connect(path) as db:
        rows = db.execute("SELECT id, batch_id, leaf FROM readings ORDER BY id")
        row_id, batch_id, leaf, record = next(
            (i, b, leaf, r)
            for i, b, leaf in rows
            if type((r := json.loads(leaf))["value"]) in (int, float)
        )
        old = record["value"]
        new = old + 1
        edited = leaf.replace(
            f'"value":{json.dumps(old)}'.encode(), f'"value":{json.dumps(new)}'.encode()
        )
        db.execute("UPDATE readings SET leaf = ? WHERE id = ?", (edited, row_id))
    print(
        f"changed {record['device']}/{record['point']} at {record['collected_at']} "
        f"from {old} to {new} (reading {row_id}, batch {batch_id})"
    )


if __name__ == "__main__":
    tamper(sys.argv[1])
