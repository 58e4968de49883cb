"""Stage 1, load: YAML bytes to plain data that remembers ``path:line:col``.

Safety first: only the safe schema, bounded file size, bounded alias
expansion (the "billion laughs" attack), duplicate keys rejected (PyYAML
silently keeps the last one), tabs in indentation and non-scalar keys
rejected, strict UTF-8. libyaml's C composer is used when it is installed.

The result is a :class:`Document`: ``data`` is made of dicts, lists, str,
int, float, bool, None and ``datetime.date``; ``at(path)`` gives the
location of the value at a path (a tuple of keys and list indexes) and
``key_at(path)`` the location of the mapping key that introduces it.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from engine.errors import Finding, FindingsError, Location, error

try:
    from yaml import CSafeLoader as _Loader
except ImportError:  # pragma: no cover - depends on how PyYAML was built
    from yaml import SafeLoader as _Loader  # type: ignore[assignment]

MAX_BYTES = 64 * 1024 * 1024
"""Largest YAML file accepted: room for a 100,000-point site inventory, not for a bomb."""

MAX_EXPANSION = 4
"""Alias expansion may at most multiply the node count by this factor (plus a floor)."""

MAX_NODES_FLOOR = 100_000

DocPath = tuple[str | int, ...]

_MERGE_TAG = "tag:yaml.org,2002:merge"
_COLLECTION_TAGS = frozenset({"tag:yaml.org,2002:map", "tag:yaml.org,2002:seq"})
_LEADING_TAB = re.compile(r"^( *)\t", re.MULTILINE)


@dataclass
class Document:
    """A loaded YAML file: plain data plus the place of every node."""

    path: str
    data: Any
    marks: dict[DocPath, Location] = field(default_factory=dict)
    key_marks: dict[DocPath, Location] = field(default_factory=dict)

    def at(self, path: Iterable[str | int] = ()) -> Location:
        """Where the value at ``path`` starts, or its nearest known ancestor."""
        return _nearest(self.marks, tuple(path), self.path)

    def key_at(self, path: Iterable[str | int]) -> Location:
        """Where the key that introduces ``path`` starts (the value's place if none)."""
        path = tuple(path)
        return self.key_marks.get(path) or self.at(path)


def _nearest(marks: dict[DocPath, Location], path: DocPath, file: str) -> Location:
    while path:
        if path in marks:
            return marks[path]
        path = path[:-1]
    return marks.get((), Location(file))


class _Builder:
    """Turns a composed node graph into plain data, recording places as it goes."""

    def __init__(self, doc: Document, loader: Any, node_budget: int) -> None:
        self.doc = doc
        self.loader = loader
        self.budget = node_budget
        self.findings: list[Finding] = []

    def mark(self, node: yaml.Node) -> Location:
        return Location(self.doc.path, node.start_mark.line + 1, node.start_mark.column + 1)

    def build(self, node: yaml.Node, path: DocPath) -> Any:
        self.budget -= 1
        if self.budget < 0:
            raise _TooManyNodes(self.mark(node))
        self.doc.marks[path] = self.mark(node)
        if node.tag not in _COLLECTION_TAGS and not isinstance(node, yaml.ScalarNode):
            message = f"tag {node.tag} is not allowed"
            self.findings.append(error(self.mark(node), "yaml-bad-value", message))
            return None
        if isinstance(node, yaml.MappingNode):
            return self.mapping(node, path)
        if isinstance(node, yaml.SequenceNode):
            return [self.build(item, (*path, i)) for i, item in enumerate(node.value)]
        return self.scalar(node)

    def scalar(self, node: yaml.Node) -> Any:
        try:
            return self.loader.construct_object(node, deep=True)
        except yaml.constructor.ConstructorError as exc:
            self.findings.append(error(self.mark(node), "yaml-bad-value", _problem(exc)))
            return None

    def mapping(self, node: yaml.MappingNode, path: DocPath) -> dict[str, Any]:
        result: dict[str, Any] = {}
        for key_node, value_node in self.merged_pairs(node):
            key = self.key(key_node)
            if key is None:
                continue
            if key in result:
                first = self.doc.key_marks[(*path, key)]
                self.findings.append(
                    error(
                        self.mark(key_node),
                        "yaml-duplicate-key",
                        f"duplicate key '{key}' (first defined at {first.line}:{first.col})",
                    )
                )
                continue
            self.doc.key_marks[(*path, key)] = self.mark(key_node)
            result[key] = self.build(value_node, (*path, key))
        return result

    def key(self, node: yaml.Node) -> str | None:
        if not isinstance(node, yaml.ScalarNode):
            self.findings.append(
                error(self.mark(node), "yaml-non-scalar-key", "mapping keys must be plain scalars")
            )
            return None
        value = self.scalar(node)
        return value if isinstance(value, str) else str(value)

    def merged_pairs(self, node: yaml.MappingNode) -> list[tuple[yaml.Node, yaml.Node]]:
        """The node's pairs with YAML merge keys (``<<: *base``) expanded; own keys win."""
        own = [(k, v) for k, v in node.value if k.tag != _MERGE_TAG]
        own_keys = {k.value for k, _ in own if isinstance(k, yaml.ScalarNode)}
        inherited: list[tuple[yaml.Node, yaml.Node]] = []
        for key_node, value_node in node.value:
            if key_node.tag != _MERGE_TAG:
                continue
            is_list = isinstance(value_node, yaml.SequenceNode)
            sources = value_node.value if is_list else [value_node]
            for source in sources:
                if not isinstance(source, yaml.MappingNode):
                    self.findings.append(
                        error(self.mark(source), "yaml-bad-merge", "'<<' must name a mapping")
                    )
                    continue
                for pair in self.merged_pairs(source):
                    if pair[0].value not in own_keys:
                        own_keys.add(pair[0].value)
                        inherited.append(pair)
        return inherited + own


class _TooManyNodes(Exception):
    def __init__(self, location: Location) -> None:
        self.location = location


def _problem(exc: yaml.MarkedYAMLError) -> str:
    text = " ".join(part for part in (exc.context, exc.problem) if part)
    return text or str(exc)


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
    if isinstance(raw, str):
        raw = raw.encode("utf-8")
    if len(raw) > MAX_BYTES:
        message = f"file is {len(raw)} bytes, more than the {MAX_BYTES} bytes accepted"
        raise FindingsError([error(Location(path), "yaml-too-large", message)])
    text = _decode(raw, path)
    tab_findings = _check_tabs(text, path)
    if tab_findings:
        raise FindingsError(tab_findings)
    loader = _Loader(text)
    try:
        root = loader.get_single_node()
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        finding = error(_mark_location(path, mark), "yaml-syntax", _problem(exc))
        raise FindingsError([finding]) from exc
    except yaml.YAMLError as exc:
        raise FindingsError([error(Location(path), "yaml-syntax", str(exc))]) from exc
    finally:
        loader.dispose()
    return _build(root, path, loader, node_budget=max(MAX_NODES_FLOOR, len(raw) * MAX_EXPANSION))


def _build(root: yaml.Node | None, path: str, loader: Any, node_budget: int) -> Document:
    doc = Document(path, None)
    if root is None:
        doc.marks[()] = Location(path)
        return doc
    builder = _Builder(doc, loader, node_budget)
    try:
        doc.data = builder.build(root, ())
    except _TooManyNodes as exc:
        message = "aliases expand to too many nodes (possible 'billion laughs' alias bomb)"
        raise FindingsError([error(exc.location, "yaml-alias-bomb", message)]) from None
    except RecursionError:
        message = "nesting too deep (or a recursive alias)"
        raise FindingsError([error(Location(path), "yaml-too-deep", message)]) from None
    if builder.findings:
        raise FindingsError(builder.findings)
    return doc


def load_file(file: Path, display: str | None = None) -> Document:
    """Load a YAML file; ``display`` is the path printed in findings (default: as given)."""
    shown = display or str(file)
    try:
        size = file.stat().st_size
        if size > MAX_BYTES:
            message = f"file is {size} bytes, more than the {MAX_BYTES} bytes accepted"
            raise FindingsError([error(Location(shown), "yaml-too-large", message)])
        raw = file.read_bytes()
    except OSError as exc:
        raise FindingsError(
            [error(Location(shown), "file-unreadable", f"cannot read file: {exc.strerror}")]
        ) from exc
    return load_text(raw, shown)


def load_files(
    files: Iterable[Path], display: Callable[[Path], str] = str
) -> tuple[list[Document], list[Finding]]:
    """Load many files, collecting every file's findings instead of stopping at the first."""
    documents: list[Document] = []
    findings: list[Finding] = []
    for file in files:
        try:
            documents.append(load_file(file, display(file)))
        except FindingsError as exc:
            findings.extend(exc.findings)
    return documents, findings
