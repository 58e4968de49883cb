"""The built-in protocol plugins load through the entry point and answer only for themselves."""

from __future__ import annotations

from typing import Any

import cerberus
import pluggy
import pytest
from plugin_builders import device, planned, readme_sample

from engine.compile.validate.rules import ConvergeValidator
from engine.plugin_manager import make_plugin_manager, protocol_names

PROTOCOLS = ["modbus", "mqtt", "opcua"]


@pytest.fixture(scope="module")
def pm() -> pluggy.PluginManager:
    return make_plugin_manager()


def normalized(schema: dict[str, Any], data: dict[str, Any]) -> dict[str, Any]:
    validator = cerberus.Validator(schema)
    assert validator.validate(data), validator.errors
    result: dict[str, Any] = validator.normalized(data)
    return result


def test_builtins_register_through_the_entry_point(pm: pluggy.PluginManager):
    assert set(PROTOCOLS) <= set(protocol_names(pm))  # third-party plugins may add more
    names = {pm.get_name(plugin) for plugin in pm.get_plugins()}
    assert set(PROTOCOLS) <= names


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_each_plugin_gives_schemas_for_its_protocol_only(pm: pluggy.PluginManager, protocol: str):
    assert pm.hook.converge_endpoint_schema(protocol=protocol) is not None
    assert pm.hook.converge_address_schema(protocol=protocol) is not None
    assert pm.hook.converge_endpoint_schema(protocol="bacnet") is None
    assert pm.hook.converge_address_schema(protocol="bacnet") is None
    assert pm.hook.converge_check_address(protocol="bacnet", address={}) is None


def test_read_groups_are_planned_by_the_device_protocol(pm: pluggy.PluginManager):
    point = planned("p", {"topic": "plant/t"})
    result = pm.hook.converge_plan_read_groups(
        device=device("mqtt", [point], {"broker": "mqtt://b"}), points=[point]
    )
    assert result.groups[0]["kind"] == "subscribe"
    stranger = device("bacnet", [point])
    assert pm.hook.converge_plan_read_groups(device=stranger, points=[point]) is None


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_readme_samples_are_valid(pm: pluggy.PluginManager, protocol: str):
    """The samples users copy pass both cerberus validators and the address check."""
    endpoint_schema = pm.hook.converge_endpoint_schema(protocol=protocol)
    address_schema = pm.hook.converge_address_schema(protocol=protocol)
    for sample in readme_sample(protocol):
        assert sample["protocol"] == protocol
        for schema, data in [(endpoint_schema, sample["endpoint"])] + [
            (address_schema, p["address"]) for p in sample["points"]
        ]:
            for validator in (cerberus.Validator(schema), ConvergeValidator(schema)):
                assert validator.validate(data), validator.errors
        for p in sample["points"]:
            assert pm.hook.converge_check_address(protocol=protocol, address=p["address"]) == []


def test_modbus_defaults_are_applied(pm: pluggy.PluginManager):
    endpoint = pm.hook.converge_endpoint_schema(protocol="modbus")
    address = pm.hook.converge_address_schema(protocol="modbus")
    assert normalized(endpoint, {"host": "plc"}) == {
        "host": "plc",
        "port": 502,
        "unit": 1,
        "framer": "socket",
    }
    assert normalized(address, {"table": "holding", "register": 100, "type": "float32"}) == {
        "table": "holding",
        "register": 100,
        "type": "float32",
        "byte_order": "big",
        "word_order": "big",
        "scale": 1,
        "offset": 0,
    }


def test_opcua_defaults_are_applied(pm: pluggy.PluginManager):
    endpoint = pm.hook.converge_endpoint_schema(protocol="opcua")
    address = pm.hook.converge_address_schema(protocol="opcua")
    assert normalized(endpoint, {"url": "opc.tcp://srv:4840/"}) == {
        "url": "opc.tcp://srv:4840/",
        "security_mode": "None",
        "security_policy": "None",
    }
    assert normalized(address, {"node": "ns=2;s=A"}) == {"node": "ns=2;s=A"}


def test_mqtt_defaults_are_applied(pm: pluggy.PluginManager):
    endpoint = pm.hook.converge_endpoint_schema(protocol="mqtt")
    address = pm.hook.converge_address_schema(protocol="mqtt")
    assert normalized(endpoint, {"broker": "mqtts://b.example:8883"}) == {
        "broker": "mqtts://b.example:8883",
        "qos": 1,
        "keepalive": 60,
    }
    assert normalized(address, {"topic": "a/b", "field": "v"}) == {"topic": "a/b", "field": "v"}


@pytest.mark.parametrize(
    ("protocol", "key", "data"),
    [
        ("modbus", "port", {"host": "plc", "port": 0}),
        ("modbus", "framer", {"host": "plc", "framer": "ascii"}),
        ("modbus", "unit", {"host": "plc", "unit": 248}),
        ("opcua", "url", {"url": "http://srv:4840/"}),
        ("opcua", "password", {"url": "opc.tcp://srv", "username": "u", "password": "secret"}),
        ("opcua", "private_key", {"url": "opc.tcp://srv", "private_key": "k.pem"}),
        ("mqtt", "broker", {"broker": "tcp://b:1883"}),
        ("mqtt", "broker", {"broker": "mqtt://b:70000"}),
        ("mqtt", "qos", {"broker": "mqtt://b", "qos": 3}),
        ("mqtt", "password_env", {"broker": "mqtt://b", "password_env": "PW"}),
    ],
)
def test_endpoint_schemas_reject(
    pm: pluggy.PluginManager, protocol: str, key: str, data: dict[str, Any]
):
    validator = ConvergeValidator(pm.hook.converge_endpoint_schema(protocol=protocol))
    assert not validator.validate(data)
    assert key in validator.errors


@pytest.mark.parametrize(
    ("protocol", "key", "data"),
    [
        ("modbus", "register", {"table": "holding", "register": 65536, "type": "int16"}),
        ("modbus", "register", {"table": "holding", "register": True, "type": "int16"}),
        ("modbus", "table", {"table": "holdings", "register": 0, "type": "int16"}),
        ("modbus", "length", {"table": "holding", "register": 0, "type": "string", "length": 126}),
        ("modbus", "bit", {"table": "holding", "register": 0, "type": "bool", "bit": 16}),
        ("opcua", "mode", {"node": "i=85", "mode": "poll"}),
        ("mqtt", "field", {"topic": "t", "field": "data..temp"}),
        ("mqtt", "payload", {"topic": "t", "payload": "xml"}),
    ],
)
def test_address_schemas_reject(
    pm: pluggy.PluginManager, protocol: str, key: str, data: dict[str, Any]
):
    validator = ConvergeValidator(pm.hook.converge_address_schema(protocol=protocol))
    assert not validator.validate(data)
    assert key in validator.errors


def test_schemas_are_fresh_copies(pm: pluggy.PluginManager):
    first = pm.hook.converge_address_schema(protocol="modbus")
    first["table"]["allowed"].append("bogus")
    assert "bogus" not in pm.hook.converge_address_schema(protocol="modbus")["table"]["allowed"]
