"""Stage 1, load: YAML bytes to plain data that remembers ``path:line:col``.

Safety first: only the safe schema, bounded file size, bounded alias
expansion (the "billion laughs" attack, a budget independent of the file's
size), bounded lists, mappings and strings, duplicate keys rejected (PyYAML
silently keeps the last one), tabs in indentation, control characters and
non-scalar keys rejected, strict UTF-8. Every bound is stated in
docs/policy-language.md and refused at the place it is crossed. A syntax
error is put in plain words with a hint, the parser's own words after them
(:mod:`engine.compile.yaml_syntax`). libyaml's C parser is used when it is
installed.

The result is a :class:`Document`: ``data`` is made of dicts, lists, str,
int, float, bool, None and ``datetime.date``; ``at(path)`` gives the
location of the value at a path (a tuple of keys and list indexes) and
``key_at(path)`` the location of the mapping key that introduces it. The
events-to-data work is in :mod:`engine.compile.yaml_builder`.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from engine.compile.yaml_builder import (
    ALIAS_BUDGET,
    KEY_SHIFT,
    MAX_DEPTH,
    MAX_ITEMS,
    MAX_STRING,
    POSITION_BITS,
    BoundExceeded,
    Builder,
    Built,
    unpack,
)
from engine.compile.yaml_syntax import control_characters, syntax_message
from engine.errors import Finding, FindingsError, Location, error

try:
    from yaml import CSafeLoader as _Loader
except ImportError:  # pragma: no cover - depends on how PyYAML was built
    from yaml import SafeLoader as _Loader  # type: ignore[assignment]

MAX_BYTES = 64 * 1024 * 1024
"""Largest YAML file accepted: room for a 100,000-point site inventory, not for a bomb."""

assert MAX_BYTES < 1 << POSITION_BITS, "a line or column of an accepted file must fit a position"

BOUNDS = {
    "MAX_BYTES": MAX_BYTES,
    "MAX_ITEMS": MAX_ITEMS,
    "MAX_STRING": MAX_STRING,
    "ALIAS_BUDGET": ALIAS_BUDGET,
    "MAX_DEPTH": MAX_DEPTH,
}
"""Every bound of a loaded file, as docs/policy-language.md states them."""

DocPath = tuple[str | int, ...]

_LEADING_TAB = re.compile(r"^( *)\t", re.MULTILINE)


@dataclass
class Document:
    """A loaded YAML file: plain data plus the place of every node (see yaml_builder)."""

    path: str
    data: Any
    shadow: Any = None
    position: int = 0
    sha256: str = ""
    """``sha256:`` and the hex SHA-256 of the file's bytes as read: what plans name it by."""

    def at(self, path: Iterable[str | int] = ()) -> Location:
        """Where the value at ``path`` starts, or where its nearest known ancestor does."""
        position, _, _ = self._walk(tuple(path))
        return self._location(position)

    def key_at(self, path: Iterable[str | int]) -> Location:
        """Where the key that introduces ``path`` starts (the value's place if none)."""
        path = tuple(path)
        position, key_position, _ = self._walk(path)
        return self._location(key_position or position)

    def sub(self, path: DocPath, data: Any) -> Document:
        """The node at ``path`` (whose value is ``data``) as a document of its own.

        Its ``at`` and ``key_at`` take paths relative to that node, and walk
        only from there: the way to ask for the places of many siblings.
        """
        position, _, shadow = self._walk(path)
        return Document(self.path, data, shadow, position, self.sha256)

    def _walk(self, path: DocPath) -> tuple[int, int, Any]:
        """(value position, key position, shadow) of the deepest node on ``path``."""
        position, key_position, shadow = self.position, 0, self.shadow
        for part in path:
            entry = _child(shadow, part)
            if entry is None:
                return position, 0, None
            packed, shadow = entry if isinstance(entry, tuple) else (entry, None)
            position = packed & _POSITION_MASK
            key_position = packed >> KEY_SHIFT
        return position, key_position, shadow

    def _location(self, position: int) -> Location:
        if not position:
            return Location(self.path)
        return Location(self.path, *unpack(position))


_POSITION_MASK = (1 << KEY_SHIFT) - 1


def _child(shadow: Any, part: str | int) -> Any:
    if isinstance(shadow, dict):
        return shadow.get(part)
    if isinstance(shadow, list) and isinstance(part, int) and 0 <= part < len(shadow):
        return shadow[part]
    return None


def _mark_location(path: str, mark: Any) -> Location:
    if mark is None:
        return Location(path)
    return Location(path, mark.line + 1, mark.column + 1)


def _decode(raw: bytes, path: str) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw.count(b"\n", 0, exc.start) + 1
        col = exc.start - (raw.rfind(b"\n", 0, exc.start) + 1) + 1
        raise FindingsError(
            [error(Location(path, line, col), "yaml-not-utf8", "file is not valid UTF-8 text")]
        ) from exc


def _check_tabs(text: str, path: str) -> list[Finding]:
    if "\t" not in text:
        return []  # the common case, at the speed of a byte search
    findings = []
    for match in _LEADING_TAB.finditer(text):
        line = text.count("\n", 0, match.start()) + 1
        findings.append(
            error(
                Location(path, line, len(match.group(1)) + 1),
                "yaml-tab-indent",
                "tab character in indentation; YAML indents with spaces only",
            )
        )
    return findings


def load_text(raw: bytes | str, path: str) -> Document:
    """Load one YAML document. Raises :class:`FindingsError` with every problem found."""
    document, findings = _loaded(raw, path)
    if findings:
        raise FindingsError(findings)
    assert document is not None  # no finding: a document
    return document


UNREADABLE_VALUES = frozenset({"yaml-bad-value", "yaml-number-too-large"})
"""Findings of a value that cannot be read (a bad date, an unknown tag, a huge integer): the
rest of its file still reads, with that value null (:func:`load_files`)."""


def _loaded(raw: bytes | str, path: str) -> tuple[Document | None, list[Finding]]:
    """The document and every problem found; no document when the file cannot be read as
    one (its syntax, its size, a tab or control character), else one whose values that
    could not be read (:data:`UNREADABLE_VALUES`) are null."""
    if isinstance(raw, str):
        raw = raw.encode("utf-8")
    if len(raw) > MAX_BYTES:
        message = f"file is {len(raw)} bytes, more than the {MAX_BYTES} bytes accepted"
        return None, [error(Location(path), "yaml-too-large", message)]
    try:
        text = _decode(raw, path)
    except FindingsError as exc:
        return None, exc.findings
    unreadable = _check_tabs(text, path) + control_characters(text, path)
    if unreadable:
        return None, unreadable
    built, findings = _build(text, path)
    if any(f.code not in UNREADABLE_VALUES for f in findings):
        return None, findings
    sha256 = "sha256:" + hashlib.sha256(raw).hexdigest()
    if built is None:
        return Document(path, None, sha256=sha256), findings
    return Document(path, built.data, built.shadow, built.position, sha256), findings


def _build(text: str, path: str) -> tuple[Built | None, list[Finding]]:
    loader = _Loader(text)
    builder = Builder(loader, path)
    try:
        built = builder.run(iter(loader.get_event, None))  # None follows the stream's end
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        message = syntax_message(exc, text)
        return None, [error(_mark_location(path, mark), "yaml-syntax", message)]
    except yaml.YAMLError as exc:
        return None, [error(Location(path), "yaml-syntax", str(exc).replace("\n", " "))]
    except BoundExceeded as exc:
        return None, [exc.finding]
    finally:
        loader.dispose()
    return built, builder.findings


def load_file(file: Path, display: str | None = None) -> Document:
    """Load a YAML file; ``display`` is the path printed in findings (default: as given)."""
    document, findings = _file(file, display or str(file))
    if findings:
        raise FindingsError(findings)
    assert document is not None  # no finding: a document
    return document


def _file(file: Path, shown: str) -> tuple[Document | None, list[Finding]]:
    """:func:`_loaded` of a file's bytes."""
    try:
        size = file.stat().st_size
        if size > MAX_BYTES:
            message = f"file is {size} bytes, more than the {MAX_BYTES} bytes accepted"
            return None, [error(Location(shown), "yaml-too-large", message)]
        raw = file.read_bytes()
    except OSError as exc:
        said = f"cannot read file: {exc.strerror}"
        return None, [error(Location(shown), "file-unreadable", said)]
    return _loaded(raw, shown)


def load_files(
    files: Iterable[Path], display: Callable[[Path], str] = str
) -> tuple[list[Document], list[Finding]]:
    """Load many files, collecting every file's findings instead of stopping at the first.
    A file whose only problems are values that cannot be read is loaded with them null, so
    that its other problems are found too (:func:`unread_places`)."""
    documents: list[Document] = []
    findings: list[Finding] = []
    for file in files:
        document, found = _file(file, display(file))
        if document is not None:
            documents.append(document)
        findings.extend(found)
    return documents, findings


def unread_places(findings: Iterable[Finding]) -> set[Location]:
    """The places of values that could not be read: a later check finding such a value null
    says nothing more of it."""
    return {f.location for f in findings if f.code in UNREADABLE_VALUES}
