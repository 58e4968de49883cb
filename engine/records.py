"""What collection produces: readings, and gap records for samples not taken.

A *reading* is one value of one point with its collection time (when the
request that fetched it was sent, or the message arrived), the device's own
source time where the protocol gives one, and a quality with the protocol's
raw code. A bad reading keeps its place with ``value=None``: nothing read is
dropped. A *gap record* stands for a scheduled sample (a *slot*) that could
not be taken, with the reason, or for a run of consecutive slots of one point
missed for one reason. For every point, slots = readings that fill a slot +
the slots of its gap records, so the stored batches prove completeness as
well as integrity; readings without a slot (on change, as a subscription
delivered them) come on top.

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
    """A subscribed point had no value to hold at the slot: none delivered since the
    subscription (re)started, or the latest is older than the group's bound."""
    RATE_LIMITED = "rate-limited"
    """The sample would have exceeded the device's request budget."""
    PLAN_EXPIRED = "plan-expired"
    """The plan is past its ``valid_until``: collection stopped until it is recompiled."""
    SHUTDOWN = "shutdown"
    """The collector was not running at the slot (recorded when it starts again), or stopped
    while the sample was being taken."""


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
    held: bool = False
    """The reading fills a slot of a subscribed point with the latest value its subscription
    delivered before the slot (that delivery's times and quality kept), rather than a value
    read for the slot."""


@dataclass(frozen=True)
class Gap:
    device: str
    point: str
    scheduled_at: datetime
    reason: GapReason
    detail: str = ""
    raw_code: int | str | None = None
    last_scheduled_at: datetime | None = None
    """The last slot of a run of consecutive slots missed for the same reason (``None``: the
    record stands for ``scheduled_at`` alone)."""
    slots: int = 1
    """How many slots the record stands for: 1, or the run's length (> 1, then
    ``last_scheduled_at`` is set and later than ``scheduled_at``)."""


Record = Reading | Gap
