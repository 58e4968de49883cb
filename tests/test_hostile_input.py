"""Hostile and careless input ends in placed findings, never in a traceback (issue 15).

Each crash a held-out mutation fuzzer found has its minimal input here, run
through the ``converge`` command itself: exit 1, every finding at its
``path:line:col`` with a documented code, one line each, and nothing on
standard error. The bounds of docs/policy-language.md (file size, entries per
list or mapping, characters per string, the alias budget) are refused at the
place they are crossed, whatever padding comes before.
"""

from __future__ import annotations

import contextlib
import re
import textwrap
from pathlib import Path

import pytest

from engine.cli import main
from engine.codes import CODES
from engine.compile import load
from engine.compile.load import load_text
from engine.errors import FindingsError

SITE = """\
site: test-plant
timezone: Europe/Zurich
devices:
  - id: reactor-1
    class: reactor
    protocol: modbus
    endpoint: {host: 127.0.0.1}
    points:
      - name: TT1_PV
        signal: temperature
        address: {table: holding, register: REGISTER, type: int16}
"""

POLICY = """\
policy: gmp-temperatures
title: TITLE
owner: quality-assurance
applies:
  devices: {class: reactor}
capture:
  every: 5s
"""

HUGE_BINARY = "0b" + "1" * 15_000
FINDING = re.compile(
    r"^(?P<path>[^:]+):(?P<line>\d+):(?P<col>\d+): (?:error|warning)\[(?P<code>[a-z0-9-]+)\]: "
)


def check(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], files: dict[str, str]
) -> tuple[int, list[tuple[str, int, int, str]], str]:
    """``converge check`` of a project: exit code, (path, line, col, code) per finding, output."""
    project = {
        "site/site.yaml": SITE.replace("REGISTER", "0"),
        "policies/p.yaml": POLICY.replace("TITLE", "t"),
    }
    for name, text in {**project, **files}.items():
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    with contextlib.chdir(tmp_path):
        code = main(["check", "-p", "policies", "-s", "site", "--at", "2026-06-01"])
    out, err = capsys.readouterr()
    assert err == ""
    lines = out.splitlines()
    assert lines[-1].endswith(("warning", "warnings")), out
    found = []
    for line in lines[:-1]:
        match = FINDING.match(line)
        assert match, f"not one finding per line: {line!r}"
        assert match["code"] in CODES or match["code"].startswith("modbus-"), line
        found.append((match["path"], int(match["line"]), int(match["col"]), match["code"]))
    return code, found, out


CRASHES = {
    "a !!bool tag on a word that is no boolean": (
        "policies/p.yaml",
        POLICY.replace("TITLE", "!!bool maybe"),
        "!!bool",
        "yaml-bad-value",
    ),
    "a !!timestamp tag on a word that is no time": (
        "policies/p.yaml",
        POLICY.replace("TITLE", "!!timestamp x"),
        "!!timestamp",
        "yaml-bad-value",
    ),
    "a 15,000-digit binary integer as a title": (
        "policies/p.yaml",
        POLICY.replace("TITLE", HUGE_BINARY),
        "0b1",
        "yaml-number-too-large",
    ),
    "a 15,000-digit binary integer as a register": (
        "site/site.yaml",
        SITE.replace("REGISTER", HUGE_BINARY),
        "0b1",
        "yaml-number-too-large",
    ),
    "a 401-digit deadband": (
        "policies/p.yaml",
        POLICY + "  on_change: {deadband: 1" + "0" * 400 + "}\n",
        "1000",
        "yaml-number-too-large",
    ),
    "a 4,400-digit decimal integer": (
        "policies/p.yaml",
        POLICY.replace("TITLE", "9" * 4_400),
        "999",
        "yaml-number-too-large",
    ),
    "an integer beyond 2**53 where a count belongs": (
        "site/site.yaml",
        SITE.replace("REGISTER", "0").replace(
            "    points:", "    limits: {max_connections: 9007199254740993}\n    points:"
        ),
        "9007199254740993",
        "yaml-number-too-large",
    ),
    "an exception that expires on the calendar's last day": (
        "policies/p.yaml",
        POLICY
        + textwrap.dedent(
            """\
            exceptions:
              - devices: {id: reactor-1}
                waive: [capture]
                reason: legacy
                approved_by: someone
                expires: 9999-12-31
            """
        ),
        "9999-12-31",
        "bad-value",
    ),
    "a NaN where a Modbus scale belongs": (
        "site/site.yaml",
        SITE.replace("REGISTER", "0").replace("type: int16}", "type: int16, scale: .nan}"),
        ".nan",
        "bad-value",
    ),
}


def place(text: str, needle: str) -> tuple[int, int]:
    """The line and column of the first ``needle`` in ``text``."""
    before = text[: text.index(needle)]
    return before.count("\n") + 1, len(before) - (before.rfind("\n") + 1) + 1


@pytest.mark.parametrize("case", CRASHES)
def test_a_value_that_crashed_the_compiler_is_a_placed_finding(
    case: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    name, text, needle, finding_code = CRASHES[case]
    code, found, _ = check(tmp_path, capsys, {name: text})
    assert code == 1
    assert (name, *place(text, needle), finding_code) in found, found


@pytest.mark.parametrize("char", ["\x00", "\x07", "\x1b", "\x7f", "\x9b"])
def test_a_control_character_is_reported_at_its_line_and_column(
    char: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    text = POLICY.replace("TITLE", f"tem{char}peratures")
    code, found, out = check(tmp_path, capsys, {"policies/p.yaml": text})
    assert code == 1
    assert found == [("policies/p.yaml", 2, 11, "yaml-syntax")], out
    assert f"U+{ord(char):04X}" in out


def test_a_line_number_of_three_digits_is_printed_as_digits(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """rich would turn ':100:' into an emoji and ':1234:' into another."""
    padding = "# padding\n" * 92
    text = POLICY + padding + "retension: 7y\n"
    _, found, out = check(tmp_path, capsys, {"policies/p.yaml": text})
    assert found == [("policies/p.yaml", 100, 1, "unknown-key")]
    assert "policies/p.yaml:100:1: " in out


@pytest.mark.parametrize("separator", ["\\n", "\\u2028", "\\r", "\\x85"])
def test_a_key_or_value_holding_a_line_break_stays_on_one_line(
    separator: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cron = f'  cron: "61{separator} * * * *"\n'
    text = POLICY.replace("  every: 5s\n", cron) + f'"retension{separator}x": 7y\n'
    code, found, out = check(tmp_path, capsys, {"policies/p.yaml": text})
    assert code == 1
    assert [f[3] for f in found] == ["cron-invalid", "unknown-key"], out


def test_places_do_not_wrap_after_two_to_the_twenty_four_lines() -> None:
    text = "\n" * 16_777_221 + "policy: x\n"
    doc = load_text(text, "big.yaml")
    assert doc.at(("policy",)).line == 16_777_222
    wide = "policy:" + " " * 16_777_300 + "x\n"
    doc = load_text(wide, "wide.yaml")
    assert doc.at(("policy",)).col == 16_777_308


# --- bounds -------------------------------------------------------------------------------


def refused(text: str) -> tuple[str, int, int, str]:
    with pytest.raises(FindingsError) as caught:
        load_text(text, "f.yaml")
    [finding] = caught.value.findings
    return (finding.location.path, finding.location.line, finding.location.col, finding.code)


def test_a_list_longer_than_the_bound_is_refused_at_the_first_item_too_many() -> None:
    items = load.MAX_ITEMS
    text = "values:\n" + "  - 1\n" * (items + 5)
    assert refused(text) == ("f.yaml", items + 2, 5, "yaml-too-long")


def test_a_mapping_with_more_keys_than_the_bound_is_refused() -> None:
    items = load.MAX_ITEMS
    text = "".join(f"k{i}: 1\n" for i in range(items + 1))
    assert refused(text) == ("f.yaml", items + 1, 1, "yaml-too-long")


def test_a_string_longer_than_the_bound_is_refused_at_its_place() -> None:
    text = "a: 1\nb: " + "x" * (load.MAX_STRING + 1) + "\n"
    assert refused(text) == ("f.yaml", 2, 4, "yaml-too-long")


def bomb(levels: int) -> str:
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    for i in range(1, levels):
        lines.append(f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 10) + "]")
    return "\n".join(lines) + "\n"


def test_the_alias_budget_does_not_grow_with_padding() -> None:
    """Padding a file with comments must not buy a bigger bomb."""
    small = bomb(7)  # 10**7 nodes: past the budget
    path, line, col, code = refused(small)
    assert code == "yaml-alias-bomb"
    padding = ("#" * 99 + "\n") * 200_000  # 20 MB of comments
    # refused at the very same alias, 200,000 lines further down: the budget did not grow
    assert refused(padding + small) == (path, line + 200_000, col, code)


def test_aliases_within_the_budget_are_expanded() -> None:
    doc = load_text(bomb(5), "f.yaml")  # 10**5 nodes: within the budget
    assert len(doc.data["a4"]) == 10


def test_the_bounds_are_documented() -> None:
    page = (Path(__file__).parent.parent / "docs" / "policy-language.md").read_text()
    for bound in (load.MAX_BYTES, load.MAX_ITEMS, load.MAX_STRING, load.ALIAS_BUDGET):
        assert f"{bound:,}" in page, bound
