"""Findings and the one exception tree of Converge.

A *finding* is what a compliance engineer sees: one line with a place, a
severity, a stable code and a message. Stages return findings; they never
print them and never stop at the first one.

Exceptions are for the cases where a command cannot go on at all. Every one
Converge raises on purpose is in this tree; the subsystem bases are defined
here, the leaves beside the code that raises them::

    ConvergeError                  base of everything Converge raises on purpose
    ├── InputError                 input that cannot be used as given
    │   ├── FindingsError          input with at least one error finding (all of them)
    │   ├── CanonicalError         a value with no canonical JSON form              (canonical)
    │   └── BoundExceeded          YAML past a bound (aliases, depth, entries, characters),
    │                              made a finding by the load stage   (compile.yaml_builder)
    ├── PluginError                a plugin is missing, misspelled or broke its contract
    ├── PlanRejected               a plan whose digest, shape, signature or validity fails
    ├── KeyStoreError              a key missing, locked or not valid when needed        (keys)
    │   └── SignatureRejected      no version made it, or one outside its validity       (keys)
    ├── EvidenceError              records that cannot become signed evidence
    │   ├── LeafError              a record or salt with no leaf                    (sign.leaf)
    │   ├── MissingSigner          a required key was not given to sign a batch    (sign.batch)
    │   └── SealerError            the sealer process failed or died          (evidence.sealer)
    ├── StoreError                 the evidence database or spool cannot be used       (store)
    ├── TransportError             a broker URL no transport takes, a link that cannot open
    │                                                                           (transport)
    ├── AccessDenied               the guard refused, or a principal may not act (exit code 3)
    ├── RetentionError             a retention run or a hold that may not go ahead as asked
    │   ├── RetentionBusy          another retention run holds the store's lock (store.retention)
    │   ├── StoreUnverified        the store does not verify: nothing is deleted from it
    │   │                                                                      (retention)
    │   └── HoldRefused            an unknown or released hold, or data already deleted (retention)
    └── VerificationError          evidence that does not verify
        ├── RootMismatch           a recomputed root that is not the one claimed  (sign.merkle)
        ├── ProofLengthError, HashLengthError, IndexOutOfRange,
        │   TreeSizeError          proof arithmetic that does not add up          (sign.merkle)
        ├── MalformedStatement, MissingSignature,
        │   CountMismatch, ChainBroken,
        │   PointMapMismatch       a batch that is not what was signed            (sign.batch)
        ├── BadTime                a stored time that is not an aware instant          (verify)
        ├── NoteError              a signed note that cannot be trusted              (sign.note)
        │   ├── MalformedNote      text that is no signed note (MalformedPlanNote: plans.signature)
        │   ├── MalformedKey       a key text that does not parse
        │   ├── NoKnownSignature   no signature by a trusted key
        │   └── BadSignature       a trusted key's signature that fails (a batch's names its key)
        ├── CheckpointError        not the checkpoint expected: MalformedCheckpoint, OriginMismatch
        ├── MalformedMessage       a site's message unlike the wire format says      (store.wire)
        └── CheckpointRefused      a site checkpoint the centre will not cosign (central.witness)

Foreign exceptions are mapped at the one boundary that calls the library
(``raise ... from exc``): PyYAML and cerberus into findings (compile.load,
compile.validate), SQLAlchemy and sqlite3 into :class:`StoreError` (store),
cryptography's ``InvalidSignature`` into :class:`VerificationError` leaves
(sign, keys), a protocol library's errors into gap records or ``OSError`` /
``TimeoutError`` at the session (plugins, see :class:`engine.protocols.Session`).
Private exceptions that only steer control flow inside one module
(``_Unusual``, ``_Differs``) never leave it; a test keeps this tree complete.
The bundle verifier (``engine/export/verifier.py``, shipped alone as
``verify.py``) imports nothing of Converge and has its own ``Refused``.
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
        return f"{self.location}: {self.severity}[{self.code}]: {self.message}"

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


class InputError(ConvergeError):
    """Input (files, values) that cannot be used as given."""


@dataclass
class FindingsError(InputError):
    """Raised when input has errors and the command cannot produce its output."""

    findings: list[Finding] = field(default_factory=list)

    def __str__(self) -> str:
        return "\n".join(str(f) for f in sort_findings(self.findings))


class PluginError(ConvergeError):
    """A plugin is missing, cannot be loaded, or returned something off-contract."""


class PlanRejected(ConvergeError):
    """A plan that must not run: bad digest, shape or signature, or past its valid_until."""


class KeyStoreError(ConvergeError):
    """A key that is missing, unusable, locked or not valid when it is needed."""


class EvidenceError(ConvergeError):
    """Records that cannot be made into signed evidence."""


class StoreError(ConvergeError):
    """A database (or spool) that cannot be opened, migrated, read or written."""


class CheckpointRefused(StoreError):
    """A checkpoint not signed: the unsigned tail holds an entry that is always signed in the
    transaction that writes it, so someone without the audit key wrote it (docs/audit.md)."""


class AccessDenied(ConvergeError):
    """The guard refused a principal, or a principal may not act from this account."""


class RetentionError(ConvergeError):
    """A retention run or a legal hold that may not go ahead as asked."""


class VerificationError(ConvergeError):
    """Evidence (a proof, a root, a signature, a signed note) that does not verify."""
