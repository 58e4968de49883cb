"""The message transport between site collectors and the centre: what a transport plugin gives.

Site collectors publish sealed batches and checkpoints; ingesters at the
centre take them, store them and answer each one. Between them is a broker
the user already runs, reached through a transport plugin (hook
:func:`~engine.hookspecs.converge_transport`): the built-in one speaks MQTT 5
(``plugins/mqtt_transport``); NATS JetStream or Kafka can come the same way.

The contract is small on purpose, and says nothing of what is stored:

- topics are written as MQTT writes them, levels joined by ``/``; a
  subscription's filter may use ``+`` for one level (a plugin for another
  broker maps them to its own names);
- a message is delivered **at least once**, and an acknowledgement of the
  broker means only that the broker has it, never that it is stored: the
  application makes delivery end to end (docs/scale-out.md);
- a subscription with a ``group`` is shared: each message goes to one member
  of the group (MQTT 5 ``$share/<group>/…``), and is redelivered only while
  unacknowledged by a member that stays connected;
- a message carries a reply topic and correlation data for its answer
  (MQTT 5 response topic and correlation data).

Every method of a :class:`Link` may be called from any thread.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import pluggy

from engine.errors import ConvergeError, PluginError


class TransportError(ConvergeError):
    """A broker URL no transport takes, or a link that cannot be opened (TLS files, names)."""


@dataclass(frozen=True)
class Message:
    """One message: its topic and bytes, and where and how to answer it."""

    topic: str
    payload: bytes
    reply_to: str | None = None
    correlation: bytes | None = None


Ack = Callable[[], None]
"""Tells the broker a received message is handled: call it once the message is committed."""

Handler = Callable[[Message, Ack], None]
"""Called with every message received, one at a time, on the transport's thread; it must
return quickly (hand the message to a worker) and call the ack once the message is handled.
A message not acknowledged when the link drops is redelivered, or lost by some brokers
(eclipse-mosquitto/mosquitto#2662): the sender must send it again until it is answered."""


@dataclass(frozen=True)
class Subscription:
    """A topic filter, shared among the members of ``group`` when one is named."""

    filter: str
    group: str | None = None


class Link(Protocol):
    """A client's connection to the broker, kept up (reconnecting) until it is closed."""

    @property
    def connected(self) -> bool:
        """Whether the link is up now, and subscribed to its subscriptions since it last
        connected (what is sent to them from now on reaches it)."""

    def publish(self, message: Message) -> None:
        """Send ``message`` at least once (MQTT QoS 1); returns at once. While the link is
        down the message waits in memory and goes when it is up again."""

    def close(self) -> None:
        """Disconnect and stop; idempotent."""


class Transport(Protocol):
    """What a transport plugin returns for a broker URL: opens links to that broker."""

    def open(
        self,
        client_id: str,
        subscriptions: Sequence[Subscription],
        handler: Handler,
        *,
        durable: bool,
    ) -> Link:
        """Open a link as ``client_id``, subscribed to ``subscriptions`` (again after every
        reconnection), handing what arrives to ``handler``.

        ``durable``: the broker keeps the client's session while it is away (its
        subscriptions, and the messages sent to it meanwhile); a collector's link
        is durable, so that answers sent while it was cut off reach it. An
        ingester's is not: a broker must not queue messages for a member of a
        shared group that is gone.
        """


@dataclass(frozen=True)
class BrokerOptions:
    """How to reach a broker beyond its URL: a CA file for TLS, a user name and password,
    and the largest message to accept (bytes; larger ones are refused by the receiver)."""

    ca: str | None = None
    username: str | None = None
    password: str | None = None
    max_message: int = 64 << 20

    def as_dict(self) -> dict[str, Any]:
        return {
            "ca": self.ca,
            "username": self.username,
            "password": self.password,
            "max_message": self.max_message,
        }


def open_transport(pm: pluggy.PluginManager, url: str, options: BrokerOptions) -> Transport:
    """The transport a plugin gives for ``url``; raises TransportError when none takes it."""
    transport: Transport | None = pm.hook.converge_transport(url=url, options=options.as_dict())
    if transport is None:
        scheme = url.partition("://")[0]
        raise TransportError(
            f"no installed transport takes the broker URL {url!r} (scheme {scheme!r}):"
            " the built-in one takes mqtt:// and mqtts://"
        )
    if not hasattr(transport, "open"):
        raise PluginError(f"the transport for {url!r} does not implement Transport")
    return transport


def option_values(options: Mapping[str, Any]) -> BrokerOptions:
    """The options a transport plugin was given, as :class:`BrokerOptions` again."""
    return BrokerOptions(
        options.get("ca"),
        options.get("username"),
        options.get("password"),
        int(options.get("max_message") or BrokerOptions.max_message),
    )


__all__ = [
    "Ack",
    "BrokerOptions",
    "Handler",
    "Link",
    "Message",
    "Subscription",
    "Transport",
    "TransportError",
    "open_transport",
    "option_values",
]
