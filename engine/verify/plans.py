"""Plans: each stored plan's bytes verify against its digest, it holds a signature exactly
when its ``plan.deployed`` entry says it was signed, its signature names it, and plans and
``plan.deployed`` audit entries match one to one.

A plan decides what its batches must carry (the keys that sign them), so a
plan is only as good as what vouches for it: its ``plan.deployed`` entry,
which the log's checkpoints sign, and its own signature when it has one. With
``--plan-key KEY`` the auditor names the key that signs plans (as
``converge run --require-signed`` does): then every plan must be signed by a
version of that key valid when the signature says it was made, no later than
the plan was deployed. Without it, a stored signature must be by some trusted
key, and the report says that plans' signers were not pinned.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Connection

from engine.errors import ConvergeError, KeyStoreError, VerificationError
from engine.plans.body import PlanBody
from engine.plans.format import read_plan
from engine.plans.signature import PlanClaim, key_versions_check, rfc3339
from engine.sign import note
from engine.store import reads
from engine.verify.log import Log
from engine.verify.report import Report
from engine.verify.trust import BadTime, Trust, instant

DESCRIBED = ("signed_at", "signer", "name", "meaning")
"""What a ``plan.deployed`` entry records of the plan's signature (docs/plans.md)."""
ROUNDING = timedelta(seconds=1)
"""A plan signature states whole seconds, rounded up: it may say up to a second after its
plan was deployed."""


@dataclass(frozen=True)
class PlanTrust:
    """Who may sign plans: ``key`` when the auditor names it, else any trusted key."""

    trust: Trust
    key: str | None = None


def check_plans(conn: Connection, log: Log, who: PlanTrust, report: Report) -> dict[str, PlanBody]:
    """The stored plans whose bytes verify, by digest."""
    plans: dict[str, PlanBody] = {}
    deployed = _deployed_at(log)
    said = _deployed_payloads(log)
    signed = False
    for row in reads.plans(conn):
        label = f"plan {row.digest} ({row.device})"
        try:
            body = read_plan(bytes(row.body), label)
        except ConvergeError as exc:
            report.add(label, str(exc))
            continue
        if body.digest != row.digest or body.device.id != row.device:
            report.add(label, "the stored digest or device is not the plan's")
        recorded = said.get(row.digest, {})
        if recorded and recorded.get("device") != body.device.id:
            report.add(label, f"its plan.deployed entry names the device {recorded.get('device')}")
        _check_held(label, row.signature, recorded, report)
        if row.signature is not None:
            signed = True
            when = deployed.get(body.digest)
            site_who = PlanTrust(who.trust.of_site(body.site), who.key)
            _check_signature(
                label, row.signature, body, site_who, deployed=(when, recorded), report=report
            )
        elif who.key is not None:
            report.add(label, f"not signed, and plans must be signed by {who.key}")
        plans[row.digest] = body
    _check_deployed(plans, deployed, report)
    _check_sites(plans, report)
    if who.key is None and signed:
        report.notes.append(
            "plans' signatures were checked against every trusted key: name the"
            " key that signs plans with --plan-key to require it"
        )
    report.counts["plans"] = len(plans)
    return plans


def _deployed_at(log: Log) -> dict[str, datetime | None]:
    """The time each plan's ``plan.deployed`` entry records, by digest."""
    found: dict[str, datetime | None] = {}
    for entry in log.of_kind("plan.deployed"):
        try:
            found[str(entry.payload.get("digest"))] = instant(entry.time)
        except BadTime:
            found[str(entry.payload.get("digest"))] = None
    return found


def _deployed_payloads(log: Log) -> dict[str, dict[str, Any]]:
    """What each plan's ``plan.deployed`` entry says of it, by digest."""
    return {str(e.payload.get("digest")): e.payload for e in log.of_kind("plan.deployed")}


def _check_held(
    label: str, signature: str | None, recorded: Mapping[str, Any], report: Report
) -> None:
    """A plan holds a signature exactly when its ``plan.deployed`` entry says it was signed."""
    said = recorded.get("signed")
    if isinstance(said, bool) and said != (signature is not None):
        held = "no signature" if said else "a signature"
        report.add(
            label,
            f"its plan.deployed entry says signed: {str(said).lower()}, the store holds {held}",
        )


def _check_signature(
    label: str,
    signed: str,
    body: PlanBody,
    who: PlanTrust,
    *,
    deployed: tuple[datetime | None, Mapping[str, Any]],
    report: Report,
) -> None:
    """A stored plan signature must be by the plan key (or a trusted key), valid when it says
    it signed, no later than the plan was deployed, name this plan, and be the one its
    ``plan.deployed`` entry describes (time, signer, printed name, meaning)."""
    try:
        claim = _claim(signed, who)
    except (VerificationError, KeyStoreError) as exc:
        report.add(label, f"its signature does not verify ({exc})")
        return
    when, recorded = deployed
    described = {k: recorded[k] for k in DESCRIBED if k in recorded}
    if (claim.device, claim.digest) != (body.device.id, body.digest):
        report.add(label, f"its signature is of another plan ({claim.device} {claim.digest})")
    elif when is not None and claim.signed_at > when + ROUNDING:
        report.add(
            label,
            f"its signature says it was made at {claim.signed_at.isoformat()},"
            f" after the plan was deployed ({when.isoformat()})",
        )
    elif described and described != _described(claim):
        report.add(
            label,
            f"its signature says {_described(claim)}, its plan.deployed entry {described}:"
            " not the signature the plan was deployed with",
        )


def _described(claim: PlanClaim) -> dict[str, str]:
    """What a ``plan.deployed`` entry records of a plan signature (engine/store/store.py)."""
    said = {"signed_at": rfc3339(claim.signed_at)}
    if claim.signer is not None:
        s = claim.signer
        said |= {"signer": s.principal, "name": s.name, "meaning": s.meaning}
    return said


def _claim(signed: str, who: PlanTrust) -> PlanClaim:
    _, signatures = note.split_note(signed)
    candidates = {s.name for s in signatures} & who.trust.keys.keys()
    names = sorted(candidates if who.key is None else candidates & {who.key})
    if not names:
        wanted = f"not signed by the plan key {who.key}" if who.key else "signed by no trusted key"
        raise note.NoKnownSignature(wanted)
    return PlanClaim.parse(key_versions_check(names[0], who.trust.keys[names[0]])(signed.encode()))


def _check_sites(plans: Mapping[str, PlanBody], report: Report) -> None:
    """A device belongs to one site: every plan of it names the same one. A site's keys judge
    its devices' batches (a central store's ``--site-trust``), so a plan naming another site
    for a device would hand that device's evidence to the other site's keys."""
    sites: dict[str, set[str]] = {}
    for plan in plans.values():
        sites.setdefault(plan.device.id, set()).add(plan.site)
    for device, named in sorted(sites.items()):
        if len(named) > 1:
            report.add(
                f"device {device}", f"its plans name several sites: {', '.join(sorted(named))}"
            )


def _check_deployed(
    plans: Mapping[str, PlanBody], deployed: Mapping[str, datetime | None], report: Report
) -> None:
    """Every plan a ``plan.deployed`` entry names is stored, and every stored plan was deployed."""
    for digest in sorted(deployed.keys() - plans.keys(), key=str):
        report.add(f"plan {digest}", "deployed (audit log) but not in the store")
    for digest in sorted(plans.keys() - deployed.keys()):
        report.add(f"plan {digest}", "in the store but never deployed (no audit entry)")
