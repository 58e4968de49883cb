"""Built-in MQTT 5 transport: answers :func:`~engine.hookspecs.converge_transport` for
``mqtt://`` and ``mqtts://`` broker URLs.

Registered through the ``converge`` entry-point group as
``plugins.mqtt_transport:plugin``, exactly as a NATS or Kafka transport would
be. The link itself (paho-mqtt 2, with manual acknowledgements) is in
:mod:`plugins.mqtt_transport.link`; docs/scale-out.md says how the site
collectors and ingesters use it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from engine.hookspecs import hookimpl
from engine.transport import Transport, option_values


class MqttTransportPlugin:
    """The hook implementation; the transport itself is :class:`~.link.MqttTransport`."""

    @hookimpl
    def converge_transport(self, url: str, options: Mapping[str, Any]) -> Transport | None:
        if url.partition("://")[0] not in ("mqtt", "mqtts"):
            return None
        from plugins.mqtt_transport.link import MqttTransport  # noqa: PLC0415 -- paho on use

        return MqttTransport(url, option_values(options))


plugin = MqttTransportPlugin()
