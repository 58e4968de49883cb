"""Simulated MQTT devices: embedded amqtt brokers and a publisher.

One broker per distinct ``host:port`` of the devices' endpoints (devices may
share a broker). Every ``interval`` seconds the publisher sends each point's
``value_at(device, point, t)`` through the broker itself (no client
connection, so a broker restart needs no reconnecting publisher). Points of
one concrete topic that read JSON fields share one JSON document; a raw point
gets its value as text. A topic filter with wildcards is published to a
concrete topic it matches: ``+`` becomes the device id, ``#`` the point name.

Faults (:meth:`MqttSimulator.inject`):

- ``stop`` / ``start``: shut the device's broker down / start a new one on
  the same port (every device on that broker is affected);
- ``malformed`` (``n``, default 1): the device's next ``n`` publishing rounds
  send garbage instead of its values, on every topic of the device;
- ``delay`` (``seconds``): the device publishes nothing for that long; 0 ends it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections import defaultdict
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from amqtt.broker import Broker  # no py.typed in 0.12

from engine.errors import ConvergeError
from engine.model import Device, Point
from engine.protocols import Fault, ValueAt
from engine.records import Value
from plugins.mqtt.schema import payload as payload_kind
from plugins.mqtt.session import parse_broker
from plugins.reach import cannot_serve, quiet

log = logging.getLogger(__name__)

GARBAGE = b"\xff{not json"
PUBLISH_INTERVAL_S = 0.5
HostPort = tuple[str, int]


def broker_config(host: str, port: int) -> dict[str, Any]:
    """amqtt 0.12 configuration: one TCP listener, anonymous access, no topic checks.

    Only the anonymous-auth plugin is named, which leaves out amqtt's default
    ``$SYS`` and packet-logging plugins.
    """
    return {
        "listeners": {"default": {"type": "tcp", "bind": f"{host}:{port}"}},
        "plugins": {"amqtt.plugins.authentication.AnonymousAuthPlugin": {"allow_anonymous": True}},
    }


def concrete_topic(topic_filter: str, device: str, point: str) -> str:
    """A topic that ``topic_filter`` matches: ``+`` → device id, ``#`` → point name."""
    levels = {"+": device, "#": point}
    return "/".join(levels.get(level, level) for level in topic_filter.split("/"))


def put(document: dict[str, Any], path: str, value: Any) -> None:
    """Set a dotted path in nested dicts, making the dicts on the way."""
    *parents, last = path.split(".")
    for key in parents:
        document = document.setdefault(key, {})
    document[last] = value


def raw_text(value: Value) -> str:
    return value if isinstance(value, str) else json.dumps(value)


def messages(device: Device, value_at: ValueAt, t: float, now: datetime) -> list[tuple[str, bytes]]:
    """What ``device`` publishes at ``t``: (topic, payload) pairs, one JSON document per topic."""
    documents: dict[str, dict[str, Any]] = defaultdict(dict)
    out: list[tuple[str, bytes]] = []
    for point in device.points:
        topic = concrete_topic(point.address["topic"], device.id, point.name)
        value = value_at(device.id, point.name, t)
        if payload_kind(point.address) == "raw":
            out.append((topic, raw_text(value).encode()))
        else:
            _fill(documents[topic], point, value, now)
    out += [(topic, json.dumps(doc).encode()) for topic, doc in documents.items()]
    return out


def _fill(document: dict[str, Any], point: Point, value: Value, now: datetime) -> None:
    address = point.address
    if "field" in address:
        put(document, address["field"], value)
    if "timestamp_field" in address:
        put(document, address["timestamp_field"], now.isoformat())


class MqttSimulator:
    """Embedded brokers serving some MQTT devices (see the module docstring)."""

    def __init__(
        self,
        devices: Sequence[Device],
        value_at: ValueAt,
        *,
        interval: float = PUBLISH_INTERVAL_S,
    ) -> None:
        self.devices = {d.id: d for d in devices}
        self.value_at = value_at
        self.interval = interval
        self.endpoints: dict[str, HostPort] = {d.id: _host_port(d) for d in devices}
        self._brokers: dict[HostPort, Broker | None] = dict.fromkeys(self.endpoints.values())
        self._malformed: dict[str, int] = {}
        self._silent_until: dict[str, float] = {}
        self._publisher: asyncio.Task[None] | None = None
        self._started = 0.0

    async def start(self) -> None:
        """Start every broker and the publisher; a started simulator is left as it is."""
        if self._publisher is not None:
            return
        try:
            for where in self._brokers:
                await self._start_broker(where)
        except BaseException:
            await self.stop()
            raise
        self._started = asyncio.get_running_loop().time()
        self._publisher = asyncio.create_task(self._publish_forever(), name="mqtt-simulator")

    async def stop(self) -> None:
        task, self._publisher = self._publisher, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        for where in self._brokers:
            try:
                await self._stop_broker(where)
            except Exception:  # stop the others all the same
                log.exception("stopping the MQTT broker on %s:%s failed", *where)

    async def inject(self, fault: Fault) -> None:
        if fault.device not in self.devices:
            raise ConvergeError(f"no simulated MQTT device '{fault.device}'")
        where = self.endpoints[fault.device]
        match fault.kind:
            case "stop":
                await self._stop_broker(where)
            case "start":
                await self._start_broker(where)
            case "malformed":
                self._malformed[fault.device] = int(fault.params.get("n", 1))
            case "delay":
                seconds = float(fault.params.get("seconds", 0))
                self._silent_until[fault.device] = asyncio.get_running_loop().time() + seconds
            case _:
                raise ConvergeError(f"the MQTT simulator cannot inject '{fault.kind}' faults")

    # --- internals ---

    async def _start_broker(self, where: HostPort) -> None:
        """A new broker each time: an amqtt broker that was shut down is not restarted."""
        if self._brokers[where] is not None:
            return
        broker = Broker(broker_config(*where))
        try:
            with quiet("amqtt.broker"):  # it logs a traceback; the error below says it all
                await broker.start()
        except Exception as error:
            host, port = where
            served = ", ".join(d for d, at in self.endpoints.items() if at == where)
            where_ = f"mqtt://{host}:{port}"
            raise cannot_serve(f"{served} (mqtt)", where_, host, port, error) from error
        self._brokers[where] = broker

    async def _stop_broker(self, where: HostPort) -> None:
        broker, self._brokers[where] = self._brokers[where], None
        if broker is not None:
            _cut_clients(broker)
            await broker.shutdown()

    async def _publish_forever(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            try:
                await self.publish_once(loop.time() - self._started)
            except Exception:  # a failing value_at must not end the simulation
                log.exception("publishing simulated MQTT values failed")
            await asyncio.sleep(self.interval)

    async def publish_once(self, t: float) -> None:
        """One round: every device whose broker runs and who is not silenced."""
        now = datetime.now(UTC)
        clock = asyncio.get_running_loop().time()
        for device in self.devices.values():
            broker = self._brokers[self.endpoints[device.id]]
            if broker is None or self._silent_until.get(device.id, 0.0) > clock:
                continue
            for topic, body in self._round(device, t, now):
                await broker.internal_message_broadcast(topic, body, 1)

    def _round(self, device: Device, t: float, now: datetime) -> list[tuple[str, bytes]]:
        out = messages(device, self.value_at, t, now)
        left = self._malformed.get(device.id, 0)
        if left > 0:
            self._malformed[device.id] = left - 1
            return [(topic, GARBAGE) for topic, _ in out]
        return out


def _cut_clients(broker: Broker) -> None:
    """Cut every client's connection at once, as a broker that dies does. amqtt's shutdown
    closes each connection politely, and at times waits until the client closes its end: a
    ``stop`` then took 40 s, until the collector's run ended, and no slot of the stopped
    device was refused meanwhile."""
    for _, handler in list(broker._sessions.values()):  # amqtt names no other way to them
        stream = getattr(getattr(handler, "writer", None), "_writer", None)
        if stream is not None:
            stream.transport.abort()


def _host_port(device: Device) -> HostPort:
    broker = parse_broker(str(device.endpoint["broker"]))
    if broker.tls:
        raise ConvergeError(f"{device.id}: the MQTT simulator serves mqtt://, not mqtts://")
    return (broker.host, broker.port)
