"""What the centre checks of a batch before storing it: all that a central ``converge audit
verify`` checks of a batch, so that what an ingester stores verifies.

The checks that need no database are here; where the batch stands in its
device's chain is asked of the store, under its lock
(:meth:`~engine.store.central.CentralStore.link`). Each check returns why the
batch is refused, in words for the quarantine table and the site's operator.
"""

from __future__ import annotations

import hashlib
from datetime import datetime, timedelta
from itertools import repeat

from engine.canonical import canonical_json
from engine.errors import KeyStoreError, VerificationError
from engine.keys import verify_signature
from engine.plans.body import PlanBody
from engine.plans.signature import PlanClaim, key_versions_check
from engine.sign import note
from engine.sign.merkle import root
from engine.store.sealed import SealedBatch
from engine.verify.trust import BadTime, Trust, instant

SKEW = timedelta(minutes=5)
"""How far in the future of the centre's clock a site may say it sealed a batch."""
_MARKERS = (b'"type":"reading"', b'"type":"gap"')


def sealed_at(time: str, now: datetime) -> tuple[datetime | None, str | None]:
    """When the site's log entry says the batch was sealed, or why that time is refused."""
    try:
        at = instant(time)
    except BadTime as exc:
        return None, str(exc)
    if at > now + SKEW:
        return None, f"sealed at {time}, later than the centre's clock allows"
    return at, None


def check_plan(sealed: SealedBatch, plan: PlanBody | None) -> str | None:
    """The batch's plan is deployed at the centre, of its device, and it carries the keys and
    waivers that plan requires."""
    head = sealed.head
    if plan is None:
        return f"its plan {head.plan_digest} is not deployed at the centre"
    if plan.device.id != head.device:
        return f"its plan {head.plan_digest} is a plan of {plan.device.id}"
    if sealed.keys != plan.required_keys:
        return (
            f"it names the keys {list(sealed.keys)}, its plan requires {list(plan.required_keys)}"
        )
    waiver = list(plan.signing_waivers) if not plan.required_keys else []
    if sealed.waiver != canonical_json(waiver):
        return "its waiver is not the one its plan records"
    return None


def check_signatures(sealed: SealedBatch, keys: Trust, at: datetime) -> str | None:
    """Every key the batch names signed its statement, with a version of the site's key valid
    at ``at``; no other key did."""
    signatures = {s.key: s.signature for s in sealed.signatures}
    for key in sealed.keys:
        signature = signatures.pop(key, None)
        if signature is None:
            return f"the signature of key {key!r} is missing"
        if key not in keys.keys:
            return f"key {key!r} is not among the site's trusted keys"
        try:
            verify_signature(keys.keys[key], sealed.statement, signature, at)
        except KeyStoreError as exc:
            return f"the signature of key {key!r} does not verify ({exc})"
    if signatures:
        return f"signed by keys it does not name: {sorted(signatures)}"
    return None


def check_records(sealed: SealedBatch) -> str | None:
    """Each record is of the type its position says, and the leaves hash to the signed root
    and name the points of the signed point map.

    C iteration over the leaves (``bytes.find`` mapped over them) and one loop of hashes
    (:func:`~engine.sign.merkle.root`): 6,000 records cost a few milliseconds.
    """
    leaves, gaps = sealed.leaves, sealed.gaps
    readings = [leaf for i, leaf in enumerate(leaves) if i not in gaps] if gaps else leaves
    if -1 in map(bytes.find, readings, repeat(_MARKERS[0])):
        return "a record that is not a reading where its batch puts a reading"
    if any(_MARKERS[1] not in leaves[i] for i in gaps):
        return "a record that is not a gap where its batch puts a gap record"
    if root(leaves) != sealed.head.root:
        return "its records do not hash to its signed root"
    try:
        mapped = hashlib.sha256(sealed.point_map).digest()
    except ValueError:
        return "a record that names no point"
    if mapped != sealed.head.point_map:
        return "its records' points are not the point map its statement signs"
    return None


def check_plan_signature(signature: str | None, plan: PlanBody, keys: Trust) -> str | None:
    """A plan's signed note, when it has one, is by one of the site's keys, valid when it says
    it signed, and names this plan (as the central ``audit verify`` will check)."""
    if signature is None:
        return None
    try:
        _, lines = note.split_note(signature)
        names = sorted({line.name for line in lines} & keys.keys.keys())
        if not names:
            return "its signature is by none of the site's trusted keys"
        check = key_versions_check(names[0], keys.keys[names[0]])
        claim = PlanClaim.parse(check(signature.encode()))
    except (VerificationError, KeyStoreError) as exc:
        return f"its signature does not verify ({exc})"
    if (claim.device, claim.digest) != (plan.device.id, plan.digest):
        return f"its signature is of another plan ({claim.device} {claim.digest})"
    return None
