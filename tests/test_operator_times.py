"""What an operator and an auditor read is stamped in RFC 3339 (issue 15).

The collector's JSON events carry ``"ts": "2026-06-01T12:00:00.250Z"``, not an
epoch number. ``converge audit log`` prints each entry's time in RFC 3339, in
sequence order, and when an entry was recorded later than it happened (a key
made before the store existed is logged when a collector first starts) it
says both.
"""

from __future__ import annotations

import io
import json
import re
from datetime import UTC, datetime, timedelta

from rich.console import Console

from engine.audit import AuditEntry
from engine.collect.status import JsonLogReporter
from engine.commands.audit import render_entries

RFC3339 = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?(Z|[+-]\d{2}:\d{2})")


def test_a_json_event_is_stamped_in_rfc3339() -> None:
    stream = io.StringIO()
    before = datetime.now(UTC)
    JsonLogReporter(stream).event("reactor-1-plc", "connect-failed", detail="refused")
    line = json.loads(stream.getvalue())
    assert RFC3339.fullmatch(line["ts"]), line
    stamped = datetime.fromisoformat(line["ts"].replace("Z", "+00:00"))
    assert before - timedelta(seconds=1) <= stamped <= datetime.now(UTC) + timedelta(seconds=1)
    assert line["ts"].endswith("Z")
    assert list(line)[:3] == ["ts", "device", "event"]


def entry(seq: int, time: str, kind: str, **payload: object) -> AuditEntry:
    return AuditEntry(seq, time, kind, "collector@host", dict(payload))


def rendered(entries: list[AuditEntry]) -> list[str]:
    out = io.StringIO()
    render_entries(Console(file=out, width=200, highlight=False), entries)
    return out.getvalue().splitlines()


def test_the_audit_log_prints_rfc3339_times_in_sequence_order() -> None:
    lines = rendered(
        [
            entry(0, "2026-06-01T12:00:00.000000Z", "collector.started", plans=["a"]),
            entry(1, "2026-06-01T12:00:05.250000Z", "batch.stored", device="r1", count=3),
        ]
    )
    assert [line.split()[0] for line in lines] == ["0", "1"]
    assert [line.split()[1] for line in lines] == [
        "2026-06-01T12:00:00.000000Z",
        "2026-06-01T12:00:05.250000Z",
    ]


def test_an_entry_recorded_after_it_happened_says_both() -> None:
    """Key entries are dated with the key's creation and logged when a collector starts."""
    lines = rendered(
        [
            entry(
                0, "2026-06-01T12:00:00.000000Z", "plan.deployed", device="r1", digest="sha256:1"
            ),
            entry(1, "2026-05-30T08:00:00.000000Z", "key.generated", name="qa", version=1),
            entry(2, "2026-06-01T12:00:01.000000Z", "collector.started"),
        ]
    )
    assert lines[0].split()[:2] == ["0", "2026-06-01T12:00:00.000000Z"]
    assert lines[1].split()[:2] == ["1", "2026-05-30T08:00:00.000000Z"]
    assert lines[1].endswith(
        "(happened 2026-05-30T08:00:00.000000Z, recorded after 2026-06-01T12:00:00.000000Z)"
    )
    assert "recorded" not in lines[0] and "recorded" not in lines[2]
