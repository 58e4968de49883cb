"""The run-time half of the OPC UA plugin: one asyncua client session per device plan.

asyncua's client is created without ``auto_reconnect``: the collector owns
reconnection (see :class:`engine.protocols.Session`). After any failure the
session only marks itself disconnected; the collector's next :meth:`connect`
builds a fresh client and re-creates every subscription asked for so far.

Answers of the server, good or bad, become records: a value with a Bad
status is a :class:`Reading` with quality ``BAD``, ``value=None`` and the
status code as ``raw_code``; a request that got no answer is a :class:`Gap`.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any

from asyncua import ua
from asyncua.client.client import Client
from asyncua.client.ua_client import UaClientState
from asyncua.common.node import Node
from asyncua.common.subscription import DataChangeNotif, Subscription
from asyncua.crypto import security_policies
from asyncua.ua.status_codes import StatusCodes
from asyncua.ua.uaerrors import UaError, UaStatusCodeError

from engine.errors import ConvergeError
from engine.plans.body import PlanBody, ReadGroup
from engine.protocols import Deliver
from engine.records import Gap, GapReason, Quality, Reading, Record, Value
from plugins.reach import refused_credentials, unreachable

DEFAULT_TIMEOUT_MS = 4000

LOST_CONNECTION_CODES = frozenset(
    {
        StatusCodes.BadSessionIdInvalid,
        StatusCodes.BadSessionClosed,
        StatusCodes.BadSessionNotActivated,
        StatusCodes.BadSecureChannelIdInvalid,
        StatusCodes.BadSecureChannelClosed,
        StatusCodes.BadConnectionClosed,
        StatusCodes.BadServerNotConnected,
        StatusCodes.BadCommunicationError,
        StatusCodes.BadShutdown,
    }
)
"""Service results that mean the session is gone, not that the request was refused."""

CREDENTIALS_REFUSED = frozenset(
    {
        StatusCodes.BadUserAccessDenied,
        StatusCodes.BadIdentityTokenInvalid,
        StatusCodes.BadIdentityTokenRejected,
    }
)
"""Service results of a user name or password the server does not accept."""


class MalformedValueError(ValueError):
    """A variant value that is not one of the plain types a reading holds."""


def now() -> datetime:
    return datetime.now(UTC)


def plain_value(value: Any) -> Value:
    """The variant's value as a reading holds it; :class:`MalformedValueError` otherwise.

    Enumerations (``ServerState``, ...) become their number and date-times
    their ISO 8601 text; arrays, structures and byte strings are refused.
    """
    if value is None or isinstance(value, bool | str | float):
        return value
    if isinstance(value, int):
        return int(value)
    if isinstance(value, enum.Enum) and isinstance(value.value, int):
        return int(value.value)
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, ua.LocalizedText):
        return value.Text
    raise MalformedValueError(f"a {type(value).__name__} is not a scalar value")


def quality_of(status: ua.StatusCode) -> Quality:
    if status.is_good():
        return Quality.GOOD
    if status.is_uncertain():
        return Quality.UNCERTAIN
    return Quality.BAD


def record_of(
    device: str,
    point: str,
    data: ua.DataValue,
    collected_at: datetime,
    scheduled_at: datetime | None,
) -> Record:
    """One reading from one DataValue; a Bad status keeps its place with ``value=None``."""
    status = data.StatusCode if data.StatusCode is not None else ua.StatusCode()
    quality = quality_of(status)
    value: Value = None
    if quality is not Quality.BAD:
        try:
            value = plain_value(data.Value.Value if data.Value is not None else None)
        except MalformedValueError as exc:
            return Gap(device, point, scheduled_at or collected_at, GapReason.MALFORMED, str(exc))
    return Reading(
        device=device,
        point=point,
        collected_at=collected_at,
        value=value,
        quality=quality,
        source_at=data.SourceTimestamp,
        server_at=data.ServerTimestamp,
        raw_code=status.value,
        scheduled_at=scheduled_at,
    )


@dataclass(frozen=True)
class _Requested:
    """A subscription the collector asked for, kept to re-create it after reconnecting."""

    group: ReadGroup
    deliver: Deliver


class _DataChangeHandler:
    """Turns asyncua's data-change callbacks into records for one subscription group."""

    def __init__(
        self, session: OpcUaSession, points: Mapping[ua.NodeId, str], deliver: Deliver
    ) -> None:
        self._session = session
        self._points = points
        self._deliver = deliver

    async def datachange_notification(self, node: Node, val: Any, data: DataChangeNotif) -> None:
        point = self._points.get(node.nodeid)
        if point is None:
            return
        record = record_of(self._session.device, point, data.monitored_item.Value, now(), None)
        await self._deliver(record)

    async def status_change_notification(self, status: ua.StatusChangeNotification) -> None:
        """The server (or asyncua, on a lost connection) ended the subscription."""
        if not status.Status.is_good():
            self._session.mark_lost()


class OpcUaSession:
    """One OPC UA device as the collector sees it (:class:`engine.protocols.Session`)."""

    def __init__(self, plan: PlanBody) -> None:
        device = plan.device
        self.device = device.id
        self.endpoint = device.endpoint
        timeout_ms = device.limits.timeout_ms
        self.timeout_s = (DEFAULT_TIMEOUT_MS if timeout_ms is None else timeout_ms) / 1000
        self._client: Client | None = None
        self._lost = False
        self._requested: list[_Requested] = []
        self._subscriptions: list[Subscription] = []

    @property
    def connected(self) -> bool:
        client = self._client
        return (
            client is not None
            and not self._lost
            and client.uaclient.state is UaClientState.CONNECTED
        )

    def mark_lost(self) -> None:
        """Remember that the connection is gone; the next :meth:`connect` rebuilds it."""
        self._lost = True

    # --- connection ---------------------------------------------------------------------

    async def connect(self) -> None:
        """Connect a fresh client and re-create every subscription requested so far."""
        if self.connected:
            return
        await self._drop_client()
        client = await self._new_client()
        try:
            await client.connect()
        except TimeoutError:
            raise
        except UaStatusCodeError as exc:
            raise self._refused(exc) from exc
        except (UaError, OSError) as exc:
            raise unreachable(self.device, str(self.endpoint["url"]), exc) from exc
        self._client, self._lost = client, False
        for requested in self._requested:
            await self._start_subscription(client, requested)

    def _refused(self, exc: UaStatusCodeError) -> ConnectionError:
        """The server's refusal in one line: the user, or the session as a whole."""
        url = str(self.endpoint["url"])
        if exc.code in CREDENTIALS_REFUSED:
            return refused_credentials(self.device, url, str(exc))
        return ConnectionError(f"{self.device} at {url}: OPC UA session refused ({exc})")

    async def _new_client(self) -> Client:
        client = Client(str(self.endpoint["url"]), timeout=self.timeout_s)
        username = self.endpoint.get("username")
        if username:
            client.set_user(str(username))
            password_env = self.endpoint.get("password_env")
            if password_env:
                client.set_password(_password(str(password_env)))
        await self._secure(client)
        return client

    async def _secure(self, client: Client) -> None:
        """Sign or encrypt with the endpoint's policy, using the client's certificate and key."""
        mode = str(self.endpoint.get("security_mode", "None"))
        if mode == "None":
            return
        certificate = self.endpoint.get("certificate")
        private_key = self.endpoint.get("private_key")
        if not certificate or not private_key:
            raise ConvergeError(
                f"{self.device}: security_mode {mode} needs a certificate and a private_key"
            )
        policy_name = str(self.endpoint.get("security_policy", "None")).replace("_", "")
        policy = getattr(security_policies, f"SecurityPolicy{policy_name}")
        await client.set_security(
            policy, str(certificate), str(private_key), mode=getattr(ua.MessageSecurityMode, mode)
        )

    async def close(self) -> None:
        """Disconnect and forget the subscriptions; idempotent, never raises."""
        self._requested.clear()
        await self._drop_client()

    async def _drop_client(self) -> None:
        """Disconnect the current client, if any, without waiting longer than the timeout."""
        client, self._client = self._client, None
        self._subscriptions.clear()
        if client is None:
            return
        with contextlib.suppress(Exception):
            async with asyncio.timeout(self.timeout_s):  # not wait_for: see Clock.wait_for
                await client.disconnect()

    # --- reading ------------------------------------------------------------------------

    async def read(self, group: ReadGroup, scheduled_at: datetime) -> list[Record]:
        """One bulk Read of every node of ``group``: one record per point, in its order."""
        points = list(group.points)
        client = self._client
        if client is None or not self.connected:
            return self._gaps(points, scheduled_at, GapReason.REFUSED, "not connected")
        nodes = [client.get_node(str(n)) for n in group.spec["nodes"]]
        collected_at = now()
        try:
            async with asyncio.timeout(self.timeout_s):  # not wait_for: see Clock.wait_for
                values = await client.read_attributes(nodes)
        except TimeoutError:
            return self._gaps(points, scheduled_at, GapReason.TIMEOUT, "no answer in time")
        except UaStatusCodeError as exc:
            return self._service_fault(points, scheduled_at, exc)
        except (OSError, UaError) as exc:
            self.mark_lost()
            return self._gaps(points, scheduled_at, GapReason.REFUSED, str(exc) or "disconnected")
        if len(values) != len(points):
            detail = f"{len(values)} values for {len(points)} nodes"
            return self._gaps(points, scheduled_at, GapReason.MALFORMED, detail)
        return [
            record_of(self.device, point, data, collected_at, scheduled_at)
            for point, data in zip(points, values, strict=True)
        ]

    def _service_fault(
        self, points: Sequence[str], scheduled_at: datetime, exc: UaStatusCodeError
    ) -> list[Record]:
        """A Read the server refused as a whole: a lost session, or an exception per point."""
        code = int(exc.code)
        if code in LOST_CONNECTION_CODES:
            self.mark_lost()
            return self._gaps(points, scheduled_at, GapReason.REFUSED, str(exc), code)
        return self._gaps(points, scheduled_at, GapReason.EXCEPTION, str(exc), code)

    def _gaps(
        self,
        points: Sequence[str],
        scheduled_at: datetime,
        reason: GapReason,
        detail: str,
        raw_code: int | None = None,
    ) -> list[Record]:
        return [Gap(self.device, p, scheduled_at, reason, detail, raw_code) for p in points]

    # --- subscriptions ------------------------------------------------------------------

    async def subscribe(self, group: ReadGroup, deliver: Deliver) -> None:
        """Start a subscription now if connected, and again after every reconnect.

        When not connected the request is only remembered: the next
        :meth:`connect` starts it.
        """
        requested = _Requested(group, deliver)
        self._requested.append(requested)
        client = self._client
        if client is not None and self.connected:
            await self._start_subscription(client, requested)

    async def _start_subscription(self, client: Client, requested: _Requested) -> None:
        group = requested.group
        node_ids = [ua.NodeId.from_string(str(n)) for n in group.spec["nodes"]]
        points = list(group.points)
        by_node = dict(zip(node_ids, points, strict=True))
        handler = _DataChangeHandler(self, by_node, requested.deliver)
        try:
            subscription = await client.create_subscription(
                float(group.spec["publishing_interval_ms"]), handler
            )
            self._subscriptions.append(subscription)
            nodes = [client.get_node(n) for n in node_ids]
            deadband = group.spec.get("deadband")
            if deadband is None:
                results = await subscription.subscribe_data_change(nodes)
            else:
                results = await subscription.deadband_monitor(nodes, ua.Double(deadband))
        except UaError as exc:
            self.mark_lost()
            raise ConnectionError(f"{self.device}: subscription failed: {exc}") from exc
        except OSError:
            self.mark_lost()
            raise
        await self._report_refused_items(points, results, requested.deliver)

    async def _report_refused_items(
        self, points: Sequence[str], results: Sequence[int | ua.StatusCode], deliver: Deliver
    ) -> None:
        """A monitored item the server refused (unknown node, ...) is one BAD reading."""
        collected_at = now()
        for point, result in zip(points, results, strict=True):
            if isinstance(result, ua.StatusCode):
                refused = Reading(self.device, point, collected_at, None, Quality.BAD)
                await deliver(replace(refused, raw_code=result.value))


def _password(variable: str) -> str:
    try:
        return os.environ[variable]
    except KeyError:
        raise ConvergeError(
            f"the environment variable {variable} (password_env) is not set"
        ) from None
