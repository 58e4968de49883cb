"""An MQTT 5 link on paho-mqtt 2: QoS 1 both ways, acknowledged by the application.

paho's network thread (``loop_start``) keeps the link up, reconnecting every
1–5 s while the broker is away, subscribes again after every connection, and
hands each message to the handler with an acknowledgement to call once it is
handled: paho's ``manual_ack``, so a message is acknowledged to the broker
only after the ingester committed it (aiomqtt acknowledges before the
application has seen it, empicano/aiomqtt#345). A durable link keeps its
session at the broker for a week (clean start off, session expiry
interval), an ingester's ends with its connection, so that Mosquitto does not
queue messages of a shared group for a member that is gone.
"""

from __future__ import annotations

import ssl
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote, urlsplit

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from engine.transport import BrokerOptions, Handler, Link, Message, Subscription, TransportError

DEFAULT_PORTS = {"mqtt": 1883, "mqtts": 8883}
KEEPALIVE_S = 30
SESSION_EXPIRY_S = 7 * 24 * 3600
"""How long the broker keeps a durable link's session (its subscriptions, its answers)."""
RECEIVE_MAXIMUM = 16
"""Messages the broker may send before the client acknowledged them."""
IN_FLIGHT = 64
"""Messages this client sends before the broker acknowledged them; more wait in memory."""


@dataclass(frozen=True)
class Broker:
    host: str
    port: int
    tls: bool
    username: str | None
    password: str | None


def parse_url(url: str, options: BrokerOptions) -> Broker:
    """``mqtt[s]://[user[:password]@]host[:port]``; the options' user and password win."""
    parts = urlsplit(url)
    if parts.scheme not in DEFAULT_PORTS or not parts.hostname:
        raise TransportError(f"broker {url!r} is not mqtt://host[:port] or mqtts://host[:port]")
    try:
        port = parts.port or DEFAULT_PORTS[parts.scheme]
    except ValueError as exc:
        raise TransportError(f"broker {url!r}: {exc}") from exc
    username = options.username or (unquote(parts.username) if parts.username else None)
    password = options.password or (unquote(parts.password) if parts.password else None)
    return Broker(parts.hostname, port, parts.scheme == "mqtts", username, password)


class MqttTransport:
    """Opens :class:`MqttLink` s to one broker."""

    def __init__(self, url: str, options: BrokerOptions) -> None:
        self.url, self.options = url, options
        self.broker = parse_url(url, options)

    def open(
        self,
        client_id: str,
        subscriptions: Sequence[Subscription],
        handler: Handler,
        *,
        durable: bool,
    ) -> Link:
        return MqttLink(self, client_id, subscriptions, handler, durable=durable)


class MqttLink:
    """One paho client, connected in the background; see the module docstring."""

    def __init__(
        self,
        transport: MqttTransport,
        client_id: str,
        subscriptions: Sequence[Subscription],
        handler: Handler,
        *,
        durable: bool,
    ) -> None:
        self.subscriptions, self.handler = list(subscriptions), handler
        broker = transport.broker
        self.client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=client_id,
            protocol=mqtt.MQTTv5,
            manual_ack=True,
        )
        if broker.tls:
            self._tls(transport.options.ca)
        if broker.username is not None:
            self.client.username_pw_set(broker.username, broker.password)
        self.client.max_inflight_messages_set(IN_FLIGHT)
        self.client.reconnect_delay_set(1, 5)
        self.client.on_connect = self._connected
        self.client.on_subscribe = self._subscribed
        self.client.on_message = self._received
        self.closed = threading.Event()
        self.ready = threading.Event()
        """Connected and subscribed: what arrives from now on reaches the handler."""
        properties = _properties(PacketTypes.CONNECT)
        properties.SessionExpiryInterval = SESSION_EXPIRY_S if durable else 0
        properties.ReceiveMaximum = RECEIVE_MAXIMUM
        self.client.connect_async(
            broker.host,
            broker.port,
            keepalive=KEEPALIVE_S,
            clean_start=not durable,
            properties=properties,
        )
        self.client.loop_start()

    def _tls(self, ca: str | None) -> None:
        try:
            self.client.tls_set(ca_certs=ca, cert_reqs=ssl.CERT_REQUIRED)
        except (OSError, ssl.SSLError, ValueError) as exc:
            raise TransportError(f"cannot use the CA file {ca}: {exc}") from exc

    @property
    def connected(self) -> bool:
        """Connected, and (when it subscribes) subscribed since the last connection."""
        return bool(self.client.is_connected()) and self.ready.is_set()

    def publish(self, message: Message) -> None:
        properties = _properties(PacketTypes.PUBLISH)
        if message.reply_to is not None:
            properties.ResponseTopic = message.reply_to
        if message.correlation is not None:
            properties.CorrelationData = message.correlation
        self.client.publish(message.topic, message.payload, qos=1, properties=properties)

    def close(self) -> None:
        if self.closed.is_set():
            return
        self.closed.set()
        self.client.disconnect()
        self.client.loop_stop()

    def _connected(
        self,
        client: mqtt.Client,
        userdata: Any,
        flags: Any,
        reason: ReasonCode,
        properties: Properties | None,
    ) -> None:
        self.ready.clear()
        if reason.is_failure:
            return  # paho tries again
        topics = [(_filter(s), 1) for s in self.subscriptions]
        if topics:
            client.subscribe(topics)
        else:
            self.ready.set()

    def _subscribed(
        self,
        client: mqtt.Client,
        userdata: Any,
        mid: int,
        reasons: list[ReasonCode],
        properties: Properties | None,
    ) -> None:
        if not any(reason.is_failure for reason in reasons):
            self.ready.set()

    def _received(self, client: mqtt.Client, userdata: Any, received: mqtt.MQTTMessage) -> None:
        properties = received.properties
        reply_to = getattr(properties, "ResponseTopic", None) if properties else None
        correlation = getattr(properties, "CorrelationData", None) if properties else None
        message = Message(received.topic, bytes(received.payload), reply_to, correlation)
        mid, qos = received.mid, received.qos
        self.handler(message, lambda: self._ack(mid, qos))

    def _ack(self, mid: int, qos: int) -> None:
        if qos > 0 and not self.closed.is_set():
            self.client.ack(mid, qos)


def _properties(packet_type: int) -> Properties:
    return Properties(packet_type)  # type: ignore[no-untyped-call]  # paho leaves it untyped


def _filter(subscription: Subscription) -> str:
    """An MQTT 5 shared subscription (``$share/<group>/<filter>``) when it names a group."""
    if subscription.group is None:
        return subscription.filter
    return f"$share/{subscription.group}/{subscription.filter}"
