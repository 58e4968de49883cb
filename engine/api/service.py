"""The read API's work, apart from HTTP: who calls, what the guard decides, what is read.

Every request of an authenticated caller is one guard decision and one ``access.decision``
audit entry, recorded before anything is read, whatever the answer: a request that cannot
be answered as asked (400, 404, 414), a point the caller may not read (403), or an answer
(200). A request whose caller is not authenticated (401, or 503 when the principals file
does not load) names no principal to decide on: it is refused before the guard, counted
(:class:`~engine.api.metrics.ApiMetrics`) and logged by the server, and is no audit entry,
so that no one without credentials can grow the log. :class:`Exchange` carries a request
from its caller to its outcome; the HTTP layer (:mod:`engine.api.app`) turns the outcome
into an answer that names the decision, when there is one.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

from engine.access import record
from engine.access.data import csv_chunks, records, targets
from engine.access.guard import Action, Decision, Request, Target, decide
from engine.api import params, proof, summary
from engine.api.auth import Caller, Principals, authenticate
from engine.api.metrics import ApiMetrics
from engine.api.params import Form, Window
from engine.audit import os_user
from engine.errors import InputError
from engine.sign.leaf import instant
from engine.store import data
from engine.store.store import Store
from engine.verify.trust import Trust

ONE_MICROSECOND = timedelta(microseconds=1)
Query = Sequence[tuple[str, str]]
"""A request's query parameters, (name, value) in the order given."""
T = TypeVar("T")
LOG = logging.getLogger(__name__)
"""The server's own log: requests refused before the guard (``converge serve`` shows it)."""


@dataclass(frozen=True)
class Refused:
    """An answer without data: its status, why, and the decision that says so."""

    status: int
    message: str
    decision: Decision | None
    """``None``: refused before the guard, the caller not authenticated (no audit entry)."""
    hidden: bool = False
    """The decision's points are left out of the answer (recorded, not shown): a record the
    caller may not read, whose device and point are not the caller's to learn."""


@dataclass(frozen=True)
class Service:
    """One store, read through the guard for the callers the principals file knows."""

    store: Store
    principals: Principals
    trust: Trust | None
    metrics: ApiMetrics = field(default_factory=ApiMetrics)

    def exchange(
        self,
        authorization: str | None,
        certificate: str | None,
        via: Mapping[str, str],
        query_length: int,
    ) -> Exchange:
        """A request: its caller authenticated (or not), its query string's length."""
        caller = authenticate(self.principals, authorization, certificate, via)
        return Exchange(self, caller, query_length)


@dataclass(frozen=True)
class Exchange:
    """One request on its way to its decision."""

    service: Service
    caller: Caller
    query_length: int

    def refusal(self, asked: list[Target]) -> Refused | None:
        """The refusal due before anything is looked up: a caller not authenticated (401, or
        503 when the principals do not load; no decision), a query string too long (414)."""
        if self.caller.refusal is not None:
            return self.unauthenticated(self.caller.refusal)
        if self.query_length > params.MAX_QUERY:
            reason = f"the query string is longer than {params.MAX_QUERY} bytes"
            return self.refuse(414, reason, asked)
        return None

    def unauthenticated(self, reason: str) -> Refused:
        """Refuse a caller that is not authenticated, before the guard: counted and logged
        by the server, not an audit entry (an authentication failure decides nothing about a
        principal, and one per request from anyone would grow the log without bound)."""
        status = 503 if self.caller.unavailable else 401
        via = self.caller.via
        self.service.metrics.refused(status, via)
        LOG.warning(
            "%d %r from %s (%s): %s",
            status,
            via.get("api"),
            via.get("client"),
            via.get("credential", "credential unchecked"),
            reason,
        )
        return Refused(status, reason, None)

    def refuse(self, status: int, reason: str, asked: list[Target]) -> Refused:
        """Refuse the request for ``reason`` (the guard records it as a denial)."""
        return Refused(status, reason, self.decide("read", asked, None, reason))

    def decide(
        self, action: Action, asked: list[Target], span: Window | None, refusal: str | None = None
    ) -> Decision:
        """The guard's decision on ``asked`` over ``span``, recorded as an audit entry."""
        caller = self.caller
        request = Request(
            principal=caller.principal,
            identity=caller.identity,
            os_user=os_user(),
            action=action,
            targets=asked,
            start=span.start if span else None,
            end=span.end if span else None,
            principals=caller.principals,
            refusal=refusal,
        )
        decision = decide(request)
        record(self.service.store, decision, caller.via)
        return decision

    def denied(self, decision: Decision) -> Refused | None:
        """403 when the guard denied any point asked for."""
        if not decision.denied and decision.points:
            return None
        reasons = "; ".join(f"{p.device}/{p.point}: {p.reason}" for p in decision.denied)
        return Refused(403, f"{self.caller.principal} may not read {reasons}", decision)

    # --- the endpoints ---------------------------------------------------------------

    def points(self, given: Query) -> tuple[Decision, list[dict[str, Any]]] | Refused:
        """The points the caller may read (of ``device`` when the query names one), decided on
        each device's latest plan."""
        refused = self.refusal([])
        if refused is not None:
            return refused
        try:
            device = params.only(given, ("device",)).get("device")
            if device is not None:
                params.name(device, "device")
        except InputError as exc:
            return self.refuse(400, str(exc), [])
        now = datetime.now(UTC)
        with self.service.store.reading() as conn:
            devices = [device] if device is not None else data.devices(conn)
            plans = [data.latest_plan(conn, d, instant(now)) for d in devices]
        found = {(plan.device.id, p.name): (plan, p) for plan in plans if plan for p in plan.points}
        decision = self.decide(
            "read", [Target(d, n, [plan]) for (d, n), (plan, _) in found.items()], None
        )
        listed = [
            {
                "device": plan.device.id,
                "point": point.name,
                "unit": point.unit,
                "signal": point.signal,
                "plan": plan.digest,
            }
            for plan, point in (found[p.device, p.point] for p in decision.allowed)
        ]
        return decision, listed

    def recorded(
        self, device: str, point: str, given: Query, accept: str | None
    ) -> tuple[Decision, Window, Form] | Refused:
        """The decision on reading ``device``/``point`` over the range ``query`` asks for, and
        the form the records are to take."""
        return self._ranged(
            device, point, given, "format", lambda asked, _: params.form(asked, accept)
        )

    def summarised(
        self, device: str, point: str, given: Query
    ) -> tuple[Decision, Window, timedelta] | Refused:
        """The decision on summarising ``device``/``point`` over the range and intervals
        ``query`` asks for."""
        return self._ranged(device, point, given, "interval", params.interval)

    def _ranged(
        self,
        device: str,
        point: str,
        given: Query,
        option: str,
        parse: Callable[[str | None, Window], T],
    ) -> tuple[Decision, Window, T] | Refused:
        """The decision on reading ``device``/``point`` over the range ``given`` asks for, and
        its one other parameter, ``option``, as ``parse`` reads it (an :class:`InputError`
        from ``parse`` refuses the request, 400, as a bad range does)."""
        asked = [Target(params.clipped(device), params.clipped(point), [])]
        refused = self.refusal(asked)
        if refused is not None:
            return refused
        try:
            query = params.only(given, ("start", "end", option))
            span = self._range(device, point, query)
            parsed = parse(query.get(option), span)
        except InputError as exc:
            return self.refuse(400, str(exc), asked)
        decision = self.read(device, point, span)
        return decision if isinstance(decision, Refused) else (decision, span, parsed)

    @staticmethod
    def _range(device: str, point: str, query: Mapping[str, str]) -> Window:
        params.name(device, "device")
        params.name(point, "point")
        return params.window(query.get("start"), query.get("end"), datetime.now(UTC))

    def read(self, device: str, point: str, span: Window) -> Decision | Refused:
        """The decision on reading ``device``/``point`` over ``span``, on the plans its data in
        ``span`` was stored under."""
        with self.service.store.reading() as conn:
            asked = targets(conn, device, [point], span.span)
        decision = self.decide("read", asked, span)
        return self.denied(decision) or decision

    def csv(self, decision: Decision, span: Window) -> Iterator[str]:
        """The allowed records as CSV, streamed (``converge query --format csv``'s lines)."""
        with self.service.store.reading() as conn:
            yield from csv_chunks(conn, decision, span.span, self.service.trust)

    def json_items(self, decision: Decision, span: Window, head: str) -> Iterator[str]:
        """The allowed records as one JSON document, streamed: ``head`` (which opens the
        ``items`` array), then the items, 1,024 to a chunk."""
        yield head
        with self.service.store.reading() as conn:
            lines: list[str] = []
            comma = ""
            for row in records(conn, decision, span.span, self.service.trust):
                lines.append(json.dumps(row, ensure_ascii=False))
                if len(lines) >= 1024:
                    yield comma + ",".join(lines)
                    comma = ","
                    lines.clear()
            yield (comma + ",".join(lines) if lines else "") + "]}"

    def summary(self, decision: Decision, span: Window, length: timedelta) -> list[dict[str, Any]]:
        with self.service.store.reading() as conn:
            rows = records(conn, decision, span.span, self.service.trust)
            return [i.as_json() for i in summary.summarise(rows, span, length)]

    def proof(
        self, batch: str, position: str, given: Query
    ) -> tuple[Decision, dict[str, Any]] | Refused:
        """The record at ``position`` of ``batch`` and its proofs, if the caller may read it;
        the guard decides on the plan the batch was stored under. A record the caller may not
        read is answered as a missing one (404, the same message, no points): numbers tried
        one after another must not tell a caller which devices and points the store holds.
        The decision, recorded, still names them for the auditor."""
        refused = self.refusal([])
        if refused is not None:
            return refused
        try:
            params.only(given, ())
            at = (_index(batch, "batch"), _index(position, "position"))
        except InputError as exc:
            return self.refuse(400, str(exc), [])
        with self.service.store.reading() as conn:
            found = proof.locate(conn, *at)
        missing = f"no record you may read is stored at batch {at[0]} position {at[1]}"
        if found is None:
            return self.refuse(404, missing, [])
        asked = [Target(found.device, found.point, [found.plan] if found.plan else [])]
        decision = self.decide("read", asked, Window(found.at, found.at + ONE_MICROSECOND))
        if self.denied(decision) is not None:
            return Refused(404, missing, decision, hidden=True)
        with self.service.store.reading() as conn:
            return decision, proof.proof(conn, found)


def _index(text: str, what: str) -> int:
    if not text.isdigit() or len(text) > 18:
        raise InputError(f"the {what} is a number from 0, not {text[:40]!r}")
    return int(text)


__all__ = ["Exchange", "Form", "Refused", "Service"]
