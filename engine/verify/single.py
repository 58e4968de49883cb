"""One batch on its own: what a reader of its records can check without the whole store.

Its records hash to its signed root, and every key its plan requires signed
its statement with a version valid when its audit entry says it was stored.
The chain and the audit log are ``converge audit verify``'s to check.
"""

from __future__ import annotations

from collections.abc import Sequence

from engine.errors import KeyStoreError, VerificationError
from engine.keys import verify_signature
from engine.plans.body import PlanBody
from engine.sign.batch import Statement
from engine.sign.merkle import leaf_hash, root_of_hashes
from engine.store.data import StoredBatch
from engine.verify.trust import Trust, instant


def batch_problem(
    batch: StoredBatch,
    positions: Sequence[int],
    leaves: Sequence[bytes],
    plan: PlanBody | None,
    trust: Trust,
) -> str | None:
    """Why ``batch`` does not verify on its own with the records ``leaves`` at ``positions``,
    or ``None`` when it does."""
    try:
        head = Statement.parse(batch.statement)
    except VerificationError as exc:
        return f"its statement does not parse ({exc})"
    if list(positions) != list(range(head.count)):
        return f"it holds {len(leaves)} records at other positions than the {head.count} signed"
    if root_of_hashes([leaf_hash(leaf) for leaf in leaves]) != head.root:
        return "its records do not hash to its signed root"
    if plan is None or plan.digest != head.plan_digest:
        return f"its plan {head.plan_digest} is not stored"
    if plan.device.id != head.device:
        return f"its plan {head.plan_digest} is of device {plan.device.id}"
    return _signature_problem(batch, head, plan, trust.of_site(plan.site))


def _signature_problem(
    batch: StoredBatch, head: Statement, plan: PlanBody, trust: Trust
) -> str | None:
    if batch.entry_time is None:
        return "no audit entry records it"
    for key in plan.required_keys:
        signature = batch.signatures.get(key)
        if signature is None or key not in trust.keys:
            return f"no trusted signature of key {key}"
        try:
            verify_signature(trust.keys[key], batch.statement, signature, instant(batch.entry_time))
        except (KeyStoreError, VerificationError) as exc:
            return f"the signature of key {key} does not verify ({exc})"
    return None
