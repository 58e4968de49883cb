"""The load stage: safe YAML with a place for every node, and a clear finding for bad input."""

from __future__ import annotations

import datetime
from pathlib import Path

import pytest

from engine.compile.load import MAX_BYTES, load_file, load_text
from engine.errors import FindingsError


def codes_at(text: str | bytes) -> list[tuple[int, int, str]]:
    with pytest.raises(FindingsError) as caught:
        load_text(text, "f.yaml")
    return [(f.location.line, f.location.col, f.code) for f in caught.value.findings]


def test_every_node_knows_its_line_and_column():
    doc = load_text("policy: a\ncapture:\n  every: 5s\nlist:\n  - x\n  - {y: 2}\n", "p.yaml")
    assert doc.data == {"policy": "a", "capture": {"every": "5s"}, "list": ["x", {"y": 2}]}
    assert str(doc.at(("capture", "every"))) == "p.yaml:3:10"
    assert str(doc.key_at(("capture", "every"))) == "p.yaml:3:3"
    assert str(doc.at(("list", 1, "y"))) == "p.yaml:6:9"


def test_unknown_path_falls_back_to_nearest_ancestor():
    doc = load_text("a:\n  b: 1\n", "p.yaml")
    assert str(doc.at(("a", "b", "c", 4))) == "p.yaml:2:6"


def test_duplicate_keys_are_rejected_not_silently_overwritten():
    assert codes_at("a: 1\nb:\n  c: 1\n  c: 2\n") == [(4, 3, "yaml-duplicate-key")]


def test_every_duplicate_is_reported():
    assert [c for _, _, c in codes_at("a: 1\na: 2\nb: 1\nb: 2\n")] == ["yaml-duplicate-key"] * 2


def test_billion_laughs_is_rejected_quickly():
    lines = ["a: &a [x, x, x, x, x, x, x, x, x, x]"]
    for i, name in enumerate("bcdefghij"):
        prev = "abcdefghij"[i]
        lines.append(f"{name}: &{name} [{', '.join(['*' + prev] * 10)}]")
    assert codes_at("\n".join(lines))[0][2] == "yaml-alias-bomb"


def test_small_aliases_and_merge_keys_are_allowed():
    doc = load_text("base: &b {x: 1, y: 2}\nd:\n  <<: *b\n  y: 3\n", "p.yaml")
    assert doc.data["d"] == {"x": 1, "y": 3}


def test_tab_indentation_names_the_line():
    assert codes_at("a:\n  b: 1\n\tc: 2\n") == [(3, 1, "yaml-tab-indent")]


def test_non_utf8_names_the_byte():
    assert codes_at(b"a: 1\nb: caf\xe9\n") == [(2, 7, "yaml-not-utf8")]


def test_non_scalar_key():
    assert codes_at("? [a, b]\n: 1\n") == [(1, 3, "yaml-non-scalar-key")]


def test_syntax_error_has_a_place():
    assert codes_at("a: [1, 2\nb: 3\n")[0][2] == "yaml-syntax"


def test_python_tags_are_refused():
    assert codes_at("a: !!python/object/apply:os.system [ls]\n")[0][2] in (
        "yaml-bad-value",
        "yaml-syntax",
    )


def test_dates_become_dates():
    assert load_text("expires: 2027-03-31\n", "p.yaml").data == {
        "expires": datetime.date(2027, 3, 31)
    }


def test_empty_file_is_none_data():
    assert load_text("", "p.yaml").data is None


def test_oversized_file_is_refused_before_reading(tmp_path: Path):
    big = tmp_path / "big.yaml"
    with big.open("wb") as handle:
        handle.truncate(MAX_BYTES + 1)
    with pytest.raises(FindingsError) as caught:
        load_file(big, "big.yaml")
    assert caught.value.findings[0].code == "yaml-too-large"


def test_missing_file(tmp_path: Path):
    with pytest.raises(FindingsError) as caught:
        load_file(tmp_path / "nope.yaml", "nope.yaml")
    assert caught.value.findings[0].code == "file-unreadable"
