"""Text from the store reaches a terminal with no character that would steer it: ESC
sequences, C1 controls, bidirectional overrides are printed as visible escapes."""

from __future__ import annotations

import io
from datetime import UTC, datetime

import pytest
from evidence_kit import REPO, fill
from rich.console import Console

from engine.cli import main
from engine.commands.audit import render_report
from engine.commands.retention import render
from engine.commands.terminal import markup_safe, printable
from engine.export.verifier import Verdict
from engine.retention import Outcome
from engine.retention.receipt import Run
from engine.store.store import Store
from engine.verify.report import Report

FAKE_LINE = "\x1b[1A\x1b[2K\x1b[32mverified: nothing to see\x1b[0m"
"""Up a line, erase it, write a verdict of the author's choosing."""
TURNED = "ok \u202eelif.exe\u202c \u2066x\u2069"
"""A right-to-left override: the rest of the line reads backwards."""
STEERING = ("\x1b", "\x9b", "\x7f", "\u202e", "\u2066", "\u2069", "\u2028", "\r")


@pytest.mark.parametrize(
    ("text", "shown"),
    [
        (FAKE_LINE, "\\x1b[1A\\x1b[2K\\x1b[32mverified: nothing to see\\x1b[0m"),
        (TURNED, "ok \\u202eelif.exe\\u202c \\u2066x\\u2069"),
        ("a\nb\tc\rd\x00", "a\\x0ab\\x09c\\x0dd\\x00"),
        ("del\x7f csi\x9b nel\x85", "del\\x7f csi\\x9b nel\\x85"),
        ("line\u2028para\u2029 mark\u200f", "line\\u2028para\\u2029 mark\\u200f"),
        ("C:\\plant\\x1b, Ünïcødé µs, 温度 °C", "C:\\plant\\x1b, Ünïcødé µs, 温度 °C"),
    ],
)
def test_printable_makes_every_steering_character_visible(text: str, shown: str):
    assert printable(text) == shown


def test_the_shipped_verifier_escapes_what_every_command_escapes():
    """verify.py stays self-contained, so it keeps its own table: the same one."""
    everything = "".join(map(chr, range(0x3000)))
    assert Verdict(notes=[everything]).lines()[0] == "note: " + printable(everything)


def test_markup_safe_escapes_markup_after_the_controls():
    assert markup_safe("[red]x\x1b[/]") == "\\[red]x\\x1b\\[/]"
    out = io.StringIO()
    Console(file=out, force_terminal=True, color_system=None).print(
        f"[bold]said[/] {markup_safe('[red]x' + FAKE_LINE)}"
    )
    assert "[red]x\\x1b[1A" in out.getvalue()


@pytest.fixture
def db(evidence_site, tmp_path) -> str:
    """A SQLite store of 5 s of the plant."""
    target = str(tmp_path / "evidence.db")
    fill(evidence_site, target, tmp_path, seconds=5).close()
    return target


def entries_text(capsys, db: str, kind: str) -> str:
    """What ``converge audit log --kind KIND`` prints."""
    capsys.readouterr()
    assert main(["audit", "log", "--db", db, "--kind", kind]) == 0
    return capsys.readouterr().out


def test_audit_log_prints_an_entrys_control_characters_as_escapes(db, capsys):
    with Store.open_existing(db) as store:
        store.log("audit.reviewed", {"note": FAKE_LINE + " " + TURNED, "entries": 1})
    out = entries_text(capsys, db, "audit.reviewed")
    assert not any(c in out for c in STEERING), repr(out)
    assert "note=\\x1b[1A\\x1b[2K\\x1b[32mverified: nothing to see\\x1b[0m" in out
    assert "\\u202eelif.exe\\u202c" in out


def test_audit_verify_quotes_store_text_in_its_lines_as_escapes():
    report = Report()
    report.add(f"audit entry 7 ({FAKE_LINE})", "does not verify")
    report.notes.append(TURNED)
    out = io.StringIO()
    render_report(Console(file=out, width=400, color_system=None), report, 1.0, "store")
    text = out.getvalue()
    assert not any(c in text for c in STEERING), repr(text)
    assert "FAIL audit entry 7 (\\x1b[1A" in text and "note: ok \\u202eelif" in text


def test_a_refusal_naming_what_it_was_given_prints_it_as_escapes(db, capsys):
    principals = REPO / "examples" / "sites" / "plant-basel" / "principals.yaml"
    review = ["audit", "review", "--db", db, "--principals", str(principals)]
    assert main([*review, "--as", f"eve{FAKE_LINE}"]) == 3
    err = capsys.readouterr().err
    assert err.startswith("converge: refused: ") and err.count("\n") == 1, err
    assert "\x1b" not in err and "eve\\x1b[1A" in err
    out = entries_text(capsys, db, "access.decision")
    assert "\x1b" not in out and "eve\\x1b[1A" in out


def test_retention_apply_prints_device_and_point_text_as_escapes():
    """Device names and how records expired come from the store's plans: a run's lines show
    their steering characters as escapes (and Rich markup in them as text)."""
    device = f"[red]line{FAKE_LINE}"
    outcome = Outcome(Run("run", "2026-01-01T00:00:00Z"), datetime(2026, 1, 1, tzinfo=UTC))
    outcome.deleted[device, "P1"] = 3
    outcome.rules[device, "P1"] = {f"keep_at_most {TURNED}"}
    outcome.held_past[device, "P1"] = 2
    out = io.StringIO()
    render(Console(file=out, width=400, color_system=None), outcome, dry_run=False)
    text = out.getvalue()
    assert not any(c in text for c in STEERING), repr(text)
    assert "  [red]line\\x1b[1A\\x1b[2K" in text and "keep_at_most ok \\u202eelif" in text
    assert "warning: [red]line\\x1b[1A" in text
