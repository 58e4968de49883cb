"""JSON Schema for editors: valid draft 2020-12, and it agrees with the validate stage."""

from __future__ import annotations

import json
import textwrap
from typing import Any

import jsonschema
import pytest
import yaml
from test_validate import GOOD_POLICY, GOOD_SITE, FakeProto

from engine.compile.validate.jsonschema import DRAFT, json_schema
from engine.plugin_manager import make_plugin_manager


@pytest.fixture(scope="module")
def pm():
    return make_plugin_manager(load_entry_points=False, extra=[FakeProto()])


def as_editor_sees(text: str) -> Any:
    """YAML as yaml-language-server reads it: dates stay strings (JSON has no dates)."""
    return json.loads(json.dumps(yaml.safe_load(textwrap.dedent(text)), default=str))


def errors(schema: dict[str, Any], text: str) -> list[str]:
    validator = jsonschema.Draft202012Validator(schema)
    return sorted(e.message for e in validator.iter_errors(as_editor_sees(text)))


@pytest.mark.parametrize("kind", ["policy", "site", "principals"])
def test_every_kind_is_a_valid_draft_2020_12_schema(pm, kind):
    schema = json_schema(kind, pm)
    assert schema["$schema"] == DRAFT
    jsonschema.Draft202012Validator.check_schema(schema)
    assert json.loads(json.dumps(schema)) == schema


@pytest.mark.parametrize("kind", ["policy", "site", "principals"])
def test_the_built_in_protocol_plugins_translate_too(kind):
    schema = json_schema(kind, make_plugin_manager())
    jsonschema.Draft202012Validator.check_schema(schema)


def test_unknown_kind_is_refused(pm):
    with pytest.raises(ValueError, match="unknown kind of file 'plan'"):
        json_schema("plan", pm)  # type: ignore[arg-type]


def test_a_valid_policy_passes(pm):
    assert errors(json_schema("policy", pm), GOOD_POLICY) == []


def test_unknown_keys_are_flagged_in_the_editor(pm):
    found = errors(json_schema("policy", pm), GOOD_POLICY + "retension: {}\n")
    assert found == ["Additional properties are not allowed ('retension' was unexpected)"]


@pytest.mark.parametrize(
    ("line", "fragment"),
    [
        ("capture: {every: fast}", "does not match"),
        ("capture: {every: 0s}", "does not match"),
        ("retention: {on_expiry: purge}", "is not one of ['delete', 'archive']"),
        ("access: {read: [QA]}", "does not match"),
        ("signing: {required: maybe}", "is not of type 'boolean'"),
        ("capture: {on_change: {deadband: -1}}", "less than the minimum of 0"),
    ],
)
def test_value_rules_are_carried_over(pm, line, fragment):
    text = "policy: p\ntitle: t\nowner: o\napplies: {}\n" + line + "\n"
    found = errors(json_schema("policy", pm), text)
    assert len(found) == 1
    assert fragment in found[0]


def test_fields_carry_descriptions(pm):
    schema = json_schema("policy", pm)
    assert schema["required"] == ["policy", "title", "owner", "applies"]
    every = schema["properties"]["capture"]["properties"]["every"]
    assert every["description"] == "samples at most this far apart, e.g. 5s"
    assert every["pattern"] == "^0*[1-9][0-9]*(ms|s|m|h|d|w|y)$"


def test_site_protocols_are_the_installed_plugins(pm):
    schema = json_schema("site", pm)
    device = schema["properties"]["devices"]["items"]
    assert device["properties"]["protocol"]["enum"] == ["fake", "loose"]
    assert errors(schema, GOOD_SITE) == []


def test_each_protocol_brings_its_endpoint_and_address_shapes(pm):
    schema = json_schema("site", pm)
    site = GOOD_SITE.replace("{host: 127.0.0.1}", "{hots: 127.0.0.1}").replace(
        "{register: 7}", "{register: -7}"
    )
    assert errors(schema, site) == [
        "'host' is a required property",
        "-7 is less than the minimum of 0",
        "Additional properties are not allowed ('hots' was unexpected)",
    ]


def test_only_protocols_with_schemas_get_a_case(pm):
    schema = json_schema("site", pm)
    assert "anything" in GOOD_SITE
    device = schema["properties"]["devices"]["items"]
    assert [case["if"]["properties"]["protocol"]["const"] for case in device["allOf"]] == ["fake"]


def test_principals_schema(pm):
    schema = json_schema("principals", pm)
    good = "principals:\n  - {id: alice@example.com, kind: person, roles: [qa]}\n"
    assert errors(schema, good) == []
    assert errors(schema, "principals:\n  - {id: a, kind: robot}\n") == [
        "'robot' is not one of ['person', 'service']"
    ]
