"""What keeps the collector polite to devices and robust against dead ones.

All three objects are plain state machines over an explicit ``now`` (seconds
on the collector's clock), so tests drive them without sleeping:

- :class:`TokenBucket` spaces requests to ``limits.max_requests_per_second``;
- :class:`Backoff` gives exponential delays with jitter and a cap, for
  retries within a sample's slot and for reconnecting;
- :class:`CircuitBreaker` stops sending to a device (or one unit behind a
  gateway) that keeps failing, so a dead one costs no timeouts until its
  cool-down is over.
"""

from __future__ import annotations

import random
from collections.abc import Iterable
from dataclasses import dataclass, field

from engine.records import Gap, GapReason, Quality, Reading, Record

RETRYABLE_CODES = frozenset({6, 0x0A, 0x0B})
"""Modbus exceptions that may succeed on retry: device busy, gateway path
unavailable, gateway target failed to respond. Illegal function, address or
value (1, 2, 3) never will."""
GATEWAY_CODES = frozenset({0x0A, 0x0B})
"""Modbus exceptions by which a gateway says the unit behind it cannot be reached."""


def retryable(records: Iterable[Record]) -> bool:
    """Whether a device's answer is worth asking again: a timeout, busy, or a gateway code."""
    for record in records:
        if isinstance(record, Gap) and record.reason is GapReason.TIMEOUT:
            return True
        bad = isinstance(record, Gap) and record.reason is GapReason.EXCEPTION
        bad = bad or (isinstance(record, Reading) and record.quality is Quality.BAD)
        if bad and record.raw_code in RETRYABLE_CODES:
            return True
    return False


def unreachable(records: Iterable[Record]) -> bool:
    """Whether a gateway answered that the unit behind it is unreachable (0x0A, 0x0B)."""
    for record in records:
        bad = isinstance(record, Gap) and record.reason is GapReason.EXCEPTION
        bad = bad or (isinstance(record, Reading) and record.quality is Quality.BAD)
        if bad and record.raw_code in GATEWAY_CODES:
            return True
    return False


class TokenBucket:
    """At most ``rate`` requests per second, with a burst of ``capacity`` (default one).

    A capacity of one spaces requests evenly, which is what slow devices and
    gateways bear best; the compiler already checked that the plan's groups
    fit the rate.
    """

    def __init__(self, rate: float | None, capacity: float = 1.0, now: float = 0.0) -> None:
        self.rate = rate
        self.capacity = capacity
        self.tokens = capacity
        self.stamp = now

    def _refill(self, now: float) -> None:
        if self.rate is not None and now > self.stamp:
            self.tokens = min(self.capacity, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = max(self.stamp, now)

    def delay(self, now: float) -> float:
        """Seconds from ``now`` until a request may be sent (0 when it may go now)."""
        if self.rate is None:
            return 0.0
        self._refill(now)
        return 0.0 if self.tokens >= 1 else (1 - self.tokens) / self.rate

    def take(self, now: float) -> None:
        """Spend one token (call after :meth:`delay` said 0, or after waiting that long)."""
        if self.rate is not None:
            self._refill(now)
            self.tokens -= 1


@dataclass
class Backoff:
    """``min(cap, base * factor**attempt)``, shortened by up to ``jitter`` (a fraction) at random.

    Jitter only ever shortens the delay, so the cap is a hard upper bound and
    devices restarting together are not hit by every collector at once.
    """

    base: float = 0.05
    cap: float = 2.0
    factor: float = 2.0
    jitter: float = 0.5
    rng: random.Random = field(default_factory=random.Random)

    def ceiling(self, attempt: int) -> float:
        return float(min(self.cap, self.base * self.factor ** min(attempt, 64)))

    def delay(self, attempt: int) -> float:
        top = self.ceiling(attempt)
        return top * (1 - self.jitter * self.rng.random())


class CircuitBreaker:
    """Closed, open after ``threshold`` failures in a row, half-open after ``cooldown`` seconds.

    Half-open lets one trial through: its success closes the breaker, its
    failure opens it for another cool-down.
    """

    def __init__(self, threshold: int = 5, cooldown: float = 5.0) -> None:
        self.threshold = threshold
        self.cooldown = cooldown
        self.failures = 0
        self.opened_at: float | None = None

    @property
    def is_open(self) -> bool:
        return self.opened_at is not None

    def allow(self, now: float) -> bool:
        """Whether a request (or connect) may be tried at ``now``."""
        return self.opened_at is None or now - self.opened_at >= self.cooldown

    def success(self) -> None:
        self.failures = 0
        self.opened_at = None

    def failure(self, now: float) -> bool:
        """Count a failure; ``True`` when this one opened (or re-opened) the breaker."""
        self.failures += 1
        if self.opened_at is not None or self.failures >= self.threshold:
            self.opened_at = now
            return True
        return False
