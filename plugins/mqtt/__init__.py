"""Built-in MQTT protocol plugin: schemas, read-group planning, sessions, simulator.

The plugin is one declaration (see :mod:`engine.protocol_plugin`), registered
through the ``converge`` entry-point group as ``plugins.mqtt:plugin``; see
``README.md`` for what a site inventory writes and what the plan contains.
"""

from __future__ import annotations

from engine.protocol_plugin import ProtocolPlugin
from plugins.mqtt.plan import plan_read_groups
from plugins.mqtt.schema import address_problems, address_schema, endpoint_schema

plugin = ProtocolPlugin(
    name="mqtt",
    endpoint_schema=endpoint_schema,
    address_schema=address_schema,
    check_address=address_problems,
    plan_read_groups=plan_read_groups,
    session="plugins.mqtt.session:MqttSession",
    simulator="plugins.mqtt.simulator:MqttSimulator",
)
