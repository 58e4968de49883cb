"""Signed plans: a detached C2SP signed note beside each plan, and its check before a run.

``converge plan --sign KEY --as PRINCIPAL --meaning MEANING`` writes
``<device>.plan.sig`` beside each ``<device>.plan.json``: a signed note
(:mod:`engine.sign.note`) whose text is seven lines, each ending in a newline,
an electronic signature as 21 CFR 11.50 asks (who, the printed name, when,
and what it means)::

    converge.plan-signature/v2
    <device id>
    sha256:<64 hex digits: the plan's digest>
    <signing time, RFC 3339 UTC to the second: 2026-06-01T08:00:00Z>
    signer <principal id>
    name <printed name>
    meaning <approved | reviewed | authored>

Signatures made before signatures named their signer (``converge.plan/v1``:
the first four lines only) still verify. The note signs the plan's digest,
not its bytes: the digest already commits to every byte, and the collector
verifies it before it looks at the note.

Before a run, a :class:`PlanVerifier` refuses a plan whose note is missing,
does not verify with a trusted key, names another device or digest, or was
made by a key version that was not valid at the signing time in the note.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from engine.errors import ConvergeError, KeyStoreError, PlanRejected, VerificationError
from engine.keys import KeyStore, KeyVersion, verify_signature, version_at
from engine.plans.body import PlanBody
from engine.plans.format import PLAN_FORMAT, Plan
from engine.sign import note

SIGNATURE_SUFFIX = ".plan.sig"
TIME_FORMAT = "%Y-%m-%dT%H:%M:%SZ"
_TIME = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}Z")


def signature_name(device: str) -> str:
    """The file name of a device's plan signature: ``<device>.plan.sig``."""
    return f"{device}{SIGNATURE_SUFFIX}"


def rfc3339(at: datetime) -> str:
    """``at`` in UTC as ``YYYY-MM-DDTHH:MM:SSZ`` (fractions of a second dropped)."""
    return at.astimezone(UTC).strftime(TIME_FORMAT)


# --- the note text ----------------------------------------------------------------------


class MalformedPlanNote(note.MalformedNote):
    """A signed note whose text is not a plan signature's."""


MEANINGS = ("approved", "reviewed", "authored")
"""What an electronic signature of a plan means (21 CFR 11.50(a)(3))."""
SIGNATURE_FORMAT = "converge.plan-signature/v2"
_V1_LINES, _V2_LINES = 4, 7


@dataclass(frozen=True)
class Signer:
    """Who signs, as 21 CFR 11.50 asks a signature to show: the principal, the printed name,
    and the meaning of the signature; all inside the signed bytes."""

    principal: str
    name: str
    meaning: str

    def __post_init__(self) -> None:
        if self.meaning not in MEANINGS:
            raise MalformedPlanNote(f"meaning {self.meaning!r}: want one of {', '.join(MEANINGS)}")
        for said in (self.principal, self.name):
            if not said or not said.isprintable():
                raise MalformedPlanNote(f"{said!r}: a signer's id and name are one printable line")


@dataclass(frozen=True)
class PlanClaim:
    """What a plan signature says: this device's plan has this digest, signed at this time,
    by this signer (a signature from before signatures named their signer has none).

    The note text, each line ending in a newline: ``converge.plan-signature/v2``, the
    device, the digest, the signing time, ``signer <principal>``, ``name <printed name>``,
    ``meaning <approved|reviewed|authored>``; or, without a signer, the four lines of a
    ``converge.plan/v1`` signature (docs/plans.md).
    """

    device: str
    digest: str
    signed_at: datetime
    signer: Signer | None = None

    @property
    def text(self) -> str:
        """The note text, byte for byte."""
        head = (self.device, self.digest, rfc3339(self.signed_at))
        if self.signer is None:
            lines: tuple[str, ...] = (PLAN_FORMAT, *head)
        else:
            s = self.signer
            lines = (
                SIGNATURE_FORMAT,
                *head,
                f"signer {s.principal}",
                f"name {s.name}",
                f"meaning {s.meaning}",
            )
        return "".join(f"{line}\n" for line in lines)

    @classmethod
    def parse(cls, text: str) -> PlanClaim:
        """The claim in a note text; raises :class:`MalformedPlanNote` unless it is exact."""
        lines = text.split("\n")
        shapes = {(PLAN_FORMAT, _V1_LINES + 1), (SIGNATURE_FORMAT, _V2_LINES + 1)}
        if (lines[0], len(lines)) not in shapes or lines[-1] != "":
            raise MalformedPlanNote(
                f"note text is not a plan signature (want {SIGNATURE_FORMAT}, device, digest,"
                " signing time, signer, name, meaning; or the four lines of a"
                f" {PLAN_FORMAT} one)"
            )
        device, digest, when = lines[1:4]
        claim = cls(device, digest, _signing_time(when), _signer(lines[4:-1]))
        if claim.text != text:  # e.g. a device or digest line with stray characters
            raise MalformedPlanNote("note text is not in its canonical form")
        return claim


def _signing_time(when: str) -> datetime:
    if not _TIME.fullmatch(when):
        raise MalformedPlanNote(f"signing time {when!r}: want YYYY-MM-DDTHH:MM:SSZ")
    try:
        return datetime.strptime(when, TIME_FORMAT).replace(tzinfo=UTC)
    except ValueError as exc:
        raise MalformedPlanNote(f"signing time {when!r}: {exc}") from exc


def _signer(lines: list[str]) -> Signer | None:
    if not lines:
        return None
    said = [line.partition(" ") for line in lines]
    if [key for key, _, _ in said] != ["signer", "name", "meaning"]:
        raise MalformedPlanNote("want the lines signer, name and meaning after the time")
    return Signer(*(value for _, _, value in said))


# --- signing ------------------------------------------------------------------------------


def sign_claim(claim: PlanClaim, key_name: str, private_key: Ed25519PrivateKey) -> bytes:
    """The signed note of ``claim``, as the bytes of a ``.plan.sig`` file."""
    return note.sign_note(claim.text, key_name, private_key).encode()


@dataclass(frozen=True)
class PlanSigner:
    """Signs plans with one key version, all at one signing time (that of the compilation)."""

    key_name: str
    version: KeyVersion
    private_key: Ed25519PrivateKey
    signed_at: datetime
    signer: Signer

    def __call__(self, plan: Plan) -> bytes:
        claim = PlanClaim(plan.device, plan.digest, self.signed_at, self.signer)
        return sign_claim(claim, self.key_name, self.private_key)


def open_signer(store: KeyStore, key_name: str, now: datetime, signer: Signer) -> PlanSigner:
    """A signer for ``signer`` with the version of ``key_name`` valid at ``now`` rounded up to
    the second.

    The note states whole seconds, and the version must be valid at the time
    the note states. Rounding down could date the note before a version made
    a moment ago began; rounding up dates it at most a second late. Opening
    the signer asks for the passphrase, so a wrong one fails before anything
    is written.
    """
    now = now.astimezone(UTC)
    at = now.replace(microsecond=0) + timedelta(seconds=1 if now.microsecond else 0)
    version = version_at(store.versions(key_name), at)
    return PlanSigner(key_name, version, store.signer(key_name, at), at, signer)


# --- verifying ----------------------------------------------------------------------------

NoteCheck = Callable[[bytes], str]
"""``check(note)``: the note's text once it is authentic; raises VerificationError or
:class:`~engine.keys.KeyStoreError` otherwise."""


def trusted_keys_check(verifier_keys: Sequence[str]) -> NoteCheck:
    """Accept a note that a signature of one of ``verifier_keys`` verifies over.

    Verifier keys carry no validity period: this only says *who* signed.
    """
    keys = list(verifier_keys)
    for key in keys:
        note.parse_verifier_key(key)  # a malformed key fails now, not at the first plan

    def check(data: bytes) -> str:
        return note.verify_note(data, keys)

    return check


def key_versions_check(key_name: str, versions: Sequence[KeyVersion]) -> NoteCheck:
    """Accept a note signed by a version of ``key_name`` that was valid at its signing time.

    Every signature line of ``key_name`` must verify (as with a trusted key in
    a signed note), and the version that made it must have been valid at the
    time the note states: a retired version's signature dated after its end is
    rejected (:func:`engine.keys.verify_signature`). The time is the signer's
    word, so this stops a leaked retired key from signing "now", not from
    backdating.
    """
    listed = list(versions)

    def check(data: bytes) -> str:
        text, signatures = note.split_note(data)
        claim = PlanClaim.parse(text)
        ours = [s for s in signatures if s.name == key_name]
        if not ours:
            raise note.NoKnownSignature(f"note has no signature by key {key_name}")
        for signature in ours:
            version = verify_signature(listed, text.encode(), signature.signature, claim.signed_at)
            if signature.key_id.hex() != version.key_id:
                raise note.MalformedNote(
                    f"signature of {key_name} names key id {signature.key_id.hex()}, but"
                    f" v{version.version} made it (key id {version.key_id})"
                )
        return text

    return check


def read_trusted_keys(path: Path) -> list[str]:
    """The verifier keys in ``path``: one a line, as ``converge keys export-public`` prints.

    Blank lines and lines starting with ``#`` are skipped; a key given twice
    (two exports of one key concatenated) counts once.
    """
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) else "not UTF-8 text"
        raise ConvergeError(f"cannot read {path}: {reason}") from exc
    keys: dict[str, None] = {}
    for number, line in enumerate(lines, start=1):
        text = line.strip()
        if not text or text.startswith("#"):
            continue
        try:
            note.parse_verifier_key(text)
        except note.MalformedKey as exc:
            raise ConvergeError(f"{path}:{number}: not a verifier key: {exc}") from exc
        keys[text] = None
    if not keys:
        raise ConvergeError(
            f"{path}: no verifier keys (want one a line, as converge keys"
            " export-public NAME prints them)"
        )
    return list(keys)


class PlanVerifier:
    """Refuses a plan unless the note beside it passes every check and names that plan.

    Called by :func:`engine.plans.folder.load_plans` with each plan's path and
    body, after the plan's own digest has verified.
    """

    def __init__(self, checks: Iterable[NoteCheck], required_by: str) -> None:
        self.checks = tuple(checks)
        if not self.checks:
            raise ValueError("a plan verifier needs at least one check")
        self.required_by = required_by
        """The options that asked for signatures, for the message about a missing one."""

    def __call__(self, plan_path: Path, body: PlanBody) -> PlanClaim:
        device = body.device.id
        sig = plan_path.with_name(signature_name(device))
        try:
            data = sig.read_bytes()
        except FileNotFoundError as exc:
            raise PlanRejected(
                f"{plan_path}: not signed: {sig.name} is missing, and"
                f" {self.required_by} requires signed plans"
            ) from exc
        except OSError as exc:
            raise PlanRejected(f"{plan_path}: cannot read {sig}: {exc.strerror}") from exc
        try:
            claim = self._claim(data)
        except (VerificationError, KeyStoreError) as exc:
            raise PlanRejected(f"{plan_path}: signature {sig.name} is refused: {exc}") from exc
        if claim.device != device:
            raise PlanRejected(
                f"{plan_path}: signature {sig.name} signs the plan of device"
                f" {claim.device}, not {device}"
            )
        if claim.digest != body.digest:
            raise PlanRejected(
                f"{plan_path}: signature {sig.name} signs digest {claim.digest},"
                f" not the plan's {body.digest}"
            )
        return claim

    def _claim(self, data: bytes) -> PlanClaim:
        text = ""
        for check in self.checks:  # all must pass; each returns the same note text
            text = check(data)
        return PlanClaim.parse(text)


def plan_verifier(
    trusted_keys: Path | None, store: KeyStore | None, key_name: str | None
) -> PlanVerifier | None:
    """The verifier that ``converge run --trust FILE`` and/or ``--require-signed KEY`` ask for.

    With both, a plan must pass both. ``None`` when neither is given: plans
    are then only checked against their digests, as always.
    """
    checks: list[NoteCheck] = []
    options: list[str] = []
    if trusted_keys is not None:
        checks.append(trusted_keys_check(read_trusted_keys(trusted_keys)))
        options.append(f"--trust {trusted_keys}")
    if key_name is not None:
        if store is None:
            raise ConvergeError(f"--require-signed {key_name} needs a key store (--keys DIR)")
        checks.append(key_versions_check(key_name, store.versions(key_name)))
        options.append(f"--require-signed {key_name}")
    return PlanVerifier(checks, " and ".join(options)) if checks else None
