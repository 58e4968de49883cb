"""One device's connection and requests: reconnect, rate, timeouts, retries, breaker.

:class:`Link` owns the connection: only the device's own task calls it, so
there is one connection per device and one place that reconnects (with
backoff). :class:`Sampler` takes one sample of one read group: it waits for
the device's request budget, sends one request with a timeout and retries
only what can succeed on retry, within the sample's slot.

The circuit breaker is kept per unit (a group's ``unit``; ``None`` for
protocols without units, so one breaker per device): a dead unit behind a
gateway opens only its own breaker, and the other units keep being read.
Connection-level failures count against every unit, and the connection is
dropped when all of the device's breakers are open.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from dataclasses import replace

from engine.collect.limits import CircuitBreaker, TokenBucket, retryable, unreachable
from engine.collect.runtime import Runtime
from engine.collect.scheduler import to_datetime
from engine.collect.status import DeviceStats
from engine.errors import ConvergeError
from engine.plans.body import PlanBody, ReadGroup
from engine.protocols import Deliver, Session
from engine.records import Gap, GapReason, Reading, Record

Problem = tuple[GapReason, str]


def gaps(
    device: str, points: Sequence[str], slot_ms: int, reason: GapReason, detail: str = ""
) -> list[Record]:
    at = to_datetime(slot_ms)
    return [Gap(device, p, at, reason, detail) for p in points]


class Link:
    """The connection to one device, with its subscriptions, reconnected with backoff."""

    def __init__(
        self,
        plan: PlanBody,
        session: Session,
        rt: Runtime,
        stats: DeviceStats,
        deliver: Deliver,
    ) -> None:
        self.device = plan.device.id
        limits = plan.device.limits
        timeout_ms = limits.timeout_ms
        self.timeout = (rt.config.default_timeout_ms if timeout_ms is None else timeout_ms) / 1000
        self.pause = (limits.pause_after_connect_ms or 0) / 1000
        self.subscriptions = [g for g in plan.read_groups if not g.polled]
        self.session, self.rt, self.stats, self.deliver = session, rt, stats, deliver
        self.connected = False
        self.attempt = 0
        self.next_try = 0.0
        self.generation = 0
        """Counts connection attempts: what a subscription delivers belongs to the newest."""

    async def ensure(self) -> Problem | None:
        """Connect (and subscribe) unless connected; the problem when that is not possible now."""
        if self.connected and not self.session.connected:
            # a subscription whose server went away has no request to fail: the session says so
            await self.lost("the session lost its connection")
        if self.connected:
            return None
        if self.rt.clock.now() < self.next_try:
            return GapReason.REFUSED, "not connected: waiting to reconnect"
        self.generation += 1  # subscriptions may deliver while they are being made
        try:
            await self.rt.clock.wait_for(self.session.connect(), self.timeout)
            for group in self.subscriptions:
                await self.rt.clock.wait_for(
                    self.session.subscribe(group, self.deliver), self.timeout
                )
        except TimeoutError:
            return await self._failed(GapReason.TIMEOUT, "connect timed out")
        except (OSError, ConvergeError) as exc:
            return await self._failed(GapReason.REFUSED, f"connect failed: {_say(exc)}")
        self._connected()
        if self.pause:
            await self.rt.clock.sleep(self.pause)
        return None

    def _connected(self) -> None:
        self.rt.reporter.event(self.device, "connected", failed_attempts=self.attempt)
        self.connected, self.attempt = True, 0
        self.stats.state = "connected"

    async def _failed(self, reason: GapReason, detail: str) -> Problem:
        delay = self.rt.config.reconnect.delay(self.attempt)
        self.attempt += 1
        self.next_try = self.rt.clock.now() + delay
        self.stats.state, self.stats.errors = "disconnected", self.stats.errors + 1
        self.rt.reporter.event(
            self.device, "connect-failed", detail=detail, retry_in_s=round(delay, 3)
        )
        await self.close()
        return reason, detail

    async def lost(self, detail: str) -> None:
        """Forget the connection; the next sample reconnects (at once, then with backoff)."""
        if self.connected:
            self.rt.reporter.event(self.device, "connection-lost", detail=detail)
        self.stats.state = "disconnected"
        await self.close()

    async def close(self) -> None:
        self.connected = False
        # close never raises by contract; a broken one must not stop the device
        with contextlib.suppress(TimeoutError, OSError, ConvergeError):
            await self.rt.clock.wait_for(self.session.close(), self.rt.config.close_timeout_s)


class Sampler:
    """Takes samples of one device's polled groups, through its :class:`Link`."""

    def __init__(self, plan: PlanBody, link: Link, rt: Runtime, stats: DeviceStats) -> None:
        limits = plan.device.limits
        self.device, self.link, self.rt, self.stats = link.device, link, rt, stats
        self.bucket = TokenBucket(limits.max_requests_per_second, now=rt.clock.now())
        self.spacing = (limits.min_request_spacing_ms or 0) / 1000
        self.breakers = {g.unit: self._new_breaker() for g in plan.read_groups if g.polled}
        self.valid_until = plan.valid_until_ms
        self.last_request = float("-inf")

    def _new_breaker(self) -> CircuitBreaker:
        return CircuitBreaker(self.rt.config.breaker_threshold, self.rt.config.breaker_cooldown_s)

    def breaker(self, group: ReadGroup) -> CircuitBreaker:
        """The breaker of ``group``'s unit (the device's only one for protocols without units)."""
        unit = group.unit
        if unit not in self.breakers:
            self.breakers[unit] = self._new_breaker()
        return self.breakers[unit]

    async def sample(self, group: ReadGroup, slot_ms: int, end_ms: int) -> list[Record]:
        """One record per point of ``group`` for the slot; retries end before ``end_ms``."""
        attempt, timeout = 0, self.link.timeout
        while True:
            records, again = await self._attempt(group, slot_ms, end_ms, timeout)
            if not again:
                return records
            delay = self.rt.config.retry.delay(attempt)
            attempt += 1
            left = end_ms / 1000 - self.rt.clock.now() - delay
            if left <= 0:
                return records
            timeout = min(self.link.timeout, left)  # a retry never outlives the slot
            await self.rt.clock.sleep(delay)
            if self.rt.clock.now() * 1000 >= end_ms:  # slept past the slot (a loaded machine)
                return records

    async def _attempt(
        self, group: ReadGroup, slot_ms: int, end_ms: int, timeout: float
    ) -> tuple[list[Record], bool]:
        points = list(group.points)
        if self.valid_until is not None and slot_ms >= self.valid_until:
            return gaps(
                self.device,
                points,
                slot_ms,
                GapReason.PLAN_EXPIRED,
                "plan past its valid_until; recompile",
            ), False
        if not self.breaker(group).allow(self.rt.clock.now()):
            return gaps(
                self.device, points, slot_ms, GapReason.REFUSED, "circuit breaker open"
            ), False
        problem = await self.link.ensure()
        if problem is not None:
            return gaps(self.device, points, slot_ms, *problem), False
        if not await self._wait_budget(end_ms):
            return gaps(
                self.device,
                points,
                slot_ms,
                GapReason.RATE_LIMITED,
                "no request budget left in the slot",
            ), False
        return await self._request(group, points, slot_ms, timeout)

    async def probe(self, group: ReadGroup, at_ms: int, before_ms: int) -> list[Record]:
        """One request outside the schedule (on-change polling), only if it costs no sample.

        Sent only when connected, within the plan's validity, with the breaker
        closed and budget to spare: a token now, and the bucket and spacing
        whole again by ``before_ms`` (the next scheduled sample); its timeout
        ends there too. Not retried; nothing is returned when it is not sent.
        """
        now = self.rt.clock.now()
        expired = self.valid_until is not None and at_ms >= self.valid_until
        if expired or not self.link.connected or not self.breaker(group).allow(now):
            return []
        if not self._spare(now, before_ms / 1000):
            return []
        self.last_request = now
        self.bucket.take(now)
        records, _ = await self._request(
            group, list(group.points), at_ms, min(self.link.timeout, before_ms / 1000 - now)
        )
        return records

    def _spare(self, now: float, before: float) -> bool:
        refill = 1 / self.bucket.rate if self.bucket.rate else 0.0
        return (
            self.bucket.delay(now) == 0
            and now >= self.last_request + self.spacing
            and now + max(refill, self.spacing) <= before
        )

    async def _wait_budget(self, end_ms: int) -> bool:
        """Wait for the token bucket and ``min_request_spacing_ms``; ``False`` if past the slot."""
        now = self.rt.clock.now()
        wait = max(self.bucket.delay(now), self.last_request + self.spacing - now, 0.0)
        if now + wait >= end_ms / 1000:
            return False
        if wait:
            await self.rt.clock.sleep(wait)
        self.last_request = self.rt.clock.now()
        self.bucket.take(self.last_request)
        return True

    async def _request(
        self, group: ReadGroup, points: list[str], slot_ms: int, timeout: float
    ) -> tuple[list[Record], bool]:
        try:
            records = await self.rt.clock.wait_for(
                self.link.session.read(group, to_datetime(slot_ms)), timeout
            )
        except TimeoutError:
            await self._failure(group, "request timed out")
            return gaps(
                self.device,
                points,
                slot_ms,
                GapReason.TIMEOUT,
                f"no answer within {timeout * 1000:.0f} ms",
            ), True
        except OSError as exc:
            await self._failure(group, _say(exc), connection=True)
            await self.link.lost(_say(exc))
            return gaps(self.device, points, slot_ms, GapReason.REFUSED, _say(exc)), False
        except ConvergeError as exc:
            self.stats.errors += 1
            return gaps(self.device, points, slot_ms, GapReason.MALFORMED, str(exc)), False
        conformed = conform(records, self.device, points, slot_ms)
        return conformed, await self._judge(group, conformed)

    async def _judge(self, group: ReadGroup, records: list[Record]) -> bool:
        """Learn from the answer (sessions report timeouts and resets as gaps); retry it?"""
        reasons = {r.reason for r in records if isinstance(r, Gap)}
        if GapReason.REFUSED in reasons:
            await self._failure(group, "connection refused or reset", connection=True)
            await self.link.lost("connection refused or reset")
            return False
        if GapReason.TIMEOUT in reasons:
            await self._failure(group, "request timed out")
        elif unreachable(records):
            await self._failure(group, "gateway: unit unreachable")
        else:
            self.breaker(group).success()
        return retryable(records)

    async def _failure(self, group: ReadGroup, detail: str, connection: bool = False) -> None:
        """Count a failure against ``group``'s unit, or every unit for a connection failure."""
        self.stats.errors += 1
        now = self.rt.clock.now()
        self.breaker(group)  # known before a connection failure counts against all
        units = list(self.breakers) if connection else [group.unit]
        opened = [unit for unit in units if self.breakers[unit].failure(now)]
        for unit in opened:
            where = {} if unit is None else {"unit": unit}
            self.rt.reporter.event(
                self.device,
                "circuit-open",
                detail=detail,
                cooldown_s=self.breakers[unit].cooldown,
                **where,
            )
        if opened and all(b.is_open for b in self.breakers.values()):
            self.stats.state = "circuit open"
            await self.link.lost("circuit breaker opened")


def conform(
    records: Sequence[Record], device: str, points: Sequence[str], slot_ms: int
) -> list[Record]:
    """Exactly one record per point, in group order, each with the sample's slot.

    A point the session gave no record for gets a ``malformed`` gap, so that
    accounting holds even with a plugin that breaks its contract.
    """
    slot = to_datetime(slot_ms)
    by_point = {r.point: r for r in records}
    out: list[Record] = []
    for point in points:
        record = by_point.get(point)
        if record is None:
            out.append(
                Gap(
                    device,
                    point,
                    slot,
                    GapReason.MALFORMED,
                    "the protocol session returned no record for this point",
                )
            )
        elif isinstance(record, Reading):
            out.append(record if record.scheduled_at else replace(record, scheduled_at=slot))
        else:
            out.append(replace(record, scheduled_at=slot))
    return out


def _say(exc: BaseException) -> str:
    return str(exc) or type(exc).__name__
