"""The run-time side of the MQTT plugin: a collector session on one broker.

MQTT pushes, so a session only subscribes: :meth:`MqttSession.read` refuses.
One background task per session consumes the client's messages and hands
every point a message carries to the collector as a :class:`Reading`. When
the broker goes away the task ends and the session is disconnected; the
collector calls :meth:`MqttSession.connect` again (with its own backoff),
which makes a new client and subscribes every group again.

A message that cannot be decoded for a point (not JSON, no such field, an
object or list or null where a value should be, an unreadable timestamp) is
kept as a BAD reading with ``raw_code="malformed"``: nothing is dropped and
nothing raises.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

import aiomqtt

from engine.errors import ConvergeError
from engine.plans.body import PlanBody, ReadGroup
from engine.protocols import Deliver
from engine.records import Quality, Reading, Record, Value
from plugins.mqtt.schema import payload as payload_kind
from plugins.reach import refused_credentials, unreachable

log = logging.getLogger(__name__)

MALFORMED = "malformed"
DEFAULT_PORTS = {"mqtt": 1883, "mqtts": 8883}
DEFAULT_TIMEOUT_S = 10.0
CREDENTIALS_REFUSED = frozenset({4, 5, 134, 135})
"""CONNACK codes of a refused user name or password (MQTT 3.1.1: 4, 5; MQTT 5: 134, 135)."""
EPOCH_MS_ABOVE = 100_000_000_000
"""Epoch numbers above this are milliseconds (as seconds it would be the year 5138)."""


class Malformed(ValueError):
    """A message that does not hold what a point's address says it holds."""


@dataclass(frozen=True)
class Broker:
    """Where to connect, as written in ``endpoint.broker``."""

    host: str
    port: int
    tls: bool


def parse_broker(url: str) -> Broker:
    """``mqtt://host[:port]`` or ``mqtts://host[:port]``; the schema has checked the form."""
    parts = urlsplit(url)
    if parts.scheme not in DEFAULT_PORTS or not parts.hostname:
        raise ConvergeError(f"broker '{url}' is not mqtt://host[:port] or mqtts://host[:port]")
    port = parts.port or DEFAULT_PORTS[parts.scheme]
    return Broker(parts.hostname, port, tls=parts.scheme == "mqtts")


# --- decoding one message for one point --------------------------------------------------


def decode(address: Mapping[str, Any], body: bytes) -> tuple[Value, datetime | None]:
    """The value and source time that ``body`` holds for a point at ``address``.

    Raises :class:`Malformed` when it holds none.
    """
    if payload_kind(address) == "raw":
        return raw_value(body), None
    document = _json(body)
    value = scalar(pick(document, address["field"]) if "field" in address else document)
    stamp = address.get("timestamp_field")
    return value, None if stamp is None else timestamp(pick(document, stamp))


def raw_value(body: bytes) -> Value:
    """The payload as text, or the number it spells (finite numbers only)."""
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as error:
        raise Malformed("payload is not UTF-8 text") from error
    try:
        return number(text.strip())
    except ValueError:
        return text


def number(text: str) -> int | float:
    """An int when ``text`` is one, else a finite float; ``ValueError`` otherwise."""
    try:
        return int(text)
    except ValueError:
        value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"{text!r} is not a finite number")
    return value


def _json(body: bytes) -> Any:
    def reject_constant(name: str) -> Any:
        raise Malformed(f"{name} is not a JSON value")

    try:
        return json.loads(body, parse_constant=reject_constant)
    except (ValueError, UnicodeDecodeError) as error:
        raise Malformed("payload is not JSON") from error


def pick(document: Any, path: str) -> Any:
    """Follow a dotted path through JSON objects (and lists, by index)."""
    here = document
    for key in path.split("."):
        if isinstance(here, dict) and key in here:
            here = here[key]
        elif isinstance(here, list) and key.isdigit() and int(key) < len(here):
            here = here[int(key)]
        else:
            raise Malformed(f"payload has no '{path}'")
    return here


def scalar(value: Any) -> Value:
    """A string, number or boolean; objects, lists and null carry no value."""
    if isinstance(value, str | bool | int | float):
        return value
    raise Malformed(f"{type(value).__name__} where a value should be")


def timestamp(value: Any) -> datetime:
    """ISO 8601 text (UTC when it names no offset) or epoch seconds or milliseconds."""
    if isinstance(value, str):
        try:
            parsed = datetime.fromisoformat(value)
        except ValueError as error:
            raise Malformed(f"timestamp {value!r} is not ISO 8601") from error
        return parsed.replace(tzinfo=UTC) if parsed.tzinfo is None else parsed.astimezone(UTC)
    if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value):
        seconds = value / 1000 if abs(value) > EPOCH_MS_ABOVE else value
        try:
            return datetime.fromtimestamp(seconds, UTC)
        except (OverflowError, OSError, ValueError) as error:
            raise Malformed(f"timestamp {value!r} is out of range") from error
    raise Malformed(f"timestamp {value!r} is neither ISO 8601 text nor an epoch number")


def body_bytes(payload: Any) -> bytes:
    """aiomqtt hands bytes; be lenient with what a test double might hand."""
    if isinstance(payload, bytes | bytearray):
        return bytes(payload)
    return b"" if payload is None else str(payload).encode()


# --- the session ---------------------------------------------------------------------------


@dataclass
class _Subscription:
    group: ReadGroup
    deliver: Deliver


class MqttSession:
    """One device's plan, collected from its broker (see the module docstring)."""

    def __init__(self, plan: PlanBody) -> None:
        self.device = plan.device.id
        self.endpoint = plan.device.endpoint
        timeout_ms = plan.device.limits.timeout_ms
        self.timeout_s = timeout_ms / 1000 if timeout_ms else DEFAULT_TIMEOUT_S
        self.addresses = {p.name: p.address for p in plan.points}
        self._subscriptions: dict[str, _Subscription] = {}
        self._client: aiomqtt.Client | None = None
        self._task: asyncio.Task[None] | None = None

    @property
    def connected(self) -> bool:
        """True while a client is connected and its message task runs."""
        return self._task is not None and not self._task.done()

    async def connect(self) -> None:
        """Connect (a fresh client each time) and subscribe every group subscribed so far."""
        if self.connected:
            return
        await self._drop()
        client = self._new_client()
        try:
            await client.__aenter__()
        except aiomqtt.MqttError as error:
            raise self._refused(error) from error
        self._client = client
        try:
            for subscription in self._subscriptions.values():
                await self._subscribe(client, subscription.group)
        except BaseException:
            await self._drop()
            raise
        self._task = asyncio.create_task(self._consume(client), name=f"mqtt:{self.device}")

    async def read(self, group: ReadGroup, scheduled_at: datetime) -> list[Record]:
        raise ConvergeError(
            f"{self.device}: MQTT read groups are subscriptions; nothing can be polled"
        )

    async def subscribe(self, group: ReadGroup, deliver: Deliver) -> None:
        """Remember the group (so :meth:`connect` renews it) and subscribe now if connected."""
        if group.kind != "subscribe":
            raise ConvergeError(f"{self.device}: MQTT has no read group of kind {group.kind!r}")
        unknown = [p for p in group.points if p not in self.addresses]
        if unknown:
            raise ConvergeError(f"{self.device}: the plan has no address for {unknown}")
        self._subscriptions[group.spec["topic"]] = _Subscription(group, deliver)
        if self.connected and self._client is not None:
            try:
                await self._subscribe(self._client, group)
            except ConnectionError:
                await self._drop()
                raise

    async def close(self) -> None:
        """Stop the message task and disconnect; idempotent, never raises."""
        with contextlib.suppress(Exception):
            await self._drop()

    # --- internals ---

    def _refused(self, error: aiomqtt.MqttError) -> ConnectionError:
        """The one-line error of a failed connect: credentials, TLS, or the network."""
        broker = str(self.endpoint["broker"])
        code = getattr(error, "rc", None)
        number = getattr(code, "value", code)
        if isinstance(error, aiomqtt.MqttCodeError) and number in CREDENTIALS_REFUSED:
            return refused_credentials(self.device, broker, str(code))
        return unreachable(self.device, broker, error)

    def _new_client(self) -> aiomqtt.Client:
        broker = parse_broker(self.endpoint["broker"])
        return aiomqtt.Client(
            broker.host,
            broker.port,
            identifier=self.endpoint.get("client_id"),
            username=self.endpoint.get("username"),
            password=self._password(),
            keepalive=int(self.endpoint.get("keepalive", 60)),
            timeout=self.timeout_s,
            tls_params=self._tls() if broker.tls else None,
        )

    def _password(self) -> str | None:
        name = self.endpoint.get("password_env")
        if name is None:
            return None
        if name not in os.environ:
            raise ConvergeError(f"{self.device}: environment variable {name} is not set")
        return os.environ[name]

    def _tls(self) -> aiomqtt.TLSParameters:
        tls = self.endpoint.get("tls", {})
        return aiomqtt.TLSParameters(
            ca_certs=tls.get("ca"), certfile=tls.get("cert"), keyfile=tls.get("key")
        )

    async def _subscribe(self, client: aiomqtt.Client, group: ReadGroup) -> None:
        try:
            await client.subscribe(group.spec["topic"], qos=int(group.spec.get("qos", 1)))
        except aiomqtt.MqttError as error:
            topic = group.spec["topic"]
            raise ConnectionError(f"{self.device}: subscribe {topic}: {error}") from error

    async def _consume(self, client: aiomqtt.Client) -> None:
        """Hand over every message until the broker goes away (then the task just ends)."""
        try:
            async for message in client.messages:
                await self._dispatch(message.topic, body_bytes(message.payload))
        except aiomqtt.MqttError as error:
            log.info("%s: lost the broker: %s", self.device, error)
        except Exception:
            # A failing ``deliver`` ends the task like a lost broker: the collector
            # sees a disconnected session and connects again.
            log.exception("%s: delivering a message failed", self.device)

    async def _dispatch(self, topic: aiomqtt.Topic, body: bytes) -> None:
        arrived = datetime.now(UTC)
        for subscription in list(self._subscriptions.values()):
            group = subscription.group
            if not topic.matches(group.spec["topic"]):
                continue
            for point in group.points:
                address = self.addresses[point]
                if topic.matches(address["topic"]):
                    await subscription.deliver(self._reading(point, address, body, arrived))

    def _reading(
        self, point: str, address: Mapping[str, Any], body: bytes, arrived: datetime
    ) -> Reading:
        try:
            value, source_at = decode(address, body)
        except Malformed as error:
            log.debug("%s.%s: malformed message: %s", self.device, point, error)
            return Reading(self.device, point, arrived, None, Quality.BAD, raw_code=MALFORMED)
        return Reading(self.device, point, arrived, value, Quality.GOOD, source_at=source_at)

    async def _drop(self) -> None:
        """Cancel the message task and disconnect the client, whatever state they are in."""
        task, client = self._task, self._client
        self._task = self._client = None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        if client is not None:
            with contextlib.suppress(aiomqtt.MqttError, OSError, RuntimeError):
                async with asyncio.timeout(self.timeout_s):  # not wait_for: see Clock.wait_for
                    await client.__aexit__(None, None, None)
