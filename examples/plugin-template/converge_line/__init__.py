"""The ``line`` protocol plugin for Converge: a template for third-party protocol plugins.

``line`` is a trivial text protocol over TCP, one request per line::

    client:  READ 100 101 102\\n
    server:  21.5\\n          one answer line per register, in order: the value as JSON
             true\\n          (a number, true/false, or a "string"),
             ERR 2\\n         or ERR <code> (2: no such register)

The plugin is one :class:`~engine.protocol_plugin.ProtocolPlugin` declaration,
registered in ``pyproject.toml`` as ``line = "converge_line:plugin"`` in the
``converge`` entry-point group. Sessions and the simulator are named as
``module:Class`` so that planning never imports them.
"""

from __future__ import annotations

from converge_line.plan import plan_read_groups
from converge_line.schema import address_problems, address_schema, endpoint_schema
from engine.protocol_plugin import ProtocolPlugin

plugin = ProtocolPlugin(
    name="line",
    endpoint_schema=endpoint_schema,
    address_schema=address_schema,
    check_address=address_problems,
    plan_read_groups=plan_read_groups,
    session="converge_line.session:LineSession",
    simulator="converge_line.simulator:LineSimulator",
)
