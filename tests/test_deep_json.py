"""JSON nested deeper than the parser can read, in a bundle or the store: a named verdict of
each verifier, never a traceback (each case failed before its fix)."""

from __future__ import annotations

import zipfile
from pathlib import Path

import pytest
import sqlalchemy as sa
import test_export
from evidence_kit import Site, fill
from test_export import Exported, failed, forged, read

from engine.cli import main
from engine.export import verifier

clean_python, both, plant = test_export.clean_python, test_export.both, test_export.plant

DEEP = b"[" * 2000 + b"]" * 2000
"""JSON nested deeper than Python's recursion limit (json.loads raises RecursionError, which
is no ValueError), and short enough that no member holding it is refused as a zip bomb."""


def test_a_manifest_nested_too_deep_is_refused_not_a_traceback(plant: Exported, tmp_path, both):
    """Anyone can make this zip: no key signs a manifest before it is parsed."""
    out = tmp_path / "deep.zip"
    with zipfile.ZipFile(out, "w") as z:
        z.writestr("keys.json", read(plant.bundle)["keys.json"])
        z.writestr("manifest.json", DEEP)
        z.writestr("manifest.sig", b"x\n")
    lines = failed(both(out, plant.trust))
    assert lines and lines[0].startswith("FAIL manifest.json: refused: not JSON"), lines


NAMED = {
    "batch": "FAIL batches/1.json: refused: not JSON",
    "checkpoints": "FAIL log/checkpoints.json: refused: not JSON",
    "retention": "FAIL retention.json: refused: not JSON",
    "entry": "FAIL log/entries.jsonl:1: not JSON",
    "leaf": "FAIL records.jsonl:1: its leaf is not a record",
}


@pytest.mark.parametrize("member", list(NAMED))
def test_a_signed_member_nested_too_deep_is_a_verdict_not_a_traceback(
    plant: Exported, tmp_path: Path, member: str, both
):
    """The insider with the log's key re-signs the manifest over a member holding JSON
    nested too deep to parse: the verdict names it, as it names any other malformed member."""

    def change(members: dict[str, bytes]) -> dict[str, bytes]:
        if member == "batch":
            name = next(n for n in sorted(members) if n.startswith("batches/"))
            return members | {name: DEEP}
        if member == "checkpoints":
            return members | {verifier.CHECKPOINTS: DEEP}
        if member == "retention":
            return members | {verifier.RETENTION: DEEP}
        if member == "entry":
            lines = members[verifier.ENTRIES].split(b"\n")
            head, _, _ = lines[0].rpartition(b',"entry":')
            lines[0] = head + b',"entry":{"seq":0,"payload":' + DEEP + b"}}"
            return members | {verifier.ENTRIES: b"\n".join(lines)}
        lines = members[verifier.RECORDS].split(b"\n")
        head, _, _ = lines[0].partition(b',"leaf":')
        lines[0] = head + b',"leaf":{"point":' + DEEP + b"}}"
        return members | {verifier.RECORDS: b"\n".join(lines)}

    out = forged(plant.site, plant.bundle, tmp_path / "deep.zip", change)
    lines = failed(both(out, plant.trust))
    assert any(line.startswith(NAMED[member]) for line in lines), lines


def test_an_audit_row_nested_too_deep_is_named_by_audit_verify_and_the_log(
    evidence_site: Site, tmp_path: Path, capsys: pytest.CaptureFixture[str]
):
    """An insider with database access and no key appends a row to the log's unsigned tail
    whose JSON is nested too deep to parse: ``audit verify`` names the entry, as it names any
    entry that is not canonical, instead of ending in a traceback."""
    db = str(tmp_path / "evidence.db")
    fill(evidence_site, db, tmp_path, 10).close()
    engine = sa.create_engine(f"sqlite:///{db}")
    with engine.begin() as conn:
        seq = conn.execute(sa.text("SELECT max(seq) FROM audit_entries")).scalar_one() + 1
        time = "2026-01-01T00:00:00.000000Z"
        data = b'{"actor":"x","kind":"note","payload":{"a":%s},"seq":%d,"time":"%s"}' % (
            DEEP,
            seq,
            time.encode(),
        )
        conn.execute(
            sa.text(
                "INSERT INTO audit_entries (seq, time, kind, entry) VALUES (:s, :t, 'note', :e)"
            ),
            {"s": seq, "t": time, "e": data},
        )
    engine.dispose()
    code = main(["audit", "verify", "--db", db, "--keys", str(evidence_site.keys_dir)])
    out = capsys.readouterr().out
    assert code == 1
    assert f"FAIL audit entry {seq}: not a canonical entry (JSON nested too deep to read)" in out, (
        out
    )
    assert main(["audit", "log", "--db", db]) == 2  # what reads the log names it too
    assert (
        f"audit entry {seq} does not parse (JSON nested too deep to read)"
        in capsys.readouterr().err
    )
