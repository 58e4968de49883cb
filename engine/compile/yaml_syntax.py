"""YAML syntax errors in plain words, at the parser's place, the parser's own words after them.

libyaml says *while scanning a simple key could not find expected ':'*: true,
and opaque to a compliance engineer who wrote ``retention:7y``. Each of its
usual complaints gets a sentence saying what is wrong and a hint drawn from
the lines it is about (a missing space after a colon, an indentation that
does not match, a quote or bracket never closed); the parser's words follow,
for whoever searches for them. Characters YAML does not allow (control
characters, which the parser reports without a place) are found here first,
each at its line and column.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import yaml

from engine.errors import Finding, Location, error

_NOT_ALLOWED = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x84\x86-\x9f\ud800-\udfff\ufffe\uffff]")
"""What YAML 1.1 does not print: C0 and C1 controls but tab, line breaks and NEL; surrogates."""

_ASCII_ALLOWED = b"\t\n\r" + bytes(range(0x20, 0x7F))

_REPORTED = 10
"""Control characters reported per file: enough to find them, not one per byte of a binary."""

_GLUED_COLON = re.compile(r"^\s*(?:- +)?[^\s:#'\"][^:#]*:[^\s:/]")


def control_characters(text: str, path: str) -> list[Finding]:
    """A finding at each character YAML does not allow (the first few of them)."""
    if text.isascii() and not text.encode("ascii").translate(None, _ASCII_ALLOWED):
        return []  # the common case, without a regular expression over every character
    findings: list[Finding] = []
    for match in _NOT_ALLOWED.finditer(text):
        if len(findings) == _REPORTED:
            break
        start = match.start()
        line = text.count("\n", 0, start) + 1
        col = start - (text.rfind("\n", 0, start) + 1) + 1
        code = ord(match.group())
        message = (
            f"control character U+{code:04X} is not allowed in a YAML file; remove it"
            f' (inside double quotes it may be written "\\u{code:04x}")'
        )
        findings.append(error(Location(path, line, col), "yaml-syntax", message))
    return findings


def syntax_message(exc: yaml.MarkedYAMLError, text: str) -> str:
    """Plain words and a hint for ``exc``, then what the parser said."""
    said: str = " ".join(str(part) for part in (exc.context, exc.problem) if part) or str(exc)
    lines = text.split("\n")
    for pattern, explain in _EXPLANATIONS:
        if pattern in said:
            return f"{explain(exc, lines)} (the YAML parser said: {said})"
    return said


def _line(lines: list[str], mark: Any) -> str:
    index: int = -1 if mark is None else mark.line
    return lines[index] if 0 <= index < len(lines) else ""


def _quoted(line: str) -> str:
    text = line.strip()
    return repr(text if len(text) <= 40 else text[:37] + "...")


def _no_colon(exc: yaml.MarkedYAMLError, lines: list[str]) -> str:
    """``could not find expected ':'``: a key without its colon, or glued to its value."""
    start = exc.context_mark or exc.problem_mark
    line = _line(lines, start)
    where = f"line {start.line + 1}" if start is not None else "a line"
    if _GLUED_COLON.match(line):
        return (
            f"{where} {_quoted(line)} has no space after its colon; write 'key: value'"
            " with a space after the colon"
        )
    return (
        f"{where} {_quoted(line)} is neither 'key: value' nor a list item '- value';"
        " is a colon missing, or is it a continuation of the line above?"
    )


def _indentation(exc: yaml.MarkedYAMLError, lines: list[str]) -> str:
    """``mapping values are not allowed here``: a second ': ' in a value, an unfinished line
    above (no colon, or one glued to its value), or a key indented too deep."""
    mark = exc.problem_mark
    line = _line(lines, mark)
    where = f"line {mark.line + 1}" if mark is not None else "a line"
    if mark is not None and ": " in line[: mark.column]:
        return (
            f"{where} {_quoted(line)} has a second ': ' in one value; put the value in"
            " quotes if the colon is part of it"
        )
    number, above = _line_above(lines, mark)
    if _GLUED_COLON.match(above):
        return f"line {number} {_quoted(above)} has no space after its colon; write 'key: value'"
    if above and ":" not in above and not above.lstrip().startswith("-"):
        return f"line {number} {_quoted(above)} has no colon; a key is written 'key: value'"
    return (
        f"{where} {_quoted(line)} is indented deeper than the keys around it;"
        " keys of one mapping start in the same column"
    )


def _line_above(lines: list[str], mark: Any) -> tuple[int, str]:
    """The number and text of the nearest line above ``mark`` that is not blank or a comment."""
    index = (mark.line if mark is not None else 0) - 1
    while index >= 0:
        text = lines[index]
        if text.strip() and not text.lstrip().startswith("#"):
            return index + 1, text
        index -= 1
    return 0, ""


def _block_end(exc: yaml.MarkedYAMLError, lines: list[str]) -> str:
    """``did not find expected key`` / ``'-' indicator``: an item out of line with its siblings."""
    mark, start = exc.problem_mark, exc.context_mark
    line = _line(lines, mark)
    where = f"line {mark.line + 1}" if mark is not None else "a line"
    opened = f" (the block starts at line {start.line + 1})" if start is not None else ""
    return (
        f"{where} {_quoted(line)} does not line up with the keys or items of its block{opened};"
        " check its indentation: items of one list or keys of one mapping start in the same column"
    )


def _unclosed_quote(exc: yaml.MarkedYAMLError, lines: list[str]) -> str:
    start = exc.context_mark
    where = f" at line {start.line + 1}, column {start.column + 1}" if start is not None else ""
    return f"a quote opened{where} is never closed"


def _unclosed(bracket: str, closing: str) -> Callable[[yaml.MarkedYAMLError, list[str]], str]:
    def explain(exc: yaml.MarkedYAMLError, lines: list[str]) -> str:
        start = exc.context_mark
        where = f" at line {start.line + 1}, column {start.column + 1}" if start else ""
        return (
            f"the '{bracket}' opened{where} is not closed with '{closing}', or two of its"
            " items lack a comma between them"
        )

    return explain


def _cannot_start(exc: yaml.MarkedYAMLError, lines: list[str]) -> str:
    mark = exc.problem_mark
    line = _line(lines, mark)
    char = line[mark.column] if mark is not None and mark.column < len(line) else "this character"
    return f"a plain value cannot start with '{char}' (YAML reserves it); put the value in quotes"


def _unknown_escape(exc: yaml.MarkedYAMLError, lines: list[str]) -> str:
    return (
        "a backslash in double quotes starts an escape such as \\n; write \\\\ for a"
        " backslash, or use single quotes, where a backslash is plain text"
    )


def _trailing(exc: yaml.MarkedYAMLError, lines: list[str]) -> str:
    mark = exc.problem_mark
    line = _line(lines, mark)
    where = f"line {mark.line + 1}" if mark is not None else "a line"
    return (
        f"{where} {_quoted(line)} follows a complete value; check its indentation, or put"
        " the value above it in quotes"
    )


_EXPLANATIONS: tuple[tuple[str, Callable[[yaml.MarkedYAMLError, list[str]], str]], ...] = (
    ("could not find expected ':'", _no_colon),
    ("mapping values are not allowed", _indentation),
    ("did not find expected key", _block_end),
    ("did not find expected '-' indicator", _block_end),
    ("while scanning a quoted scalar", _unclosed_quote),
    ("did not find expected ',' or ']'", _unclosed("[", "]")),
    ("did not find expected ',' or '}'", _unclosed("{", "}")),
    ("cannot start any token", _cannot_start),
    ("found unknown escape character", _unknown_escape),
    ("expected <document start>", _trailing),
)
