"""What collection produces: readings, and gap records for samples not taken.

A *reading* is one value of one point with its collection time (when the
request that fetched it was sent, or the message arrived), the device's own
source time where the protocol gives one, and a quality with the protocol's
raw code. A bad reading keeps its place with ``value=None``: nothing read is
dropped. A *gap record* stands for a scheduled sample that could not be
taken, with the reason; for every point, scheduled samples = readings + gap
records, so a stored batch proves completeness as well as integrity.

All times are timezone-aware UTC datetimes.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum

Value = float | int | bool | str | None


class Quality(StrEnum):
    GOOD = "good"
    UNCERTAIN = "uncertain"
    BAD = "bad"
    STALE = "stale"


class GapReason(StrEnum):
    """Why a scheduled sample was not taken."""

    TIMEOUT = "timeout"
    """The device did not answer within the timeout."""
    REFUSED = "refused"
    """No connection: refused, reset, unreachable, or the circuit breaker is open."""
    EXCEPTION = "exception"
    """The device answered with a protocol exception (``raw_code`` holds it)."""
    BAD_QUALITY = "bad-quality"
    """The device answered, but with a status that carries no value."""
    MALFORMED = "malformed"
    """The answer or message could not be decoded into the point's type."""
    NO_DATA = "no-data"
    """A subscription delivered nothing for too long (watchdog)."""
    RATE_LIMITED = "rate-limited"
    """The sample would have exceeded the device's request budget."""
    PLAN_EXPIRED = "plan-expired"
    """The plan is past its ``valid_until``: collection stopped until it is recompiled."""
    SHUTDOWN = "shutdown"
    """The collector stopped before the sample's time came (recorded on restart)."""


@dataclass(frozen=True)
class Reading:
    device: str
    point: str
    collected_at: datetime
    value: Value
    quality: Quality = Quality.GOOD
    source_at: datetime | None = None
    server_at: datetime | None = None
    raw_code: int | str | None = None
    scheduled_at: datetime | None = None
    """The sample slot this reading fills; ``None`` for on-change and subscription data."""
    coalesced: int = 0
    """How many changes of a subscribed point this reading stands for (itself included), when
    the flood guard folded several into it; 0 when it stands for itself only."""


@dataclass(frozen=True)
class Gap:
    device: str
    point: str
    scheduled_at: datetime
    reason: GapReason
    detail: str = ""
    raw_code: int | str | None = None


Record = Reading | Gap
