"""Plans: each stored plan's bytes verify against its digest, its signature names it, and
plans and ``plan.deployed`` audit entries match one to one."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from sqlalchemy import Connection

from engine.errors import ConvergeError, KeyStoreError, VerificationError
from engine.plans.format import verify_plan
from engine.plans.signature import PlanClaim, key_versions_check
from engine.sign import note
from engine.store import reads
from engine.verify.log import Log
from engine.verify.report import Report
from engine.verify.trust import Trust


def check_plans(
    conn: Connection, log: Log, trust: Trust, report: Report
) -> dict[str, dict[str, Any]]:
    """The stored plans whose bytes verify, by digest."""
    plans: dict[str, dict[str, Any]] = {}
    for row in reads.plans(conn):
        label = f"plan {row.digest} ({row.device})"
        try:
            body = verify_plan(bytes(row.body), label)
        except ConvergeError as exc:
            report.add(label, str(exc))
            continue
        if body["digest"] != row.digest or body["device"]["id"] != row.device:
            report.add(label, "the stored digest or device is not the plan's")
        if row.signature is not None:
            _check_signature(label, row.signature, body, trust, report)
        plans[row.digest] = body
    _check_deployed(plans, log, report)
    report.counts["plans"] = len(plans)
    return plans


def _check_signature(
    label: str, signed: str, body: Mapping[str, Any], trust: Trust, report: Report
) -> None:
    """A stored plan signature must be by a trusted key, valid then, and name this plan."""
    try:
        _, signatures = note.split_note(signed)
        names = sorted({s.name for s in signatures} & trust.keys.keys())
        if not names:
            raise note.NoKnownSignature("signed by no trusted key")
        claim = PlanClaim.parse(key_versions_check(names[0], trust.keys[names[0]])(signed.encode()))
    except (VerificationError, KeyStoreError) as exc:
        report.add(label, f"its signature does not verify ({exc})")
        return
    if (claim.device, claim.digest) != (body["device"]["id"], body["digest"]):
        report.add(label, f"its signature is of another plan ({claim.device} {claim.digest})")


def _check_deployed(plans: Mapping[str, dict[str, Any]], log: Log, report: Report) -> None:
    """Every plan a ``plan.deployed`` entry names is stored, and every stored plan was deployed."""
    deployed = {e.payload.get("digest") for e in log.of_kind("plan.deployed")}
    for digest in sorted(deployed - plans.keys(), key=str):
        report.add(f"plan {digest}", "deployed (audit log) but not in the store")
    for digest in sorted(plans.keys() - deployed):
        report.add(f"plan {digest}", "in the store but never deployed (no audit entry)")
