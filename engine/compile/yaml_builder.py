"""Plain data and the place of every node, built straight from libyaml's events.

Composing a node graph first (``yaml.compose``) costs five times as much as
reading the events, because every node and its two marks become Python
objects that are thrown away right after. This builder keeps only the data
and a *shadow* of it that holds positions: for a mapping, a dict from key to
an entry; for a sequence, a list of entries. An entry is a packed int
(``key position << 48 | value position``, a position being
``line << 24 | column``) or, for a collection, a tuple of that int and the
collection's own shadow.

What YAML would let through silently is refused here: duplicate keys,
non-scalar keys, tags outside the safe schema, more than one document, a
scalar its tag cannot read, an integer beyond what canonical JSON carries
exactly (±(2**53 - 1)). The bounds stop the build at the node that crosses
them: alias expansion beyond a fixed node budget ("billion laughs", the same
whatever the file's size), nesting beyond a depth, a list or mapping with too
many entries, a scalar with too many characters.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any

import yaml

from engine.errors import Finding, InputError, Location, error

Shadow = dict[str, Any] | list[Any]

POSITION_BITS = 28
"""Bits of a line or a column number in a packed position: more than any file within the
size bound has lines, or characters on one line (load.py asserts it)."""
KEY_SHIFT = 2 * POSITION_BITS
MAX_DEPTH = 100
MAX_ITEMS = 100_000
"""Entries of one list or mapping: a site of 100,000 devices, not a list of millions of numbers."""
MAX_STRING = 65_536
"""Characters of one scalar (a key, a value)."""
ALIAS_BUDGET = 1_000_000
"""Nodes all the aliases of one file may expand to, whatever the file's size."""
SAFE_INTEGER = 2**53 - 1
"""The largest integer canonical JSON (RFC 8785) carries exactly."""
_INTEGER_TEXT = 100
"""An integer written with more characters is refused before it is converted."""

_STR = "tag:yaml.org,2002:str"
_INT = "tag:yaml.org,2002:int"
_MERGE = "tag:yaml.org,2002:merge"
_SEQ = "tag:yaml.org,2002:seq"
_MAP = "tag:yaml.org,2002:map"
_CONSTRUCTORS = {
    "tag:yaml.org,2002:int": "construct_yaml_int",
    "tag:yaml.org,2002:float": "construct_yaml_float",
    "tag:yaml.org,2002:bool": "construct_yaml_bool",
    "tag:yaml.org,2002:null": "construct_yaml_null",
    "tag:yaml.org,2002:timestamp": "construct_yaml_timestamp",
}


def pack(line: int, col: int) -> int:
    """A 1-based line and column as one int."""
    return line << POSITION_BITS | col


def unpack(position: int) -> tuple[int, int]:
    return position >> POSITION_BITS, position & ((1 << POSITION_BITS) - 1)


class BoundExceeded(InputError):
    """A document that crosses one of the builder's bounds; ``finding`` says which, where."""

    def __init__(self, finding: Finding) -> None:
        super().__init__(str(finding))
        self.finding = finding


_KEY_PENDING = object()
_SKIP = object()
_MERGE_KEY = object()


@dataclass
class _Open:
    """A mapping or sequence whose end event has not come yet."""

    value: Any
    shadow: Any
    position: int
    anchor: str | None
    key: Any = _KEY_PENDING
    key_position: int = 0
    size: int = 1
    merges: list[tuple[Any, Any]] = field(default_factory=list)


@dataclass
class Built:
    data: Any
    shadow: Any
    position: int


class Builder:
    """Consumes the events of one document; collects findings instead of stopping."""

    def __init__(self, loader: Any, path: str, alias_budget: int = ALIAS_BUDGET) -> None:
        self.loader = loader
        self.path = path
        self.budget = alias_budget
        self.stack: list[_Open] = []
        self.anchors: dict[str, tuple[Any, Any, int, int]] = {}
        self.tags: dict[str, str] = {}
        self.findings: list[Finding] = []
        self.root: Built | None = None
        self.documents = 0

    def location(self, position: int) -> Location:
        return Location(self.path, *unpack(position))

    def run(self, events: Any) -> Built | None:
        handlers = {
            yaml.ScalarEvent: self.on_scalar,
            yaml.MappingStartEvent: self.on_start,
            yaml.SequenceStartEvent: self.on_start,
            yaml.MappingEndEvent: self.on_end,
            yaml.SequenceEndEvent: self.on_end,
            yaml.AliasEvent: self.on_alias,
            yaml.DocumentStartEvent: self.on_document,
        }
        for event in events:
            handler = handlers.get(type(event))
            if handler is not None:
                handler(event)
        return self.root

    def on_document(self, event: Any) -> None:
        self.documents += 1
        if self.documents == 2:
            self.findings.append(
                error(self.mark(event), "yaml-syntax", "more than one YAML document in the file")
            )

    def mark(self, event: Any) -> Location:
        return Location(self.path, event.start_mark.line + 1, event.start_mark.column + 1)

    def position(self, event: Any) -> int:
        return pack(event.start_mark.line + 1, event.start_mark.column + 1)

    def on_scalar(self, event: Any) -> None:
        """The hot path: most events are plain scalars, most of them strings."""
        if len(event.value) > MAX_STRING:
            self.refuse(event, "yaml-too-long", f"a scalar of more than {MAX_STRING:,} characters")
        tag = event.tag
        if tag is None or tag == "!":
            tag = (
                (self.tags.get(event.value) or self.resolve(event.value))
                if (event.implicit[0])
                else _STR
            )
        value = event.value if tag is _STR or tag == _STR else self.scalar(event, tag)
        mark = event.start_mark
        position = (mark.line + 1) << POSITION_BITS | (mark.column + 1)
        self.done(value, None, position, anchor=event.anchor, tag=tag)

    def resolve(self, value: str) -> str:
        tag: str = self.loader.resolve(yaml.ScalarNode, value, (True, False))
        self.tags[value] = tag
        return tag

    def scalar(self, event: Any, tag: str) -> Any:
        if tag == _MERGE:
            return event.value
        constructor = _CONSTRUCTORS.get(tag)
        if constructor is None:
            self.findings.append(
                error(self.mark(event), "yaml-bad-value", f"tag {tag} is not allowed")
            )
            return None
        if tag == _INT and len(event.value) > _INTEGER_TEXT:
            return self.too_large(event)
        node = yaml.ScalarNode(tag, event.value, event.start_mark, event.end_mark)
        try:
            value = getattr(self.loader, constructor)(node)
        except Exception as exc:  # PyYAML's constructors raise KeyError, AttributeError, ...
            word = tag.rsplit(":", 1)[-1]
            message = f"{_shown(event.value)} cannot be read as {_A_WORD.get(word, word)}"
            reason = str(exc) if isinstance(exc, ValueError) else ""
            if reason and len(reason) <= 60 and reason.isprintable():
                message += f": {reason}"
            self.findings.append(error(self.mark(event), "yaml-bad-value", message))
            return None
        if isinstance(value, int) and not isinstance(value, bool) and abs(value) > SAFE_INTEGER:
            return self.too_large(event)
        return value

    def too_large(self, event: Any) -> None:
        message = (
            f"integer {_shown(event.value)} is beyond ±{SAFE_INTEGER:,} (2**53 - 1),"
            " the largest that canonical JSON carries exactly"
        )
        self.findings.append(error(self.mark(event), "yaml-number-too-large", message))

    def refuse(self, where: Any, code: str, what: str) -> None:
        """Stop the build at an event or a position: it crosses a bound (see the docs)."""
        place = self.location(where) if isinstance(where, int) else self.mark(where)
        message = f"{what}, past the bound a file may hold (docs/policy-language.md#bounds)"
        raise BoundExceeded(error(place, code, message))

    def on_start(self, event: Any) -> None:
        is_map = isinstance(event, yaml.MappingStartEvent)
        if event.tag not in (None, "!", _MAP if is_map else _SEQ):
            self.findings.append(
                error(self.mark(event), "yaml-bad-value", f"tag {event.tag} is not allowed")
            )
        if len(self.stack) >= MAX_DEPTH:
            self.refuse(event, "yaml-too-deep", f"nesting deeper than {MAX_DEPTH} levels")
        value: Any = {} if is_map else []
        shadow: Any = {} if is_map else []
        self.stack.append(_Open(value, shadow, self.position(event), event.anchor))

    def on_end(self, event: Any) -> None:
        frame = self.stack.pop()
        if frame.merges:
            self.apply_merges(frame)
        self.done(frame.value, frame.shadow, frame.position, anchor=frame.anchor, size=frame.size)

    def on_alias(self, event: Any) -> None:
        target = self.anchors.get(event.anchor)
        if target is None:
            self.findings.append(
                error(self.mark(event), "yaml-syntax", f"alias *{event.anchor} names no anchor")
            )
            self.done(None, None, self.position(event))
            return
        value, shadow, position, size = target
        self.charge(size, event)
        self.done(copy.deepcopy(value), shadow, position, size=size)

    def charge(self, size: int, event: Any) -> None:
        self.budget -= size
        if self.budget < 0:
            self.refuse(
                event,
                "yaml-alias-bomb",
                f"aliases expand to more than {ALIAS_BUDGET:,} nodes"
                " (possible 'billion laughs' alias bomb)",
            )

    def done(
        self,
        value: Any,
        shadow: Any,
        position: int,
        *,
        anchor: str | None = None,
        size: int = 1,
        tag: str | None = None,
    ) -> None:
        """A complete node: file it under its anchor and into its parent (or as the root)."""
        if anchor:
            self.anchors[anchor] = (value, shadow, position, size)
        if not self.stack:
            self.root = Built(value, shadow, position)
            return
        parent = self.stack[-1]
        parent.size += size
        if len(parent.value) >= MAX_ITEMS and parent.key is _KEY_PENDING:
            kind = "list" if isinstance(parent.value, list) else "mapping"
            self.refuse(position, "yaml-too-long", f"a {kind} of more than {MAX_ITEMS:,} entries")
        if isinstance(parent.value, list):
            parent.value.append(value)
            parent.shadow.append(position if shadow is None else (position, shadow))
        elif parent.key is _KEY_PENDING:
            self.take_key(parent, value, shadow, position, tag)
        else:
            self.take_value(parent, value, shadow, position)

    def take_key(
        self, parent: _Open, key: Any, shadow: Any, position: int, tag: str | None
    ) -> None:
        parent.key_position = position
        if shadow is not None:
            self.findings.append(
                error(
                    self.location(position),
                    "yaml-non-scalar-key",
                    "mapping keys must be plain scalars",
                )
            )
            parent.key = _SKIP
        elif tag == _MERGE:
            parent.key = _MERGE_KEY
        else:
            parent.key = key if isinstance(key, str) else str(key)

    def take_value(self, parent: _Open, value: Any, shadow: Any, position: int) -> None:
        key, parent.key = parent.key, _KEY_PENDING
        if key is _SKIP:
            return
        if key is _MERGE_KEY:
            parent.merges.append((value, shadow))
            return
        if key in parent.value:
            line, col = unpack(_key_position(parent.shadow[key]))
            self.findings.append(
                error(
                    self.location(parent.key_position),
                    "yaml-duplicate-key",
                    f"duplicate key '{key}' (first defined at {line}:{col})",
                )
            )
            return
        parent.value[key] = value
        entry = parent.key_position << KEY_SHIFT | position
        parent.shadow[key] = entry if shadow is None else (entry, shadow)

    def apply_merges(self, frame: _Open) -> None:
        """YAML merge keys: ``<<: *base`` (or a list of them); own keys win, then the first."""
        sources: list[tuple[Any, Any]] = []
        for value, shadow in frame.merges:
            if isinstance(value, list):
                sources += [
                    (v, s[1] if isinstance(s, tuple) else None)
                    for v, s in zip(value, shadow, strict=True)
                ]
            else:
                sources.append((value, shadow))
        for value, shadow in sources:
            if not isinstance(value, dict):
                self.findings.append(
                    error(
                        self.location(frame.position), "yaml-bad-merge", "'<<' must name a mapping"
                    )
                )
                continue
            for key, item in value.items():
                if key not in frame.value:
                    frame.value[key] = item
                    frame.shadow[key] = shadow[key]


_A_WORD = {
    "bool": "true or false",
    "int": "an integer",
    "float": "a number",
    "null": "null",
    "timestamp": "a date or time",
}


def _shown(text: str) -> str:
    """A scalar's text, quoted and cut short: the message is one line."""
    return repr(text) if len(text) <= 40 else repr(text[:37]) + "..."


def _key_position(entry: Any) -> int:
    packed = entry[0] if isinstance(entry, tuple) else entry
    return int(packed >> KEY_SHIFT)
