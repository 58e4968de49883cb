"""Text from the store reaches a terminal with no character that would steer it: ESC
sequences, C1 controls, bidirectional overrides are printed as visible escapes."""

from __future__ import annotations

import io

import pytest
from evidence_kit import fill
from rich.console import Console

from engine.cli import main
from engine.commands.audit import render_report
from engine.commands.terminal import markup_safe, printable
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


def test_markup_safe_escapes_markup_after_the_controls():
    assert markup_safe("[red]x\x1b[/]") == "\\[red]x\\x1b\\[/]"
    out = io.StringIO()
    Console(file=out, force_terminal=True, color_system=None).print(
        f"[bold]said[/] {markup_safe('[red]x' + FAKE_LINE)}"
    )
    assert "[red]x\\x1b[1A" in out.getvalue()


def entries_text(capsys, db: str) -> str:
    capsys.readouterr()
    assert main(["audit", "log", "--db", db, "--kind", "audit.reviewed"]) == 0
    return capsys.readouterr().out


def test_audit_log_prints_an_entrys_control_characters_as_escapes(evidence_site, tmp_path, capsys):
    db = str(tmp_path / "evidence.db")
    fill(evidence_site, db, tmp_path, seconds=5).close()
    with Store.open_existing(db) as store:
        store.log("audit.reviewed", {"note": FAKE_LINE + " " + TURNED, "entries": 1})
    out = entries_text(capsys, db)
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
