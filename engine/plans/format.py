"""The plan format: a sealed plan's bytes, its digest, and their check.

A plan's bytes are the RFC 8785 (JCS) canonical form of its body, so the
same inputs always give the same bytes, and ``digest`` is the SHA-256 of the
canonical form of the body *without* ``digest`` (docs/plans.md).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from functools import cached_property
from typing import Any

from engine.canonical import canonical_json, canonical_object
from engine.errors import PlanRejected
from engine.plans.body import PlanBody, parse_body

PLAN_FORMAT = "converge.plan/v1"
INDEX_FORMAT = "converge.plan-index/v1"


@dataclass(frozen=True)
class Plan:
    """A sealed plan: the exact bytes to write, and what a summary needs to know of them."""

    device: str
    digest: str
    canonical: bytes
    points: int
    read_groups: int
    valid_until: str | None = None

    @property
    def file_name(self) -> str:
        return f"{self.device}.plan.json"

    @cached_property
    def body(self) -> dict[str, Any]:
        """The plan as data (parsed from its bytes: the bytes are the plan)."""
        return dict(json.loads(self.canonical))


def digest_of(members: dict[str, bytes]) -> str:
    """``sha256:`` of the canonical plan without its ``digest`` member."""
    unsealed = {key: value for key, value in members.items() if key != "digest"}
    return "sha256:" + hashlib.sha256(canonical_object(unsealed)).hexdigest()


def seal(members: dict[str, bytes]) -> tuple[str, bytes]:
    """The digest of a plan given as canonical members, and the plan's bytes with it."""
    digest = digest_of(members)
    return digest, canonical_object({**members, "digest": canonical_json(digest)})


def read_plan(data: bytes, source: str = "plan") -> PlanBody:
    """The typed body of a plan's bytes, once its format and digest verify; raises
    :class:`PlanRejected`."""
    return parse_body(verify_plan(data, source), data, source)


def verify_plan(data: bytes, source: str = "plan") -> dict[str, Any]:
    """Parse a plan's bytes and check its format and digest; raises :class:`PlanRejected`."""
    try:
        body = json.loads(data)
    except (ValueError, UnicodeDecodeError) as exc:
        raise PlanRejected(f"{source}: not a JSON plan ({exc})") from exc
    if not isinstance(body, dict) or body.get("format") != PLAN_FORMAT:
        raise PlanRejected(f"{source}: not a {PLAN_FORMAT} plan")
    want = digest_of({key: canonical_json(value) for key, value in body.items()})
    got = body.get("digest")
    if got != want:
        raise PlanRejected(f"{source}: digest does not verify: got {got}, want {want}")
    return body
