"""Text from the store, made safe to print on a terminal.

What a store holds was written by others: a caller of the read API (an unknown query
parameter's name in a refusal), a principal (a hold's reason, a review's note), a device (a
string value, a gap's detail), whoever can write to the database. Printed as it is, an
ESC byte in it moves the cursor, erases lines and writes text of its author's choosing on
an auditor's screen (or sets a link, or the clipboard); a bidirectional override turns the
rest of a line around. Every command prints such text through :func:`printable` (or
:func:`markup_safe`, inside Rich markup), which replaces each of these characters with a
visible escape:

- C0 controls, newline and tab included (a stored newline would start a line that looks
  like the command's own): ``\\x1b``, ``\\x0a``;
- DEL and the C1 controls (U+0080 to U+009F; U+009B is a CSI of its own): ``\\x7f``,
  ``\\x9b``;
- the bidirectional controls (U+061C, U+200E, U+200F, U+202A to U+202E, U+2066 to U+2069)
  and the line and paragraph separators (U+2028, U+2029): ``\\u202e``.

A backslash is left as it is: text that spells ``\\x1b`` and text that held an ESC print
alike, and both are harmless. Machine formats (JSON, CSV) are not passed through here: they
are data, kept byte for byte (JSON escapes the C0 controls itself).
"""

from __future__ import annotations

from rich.markup import escape

_BIDI = (0x061C, 0x200E, 0x200F, *range(0x202A, 0x202F), *range(0x2066, 0x206A))
_SEPARATORS = (0x2028, 0x2029)
_CONTROLS = (*range(0x20), *range(0x7F, 0xA0))

_VISIBLE: dict[int, str] = {
    **{code: f"\\x{code:02x}" for code in _CONTROLS},
    **{code: f"\\u{code:04x}" for code in (*_BIDI, *_SEPARATORS)},
}


def printable(text: str) -> str:
    """``text`` with every character that would steer a terminal replaced by a visible
    escape (``\\x1b``, ``\\u202e``); other text, backslashes included, as it is."""
    return text.translate(_VISIBLE)


def printable_lines(text: str) -> str:
    """``text`` line by line made :func:`printable`, its newlines kept: for a message of
    several lines (an error) that may quote store text."""
    return "\n".join(printable(line) for line in text.split("\n"))


def markup_safe(text: str) -> str:
    """``text`` made :func:`printable` and escaped for Rich markup: for store text inside a
    ``console.print`` string that has markup of its own."""
    return escape(printable(text))


__all__ = ["markup_safe", "printable", "printable_lines"]
