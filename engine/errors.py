"""Findings and the one exception tree of Converge.

A *finding* is what a compliance engineer sees: one line with a place, a
severity, a stable code and a message. Stages return findings; they never
print them and never stop at the first one.

Exceptions are for the cases where a command cannot go on at all::

    ConvergeError                 base of everything Converge raises on purpose
    ├── FindingsError             input with at least one error finding
    ├── PluginError               a plugin is missing, misspelled or broke its contract
    └── PlanRejected              a plan whose digest, signature or validity fails

Foreign exceptions (PyYAML, cerberus, croniter, rfc8785, ...) are translated
into findings or into one of these at the stage that calls the library.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from enum import StrEnum


@dataclass(frozen=True, order=True)
class Location:
    """A place in a file: 1-based line and column, as editors count them."""

    path: str
    line: int = 1
    col: int = 1

    def __str__(self) -> str:
        return f"{self.path}:{self.line}:{self.col}"


class Severity(StrEnum):
    ERROR = "error"
    WARNING = "warning"


@dataclass(frozen=True)
class Finding:
    """One error or warning at one place, with a stable ``code`` (see docs/findings.md)."""

    location: Location
    severity: Severity
    code: str
    message: str

    def __str__(self) -> str:
        return f"{self.location}: {self.severity}: {self.message}"

    @property
    def sort_key(self) -> tuple[Location, str, str, str]:
        return (self.location, self.severity.value, self.code, self.message)

    def as_dict(self) -> dict[str, str | int]:
        return {
            "path": self.location.path,
            "line": self.location.line,
            "col": self.location.col,
            "severity": self.severity.value,
            "code": self.code,
            "message": self.message,
        }


def error(location: Location, code: str, message: str) -> Finding:
    return Finding(location, Severity.ERROR, code, message)


def warning(location: Location, code: str, message: str) -> Finding:
    return Finding(location, Severity.WARNING, code, message)


def sort_findings(findings: Iterable[Finding]) -> list[Finding]:
    """Sorted by place, duplicates removed: the order every command prints."""
    return sorted(set(findings), key=lambda f: f.sort_key)


def has_errors(findings: Iterable[Finding]) -> bool:
    return any(f.severity is Severity.ERROR for f in findings)


class ConvergeError(Exception):
    """Base of every exception Converge raises on purpose; its text is for users."""


@dataclass
class FindingsError(ConvergeError):
    """Raised when input has errors and the command cannot produce its output."""

    findings: list[Finding] = field(default_factory=list)

    def __str__(self) -> str:
        return "\n".join(str(f) for f in sort_findings(self.findings))


class PluginError(ConvergeError):
    """A plugin is missing, cannot be loaded, or returned something off-contract."""


class PlanRejected(ConvergeError):
    """A plan that must not run: bad digest, bad signature, or past its valid_until."""
