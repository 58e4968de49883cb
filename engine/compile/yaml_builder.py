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
non-scalar keys, tags outside the safe schema, more than one document, alias
expansion beyond a node budget ("billion laughs"), nesting beyond a depth.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any

import yaml

from engine.errors import Finding, InputError, Location, error

Shadow = dict[str, Any] | list[Any]

POSITION_BITS = 24
KEY_SHIFT = 48
MAX_DEPTH = 100

_STR = "tag:yaml.org,2002:str"
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


class AliasBomb(InputError):
    """A document whose aliases would expand past the alias budget (a "billion laughs")."""

    def __init__(self, location: Location) -> None:
        super().__init__(f"{location}: too many aliases")
        self.location = location


class TooDeep(InputError):
    """A document nested deeper than the builder allows."""

    def __init__(self, location: Location) -> None:
        super().__init__(f"{location}: nested too deep")
        self.location = location


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

    def __init__(self, loader: Any, path: str, node_budget: int) -> None:
        self.loader = loader
        self.path = path
        self.budget = node_budget
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
        node = yaml.ScalarNode(tag, event.value, event.start_mark, event.end_mark)
        try:
            return getattr(self.loader, constructor)(node)
        except (yaml.constructor.ConstructorError, ValueError) as exc:
            self.findings.append(
                error(
                    self.mark(event),
                    "yaml-bad-value",
                    f"cannot read {event.value!r} as {tag}: {exc}",
                )
            )
            return None

    def on_start(self, event: Any) -> None:
        is_map = isinstance(event, yaml.MappingStartEvent)
        if event.tag not in (None, "!", _MAP if is_map else _SEQ):
            self.findings.append(
                error(self.mark(event), "yaml-bad-value", f"tag {event.tag} is not allowed")
            )
        if len(self.stack) >= MAX_DEPTH:
            raise TooDeep(self.mark(event))
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
            raise AliasBomb(self.mark(event))

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
        self.budget -= 1
        if anchor:
            self.anchors[anchor] = (value, shadow, position, size)
        if not self.stack:
            self.root = Built(value, shadow, position)
            return
        parent = self.stack[-1]
        parent.size += size
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


def _key_position(entry: Any) -> int:
    packed = entry[0] if isinstance(entry, tuple) else entry
    return int(packed >> KEY_SHIFT)
