"""The validate stage: every problem found, with its code and exact place; a typed model."""

from __future__ import annotations

import datetime
import textwrap
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from engine.compile.load import Document, load_text
from engine.compile.validate import validate
from engine.errors import Finding, Location, PluginError
from engine.hookspecs import hookimpl
from engine.model import NOWHERE, Demand, Project
from engine.plugin_manager import make_plugin_manager


class FakeProto:
    """A tiny protocol plugin: a host and port endpoint, a register address."""

    @hookimpl
    def converge_protocol_names(self) -> list[str]:
        return ["fake", "loose"]

    @hookimpl
    def converge_endpoint_schema(self, protocol: str) -> dict[str, Any] | None:
        if protocol != "fake":
            return None
        return {
            "host": {"type": "string", "required": True},
            "port": {"type": "integer", "min": 1, "max": 65535, "default": 502},
        }

    @hookimpl
    def converge_address_schema(self, protocol: str) -> dict[str, Any] | None:
        if protocol != "fake":
            return None
        return {
            "register": {"type": "integer", "required": True, "min": 0},
            "type": {"type": "string", "allowed": ["int16", "float32"], "default": "int16"},
        }

    @hookimpl
    def converge_check_address(self, protocol: str, address: dict[str, Any]) -> list[str] | None:
        if protocol != "fake":
            return None
        odd_float = address["type"] == "float32" and address["register"] % 2
        return ["a float32 starts at an even register"] if odd_float else []


@pytest.fixture(scope="module")
def pm():
    return make_plugin_manager(load_entry_points=False, extra=[FakeProto()])


def doc(text: str, path: str) -> Document:
    return load_text(textwrap.dedent(text).lstrip("\n"), path)


def run(pm, policies=(), sites=(), principals=()) -> tuple[Project, list[Finding]]:
    return validate(
        [doc(t, f"policies/p{i}.yaml") for i, t in enumerate(policies)],
        [doc(t, f"sites/s{i}/site.yaml") for i, t in enumerate(sites)],
        [doc(t, f"principals{i}.yaml") for i, t in enumerate(principals)],
        pm,
    )


def places(findings: list[Finding]) -> list[tuple[int, int, str]]:
    return [(f.location.line, f.location.col, f.code) for f in findings]


def one(findings: list[Finding]) -> Finding:
    assert len(findings) == 1, [str(f) for f in findings]
    return findings[0]


# --- policies ----------------------------------------------------------------------------

GOOD_POLICY = """
policy: gmp-critical
title: GMP critical process parameters
owner: quality-assurance
controls: ["21 CFR 11.10(e)"]
applies:
  devices:
    site: [plant-basel]
    class: [reactor, filler, reactor]
    labels: {gmp: "true"}
    id: "reactor-*"
  points:
    signal: [temperature, pressure]
    name: ["*_PV"]
capture:
  every: 5s
  cron: ["0 * * * *", "*/5 * * * *", "0 * * * *"]
  on_change: {deadband: 0.2}
retention:
  keep_at_least: 7y
  keep_at_most: 10y
  on_expiry: delete
signing:
  required: true
  keys: [qa-signing, ops-signing]
  batch_window: 60s
access:
  read: [qa, process-engineering]
  export: [auditor]
  deny: []
exceptions:
  - devices: {id: [reactor-7]}
    waive: [signing, capture]
    reason: "legacy RTU, replacement CHG-1234"
    approved_by: j.doe
    expires: 2027-03-31
"""


def test_a_valid_policy_builds_its_model(pm):
    project, findings = run(pm, policies=[GOOD_POLICY])
    assert findings == []
    policy = one_policy(project)
    assert (policy.id, policy.title, policy.owner) == (
        "gmp-critical",
        "GMP critical process parameters",
        "quality-assurance",
    )
    assert policy.controls == ("21 CFR 11.10(e)",)
    assert policy.location == Location("policies/p0.yaml", 1, 9)
    assert policy.devices.class_ == ("reactor", "filler")
    assert policy.devices.id == ("reactor-*",)
    assert policy.devices.labels == {"gmp": ("true",)}
    assert policy.points.signal == ("temperature", "pressure")


def one_policy(project: Project):
    assert len(project.policies) == 1
    return project.policies[0]


def test_demands_are_keyed_by_facet_with_the_place_of_each_value(pm):
    policy = one_policy(run(pm, policies=[GOOD_POLICY])[0])
    at = lambda line, col: Location("policies/p0.yaml", line, col)  # noqa: E731
    assert {facet: (d.value, d.location) for facet, d in policy.demands.items()} == {
        facet: (d.value, d.location)
        for facet, d in {
            "capture.every_ms": Demand(5000, at(15, 10)),
            "capture.cron": Demand(("*/5 * * * *", "0 * * * *"), at(16, 9)),
            "capture.on_change.deadband": Demand(0.2, at(17, 25)),
            "retention.keep_at_least_ms": Demand(220_752_000_000, at(19, 18)),
            "retention.keep_at_most_ms": Demand(315_360_000_000, at(20, 17)),
            "retention.on_expiry": Demand("delete", at(21, 14)),
            "signing.required": Demand(True, at(23, 13)),
            "signing.keys": Demand(("ops-signing", "qa-signing"), at(24, 9)),
            "signing.batch_window_ms": Demand(60_000, at(25, 17)),
            "access.read": Demand(("process-engineering", "qa"), at(27, 9)),
            "access.export": Demand(("auditor",), at(28, 11)),
            "access.deny": Demand((), at(29, 9)),
        }.items()
    }


def test_each_name_in_a_list_facet_has_its_own_place(pm):
    policy = one_policy(run(pm, policies=[GOOD_POLICY])[0])
    places = dict(policy.demands["access.read"].items)
    assert places == {
        "[qa]": Location("policies/p0.yaml", 27, 10),
        "[process-engineering]": Location("policies/p0.yaml", 27, 14),
    }


def test_a_facet_left_out_is_absent(pm):
    text = """
    policy: minimal
    title: t
    owner: o
    applies: {}
    capture: {on_change: {}}
    """
    policy = one_policy(run(pm, policies=[text])[0])
    assert policy.demands == {
        "capture.on_change.deadband": Demand(0.0, Location("policies/p0.yaml", 5, 22)),
    }
    assert policy.devices.location == NOWHERE
    assert policy.devices.id == ()
    assert policy.points.location == NOWHERE


def test_selectors_remember_where_each_key_was_written(pm):
    policy = one_policy(run(pm, policies=[GOOD_POLICY])[0])
    written = {k: v for k, v in policy.devices.locations.items() if "[" not in k}
    assert {key: (loc.line, loc.col) for key, loc in written.items()} == {
        "site": (7, 11),
        "class": (8, 12),
        "labels.gmp": (9, 19),
        "id": (10, 9),
    }
    assert policy.devices.location == Location("policies/p0.yaml", 7, 5)
    written = {k: v for k, v in policy.points.locations.items() if "[" not in k}
    assert {key: (loc.line, loc.col) for key, loc in written.items()} == {
        "signal": (12, 13),
        "name": (13, 11),
    }


def test_exceptions_are_built_with_their_waived_facets_in_plan_order(pm):
    policy = one_policy(run(pm, policies=[GOOD_POLICY])[0])
    (waiver,) = policy.exceptions
    assert waiver.waive == ("capture", "signing")
    assert waiver.expires == datetime.date(2027, 3, 31)
    assert waiver.devices.id == ("reactor-7",)
    assert waiver.devices.locations["id"] == Location("policies/p0.yaml", 31, 19)
    assert waiver.reason == "legacy RTU, replacement CHG-1234"
    assert waiver.approved_by == "j.doe"
    assert waiver.location == Location("policies/p0.yaml", 31, 5)


POLICY_HEAD = """
policy: p
title: t
owner: o
applies: {}
"""


def policy_findings(pm, body: str) -> list[Finding]:
    project, findings = run(pm, policies=[POLICY_HEAD + textwrap.dedent(body)])
    assert project.policies == [], "a policy with errors must not be built"
    return findings


def test_unknown_key_names_the_nearest_valid_key(pm):
    finding = one(policy_findings(pm, "retension:\n  keep_at_least: 7y\n"))
    assert str(finding) == (
        "policies/p0.yaml:5:1: error[unknown-key]: unknown key 'retension' (did you mean "
        "'retention'?)"
    )
    assert finding.code == "unknown-key"


def test_unknown_nested_key_names_its_mapping_and_has_no_suggestion_when_none_is_close(pm):
    finding = one(policy_findings(pm, "capture:\n  zzz: 1\n"))
    assert places([finding]) == [(6, 3, "unknown-key")]
    assert finding.message == "unknown key 'zzz' in capture"


def test_missing_required_key_is_placed_at_its_mapping(pm):
    _, findings = run(pm, policies=["policy: p\ntitle: t\napplies: {}\n"])
    finding = one(findings)
    assert places([finding]) == [(1, 1, "missing-key")]
    assert finding.message == "missing required key 'owner'"


def test_duration_that_is_no_duration_at_all_is_a_wrong_type(pm):
    finding = one(policy_findings(pm, "capture:\n  every: fast\n"))
    assert places([finding]) == [(6, 10, "wrong-type")]
    assert finding.message == "capture.every must be a duration such as 5s or 90d, got 'fast'"


def test_a_number_without_unit_is_a_wrong_type_with_a_hint(pm):
    finding = one(policy_findings(pm, "capture:\n  every: 5\n"))
    assert finding.code == "wrong-type"
    assert finding.message.endswith("got 5 (add a unit, e.g. 5s)")


def test_a_malformed_duration_is_duration_invalid(pm):
    finding = one(policy_findings(pm, "retention:\n  keep_at_least: 1.5h\n"))
    assert places([finding]) == [(6, 18, "duration-invalid")]
    assert "retention.keep_at_least" in finding.message
    assert "write 90m" in finding.message


def test_a_zero_capture_interval_is_refused(pm):
    finding = one(policy_findings(pm, "capture:\n  every: 0s\n"))
    assert places([finding]) == [(6, 10, "bad-value")]
    assert "must be longer than 0" in finding.message


def test_cron_expressions_are_checked_one_by_one(pm):
    finding = one(policy_findings(pm, 'capture:\n  cron: ["0 * * * *", "61 * * * *"]\n'))
    assert places([finding]) == [(6, 23, "cron-invalid")]
    assert finding.message.startswith("capture.cron[1] '61 * * * *' is not a valid cron")


def test_enum_values_list_what_is_allowed(pm):
    finding = one(policy_findings(pm, "retention:\n  on_expiry: purge\n"))
    assert places([finding]) == [(6, 14, "bad-value")]
    assert finding.message == "retention.on_expiry must be one of delete, archive, got 'purge'"


def test_an_unquoted_yaml_boolean_label_value_says_to_quote_it(pm):
    body = "policy: p\ntitle: t\nowner: o\napplies:\n  devices:\n    labels: {gmp: yes}\n"
    _, findings = run(pm, policies=[body])
    finding = one(findings)
    assert places([finding]) == [(6, 19, "wrong-type")]
    assert finding.message.startswith("applies.devices.labels.gmp must be a string")
    assert "got true" in finding.message
    assert 'put it in quotes if it is meant as text: "true"' in finding.message


def test_a_number_where_text_is_wanted_says_to_quote_it(pm):
    _, findings = run(pm, policies=["policy: p\ntitle: 7\nowner: o\napplies: {}\n"])
    finding = one(findings)
    assert places([finding]) == [(2, 8, "wrong-type")]
    assert finding.message.startswith("title must be a string, got 7")


def test_an_empty_value_is_a_wrong_type(pm):
    _, findings = run(pm, policies=["policy: p\ntitle:\nowner: o\napplies: {}\n"])
    finding = one(findings)
    assert finding.code == "wrong-type"
    assert finding.message == "title must be a string, got nothing (the value is empty)"


def test_a_string_where_a_list_is_wanted_suggests_brackets(pm):
    finding = one(policy_findings(pm, "access:\n  read: qa\n"))
    assert places([finding]) == [(6, 9, "wrong-type")]
    assert (
        finding.message
        == "access.read must be a list of strings, got 'qa' (write [qa] for a list of one)"
    )


def test_bad_globs_are_refused(pm):
    body = (
        "policy: p\ntitle: t\nowner: o\napplies:\n"
        "  devices:\n    id: [ok-*, 'reactor-[1']\n  points: {name: '[z-a]'}\n"
    )
    _, findings = run(pm, policies=[body])
    assert places(findings) == [(6, 16, "glob-invalid"), (7, 18, "glob-invalid")]
    assert "unclosed '['" in findings[0].message
    assert findings[0].message.startswith("applies.devices.id[1] glob 'reactor-[1'")
    assert "reversed range 'z-a'" in findings[1].message


@pytest.mark.parametrize(
    ("line", "col", "text"),
    [
        (1, 9, "policy: GMP_Critical\ntitle: t\nowner: o\napplies: {}\n"),
        (5, 17, "policy: p\ntitle: t\nowner: o\napplies: {}\naccess: {read: [QA]}\n"),
        (5, 18, "policy: p\ntitle: t\nowner: o\napplies: {}\nsigning: {keys: [a--b]}\n"),
    ],
)
def test_ids_and_role_names_are_checked(pm, line, col, text):
    _, findings = run(pm, policies=[text])
    assert places(findings) == [(line, col, "id-invalid")]


def test_keep_at_least_longer_than_keep_at_most_is_a_conflict(pm):
    finding = one(policy_findings(pm, "retention:\n  keep_at_least: 10y\n  keep_at_most: 7y\n"))
    assert places([finding]) == [(6, 18, "retention-conflict")]
    assert finding.message == (
        "retention.keep_at_least 10y is longer than retention.keep_at_most 7y"
        " (policies/p0.yaml:7:17)"
    )


EXCEPTION = """
exceptions:
  - devices: {id: x}
    waive: [signing]
"""


@pytest.mark.parametrize(
    ("extra", "code", "line", "col"),
    [
        ("    approved_by: j\n    expires: 2027-01-01\n", "exception-missing-reason", 7, 5),
        (
            '    reason: ""\n    approved_by: j\n    expires: 2027-01-01\n',
            "exception-missing-reason",
            9,
            13,
        ),
        ("    reason: r\n    expires: 2027-01-01\n", "exception-missing-approver", 7, 5),
        (
            "    reason: r\n    approved_by:\n    expires: 2027-01-01\n",
            "exception-missing-approver",
            10,
            17,
        ),
        ("    reason: r\n    approved_by: j\n", "exception-missing-expiry", 7, 5),
    ],
)
def test_an_exception_needs_reason_approver_and_expiry(pm, extra, code, line, col):
    finding = one(policy_findings(pm, EXCEPTION + extra))
    assert places([finding]) == [(line, col, code)]
    assert finding.message.startswith("exceptions[0] has no ")


def test_an_exception_expiry_must_be_a_date(pm):
    body = EXCEPTION + "    reason: r\n    approved_by: j\n    expires: next year\n"
    finding = one(policy_findings(pm, body))
    assert places([finding]) == [(11, 14, "wrong-type")]
    assert (
        finding.message
        == "exceptions[0].expires must be a date such as 2027-03-31, got 'next year'"
    )


def test_a_quoted_iso_date_is_accepted_as_expiry(pm):
    body = (
        POLICY_HEAD + EXCEPTION + '    reason: r\n    approved_by: j\n    expires: "2027-03-31"\n'
    )
    project, findings = run(pm, policies=[body])
    assert findings == []
    assert one_policy(project).exceptions[0].expires == datetime.date(2027, 3, 31)


def test_waived_facets_must_be_facet_groups(pm):
    body = EXCEPTION.replace("[signing]", "[signs]")
    finding = one(
        policy_findings(pm, body + "    reason: r\n    approved_by: j\n    expires: 2027-01-01\n")
    )
    assert places([finding]) == [(8, 13, "bad-value")]
    assert finding.message == (
        "exceptions[0].waive[0] must be one of capture, retention, signing, access,"
        " got 'signs' (did you mean 'signing'?)"
    )


def test_every_problem_is_reported_not_only_the_first(pm):
    body = """
    retension: 7y
    capture: {every: fast, cron: "x"}
    retention: {on_expiry: purge, keep_at_least: 5x}
    signing: {required: maybe}
    """
    findings = policy_findings(pm, body)
    assert [f.code for f in findings] == [
        "unknown-key",
        "wrong-type",
        "cron-invalid",
        "bad-value",
        "duration-invalid",
        "wrong-type",
    ]
    assert findings == sorted(findings, key=lambda f: f.sort_key)


def test_two_policies_with_the_same_id_are_an_error_at_the_second(pm):
    text = "policy: same\ntitle: t\nowner: o\napplies: {}\n"
    project, findings = run(pm, policies=[text, "# second\n" + text])
    finding = one(findings)
    assert places([finding]) == [(2, 9, "policy-duplicate-id")]
    assert finding.location.path == "policies/p1.yaml"
    assert finding.message == "policy id 'same' is already defined at policies/p0.yaml:1:9"
    assert [p.location.path for p in project.policies] == ["policies/p0.yaml"]


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("", "the file is empty; a policy file is a mapping that starts with 'policy:'"),
        ("- policy: p\n", "a policy file is a mapping that starts with 'policy:', got a list"),
        ("just text\n", "got 'just text'"),
    ],
)
def test_a_file_that_is_not_a_mapping_is_one_finding_at_its_start(pm, text, fragment):
    _, findings = run(pm, policies=[text])
    finding = one(findings)
    assert places([finding]) == [(1, 1, "wrong-type")]
    assert fragment in finding.message


# --- sites -------------------------------------------------------------------------------

GOOD_SITE = """
site: plant-basel
title: Basel
timezone: Europe/Zurich
devices:
  - id: reactor-1-plc
    class: reactor
    zone: production
    labels: {gmp: "true"}
    protocol: fake
    endpoint: {host: 127.0.0.1}
    limits: {min_interval: 1s, max_registers_per_read: 100, max_requests_per_second: 10}
    points:
      - name: TT101_PV
        signal: temperature
        unit: degC
        address: {register: 100, type: float32}
      - {name: TT102_PV, address: {register: 7}}
  - id: gateway
    protocol: loose
    endpoint: {anything: [goes]}
    points:
      - {name: flow, address: {topic: a/b}}
"""


def test_a_valid_site_builds_devices_with_plugin_defaults_applied(pm):
    project, findings = run(pm, sites=[GOOD_SITE])
    assert findings == []
    (site,) = project.sites
    assert (site.id, site.title, site.timezone) == ("plant-basel", "Basel", "Europe/Zurich")
    assert site.location == Location("sites/s0/site.yaml", 1, 7)
    reactor, gateway = site.devices
    assert reactor.endpoint == {"host": "127.0.0.1", "port": 502}
    assert (reactor.site, reactor.class_, reactor.zone) == ("plant-basel", "reactor", "production")
    assert reactor.labels == {"gmp": "true"}
    assert reactor.location == Location("sites/s0/site.yaml", 5, 5)
    first, second = reactor.points
    assert (first.name, first.signal, first.unit) == ("TT101_PV", "temperature", "degC")
    assert first.address == {"register": 100, "type": "float32"}
    assert first.address_location == Location("sites/s0/site.yaml", 16, 18)
    assert second.address == {"register": 7, "type": "int16"}
    assert (second.signal, second.unit) == (None, None)
    assert gateway.endpoint == {"anything": ["goes"]}
    assert gateway.points[0].address == {"topic": "a/b"}


def test_limits_durations_become_milliseconds_and_defaults_hold(pm):
    (site,) = run(pm, sites=[GOOD_SITE])[0].sites
    limits = site.devices[0].limits
    assert limits.min_interval_ms == 1000
    assert limits.max_registers_per_read == 100
    assert limits.max_requests_per_second == 10.0
    assert (limits.max_gap, limits.max_connections, limits.close_after_cycle) == (0, 1, False)
    assert limits.locations["min_interval"] == Location("sites/s0/site.yaml", 11, 28)
    assert site.devices[1].limits.min_interval_ms is None


SITE_HEAD = """
site: plant
timezone: UTC
devices:
"""


def site_findings(pm, devices: str) -> tuple[Project, list[Finding]]:
    return run(pm, sites=[SITE_HEAD + textwrap.dedent(devices)])


def test_unknown_timezone_suggests_the_nearest_zone(pm):
    project, findings = run(pm, sites=["site: s\ntimezone: Europe/Zurch\ndevices: []\n"])
    finding = one(findings)
    assert places([finding]) == [(2, 11, "timezone-unknown")]
    assert finding.message == (
        "timezone 'Europe/Zurch' is not a known IANA time zone (did you mean 'Europe/Zurich'?)"
    )
    assert project.sites == []


def test_missing_timezone_is_a_missing_key(pm):
    _, findings = run(pm, sites=["site: s\ndevices: []\n"])
    assert places(findings) == [(1, 1, "missing-key")]
    assert findings[0].message == "missing required key 'timezone'"


def test_unknown_protocol_suggests_the_nearest_and_lists_the_known(pm):
    project, findings = site_findings(
        pm, "  - {id: a, protocol: fakee, points: [{name: p, address: {}}]}\n"
    )
    finding = one(findings)
    assert places([finding]) == [(4, 21, "protocol-unknown")]
    assert finding.message == (
        "devices[0].protocol 'fakee' is not a known protocol (did you mean 'fake'?);"
        " known: fake, loose"
    )
    assert project.sites[0].devices == ()


def test_endpoint_is_checked_with_the_plugin_schema(pm):
    _, findings = site_findings(
        pm,
        """
        - id: a
          protocol: fake
          endpoint: {hots: x, port: 0}
          points: [{name: p, address: {register: 1}}]
        """,
    )
    assert places(findings) == [
        (7, 13, "missing-key"),
        (7, 14, "unknown-key"),
        (7, 29, "bad-value"),
    ]
    assert findings[0].message == "missing required key 'host' in devices[0].endpoint"
    assert findings[1].message == "unknown key 'hots' in devices[0].endpoint (did you mean 'host'?)"
    assert findings[2].message == "devices[0].endpoint.port must be between 1 and 65535, got 0"


def test_a_missing_endpoint_is_checked_as_an_empty_one(pm):
    _, findings = site_findings(
        pm, "  - {id: a, protocol: fake, points: [{name: p, address: {register: 1}}]}\n"
    )
    assert places(findings) == [(4, 3, "missing-key")]
    assert findings[0].message == "missing required key 'host' in devices[0].endpoint"


def test_address_schema_then_plugin_check(pm):
    _, findings = site_findings(
        pm,
        """
        - id: a
          protocol: fake
          endpoint: {host: h}
          points:
            - {name: p, address: {register: 3, type: float32}}
            - {name: q, address: {register: -1}}
        """,
    )
    assert places(findings) == [(9, 26, "address-invalid"), (10, 37, "bad-value")]
    assert (
        findings[0].message == "devices[0].points[0].address: a float32 starts at an even register"
    )
    assert findings[1].message == "devices[0].points[1].address.register must be at least 0, got -1"


def test_a_broken_device_is_left_out_and_the_others_kept(pm):
    project, findings = site_findings(
        pm,
        """
        - {id: good, protocol: loose, points: [{name: p, address: {}}]}
        - id: bad
          protocol: loose
          limits: {max_registers_per_read: 200}
          points: [{name: p, address: {}}]
        """,
    )
    finding = one(findings)
    assert places([finding]) == [(8, 36, "bad-value")]
    assert (
        finding.message
        == "devices[1].limits.max_registers_per_read must be between 1 and 125, got 200"
    )
    assert [d.id for d in project.sites[0].devices] == ["good"]


@pytest.mark.parametrize(
    ("limits", "code", "fragment"),
    [
        ("{min_interval: 5}", "wrong-type", "devices[0].limits.min_interval must be a duration"),
        ("{max_requests_per_second: 0}", "bad-value", "must be greater than 0, got 0"),
        ("{max_connections: true}", "wrong-type", "must be a whole number, got true"),
        ("{max_gap: -1}", "bad-value", "must be at least 0, got -1"),
        ("{timeout: 2 s}", "duration-invalid", "without spaces"),
        ("{close_after_cycle: 1}", "wrong-type", "must be true or false, got 1"),
    ],
)
def test_limits_are_checked(pm, limits, code, fragment):
    _, findings = site_findings(
        pm,
        f"  - {{id: a, protocol: loose, limits: {limits}, points: [{{name: p, address: {{}}}}]}}\n",
    )
    finding = one(findings)
    assert finding.code == code
    assert fragment in finding.message


def test_device_ids_must_be_usable_as_file_names(pm):
    _, findings = site_findings(
        pm, "  - {id: a/b, protocol: loose, points: [{name: p, address: {}}]}\n"
    )
    assert places(findings) == [(4, 8, "id-invalid")]


def test_duplicate_device_ids_and_point_names(pm):
    project, findings = site_findings(
        pm,
        """
        - {id: a, protocol: loose, points: [{name: p, address: {}}, {name: p, address: {}}]}
        - {id: a, protocol: loose, points: [{name: p, address: {}}]}
        """,
    )
    assert places(findings) == [(5, 68, "point-duplicate-name"), (6, 8, "device-duplicate-id")]
    assert findings[0].message == (
        "devices[0].points[1].name 'p' is already used by devices[0].points[0]"
        " (sites/s0/site.yaml:5:44)"
    )
    assert findings[1].message == (
        "devices[1].id 'a' is already used by devices[0] (sites/s0/site.yaml:5:8)"
    )
    assert project.sites[0].devices == ()


def test_points_must_not_be_empty(pm):
    _, findings = site_findings(pm, "  - {id: a, protocol: loose, points: []}\n")
    assert places(findings) == [(4, 36, "bad-value")]
    assert findings[0].message == "devices[0].points must not be empty"


def test_two_sites_with_the_same_id(pm):
    text = "site: same\ntimezone: UTC\ndevices: []\n"
    project, findings = run(pm, sites=[text, text])
    assert places(findings) == [(1, 7, "site-duplicate-id")]
    assert findings[0].location.path == "sites/s1/site.yaml"
    assert [s.location.path for s in project.sites] == ["sites/s0/site.yaml"]


class BrokenSchemaProto:
    @hookimpl
    def converge_protocol_names(self) -> list[str]:
        return ["broken"]

    @hookimpl
    def converge_endpoint_schema(self, protocol: str) -> dict[str, Any] | None:
        return {"host": {"type": "no-such-type"}} if protocol == "broken" else None


def test_a_plugin_schema_cerberus_refuses_is_an_endpoint_finding():
    pm = make_plugin_manager(load_entry_points=False, extra=[BrokenSchemaProto()])
    text = (
        SITE_HEAD
        + "  - {id: a, protocol: broken, endpoint: {host: h}, points: [{name: p, address: {}}]}\n"
    )
    _, findings = validate([], [doc(text, "s.yaml")], [], pm)
    assert places(findings) == [(4, 41, "endpoint-invalid")]
    assert "the 'broken' plugin's endpoint schema is unusable" in findings[0].message


class RaisingProto:
    @hookimpl
    def converge_protocol_names(self) -> list[str]:
        return ["raising"]

    @hookimpl
    def converge_check_address(self, protocol: str, address: dict[str, Any]) -> list[str] | None:
        raise RuntimeError("boom")


def test_a_plugin_that_raises_is_a_plugin_error():
    pm = make_plugin_manager(load_entry_points=False, extra=[RaisingProto()])
    text = SITE_HEAD + "  - {id: a, protocol: raising, points: [{name: p, address: {}}]}\n"
    with pytest.raises(PluginError, match="converge_check_address failed for 'raising': boom"):
        validate([], [doc(text, "s.yaml")], [], pm)


# --- principals --------------------------------------------------------------------------


def test_principals_are_built_and_checked(pm):
    text = """
    principals:
      - {id: alice@example.com, kind: person, roles: [qa, qa, auditor]}
      - {id: historian, kind: robot, roles: [ops]}
      - {id: bob, kind: service, roles: [Ops]}
      - {id: alice@example.com, kind: person}
      - {id: carol, kind: person, name: Carol}
    """
    project, findings = run(pm, principals=[text])
    assert places(findings) == [
        (3, 27, "bad-value"),
        (4, 38, "id-invalid"),
        (5, 10, "principal-duplicate-id"),
    ]
    assert findings[0].message == "principals[1].kind must be one of person, service, got 'robot'"
    assert findings[2].message == (
        "principals[3].id 'alice@example.com' is already defined at principals0.yaml:2:10"
    )
    assert [(p.id, p.kind, p.roles) for p in project.principals] == [
        ("alice@example.com", "person", ("auditor", "qa")),
        ("carol", "person", ()),
    ]


def test_principals_file_needs_its_list(pm):
    _, findings = run(pm, principals=["people: []\n"])
    assert [f.code for f in findings] == ["missing-key", "unknown-key"]


# --- robustness --------------------------------------------------------------------------

KEYS = [
    "policy",
    "title",
    "owner",
    "applies",
    "devices",
    "points",
    "capture",
    "every",
    "cron",
    "on_change",
    "deadband",
    "retention",
    "keep_at_least",
    "keep_at_most",
    "on_expiry",
    "signing",
    "required",
    "keys",
    "batch_window",
    "access",
    "read",
    "export",
    "hold",
    "deny",
    "exceptions",
    "waive",
    "reason",
    "approved_by",
    "expires",
    "labels",
    "labels_not",
    "has_label",
    "id",
    "name",
    "site",
    "zone",
    "class",
    "protocol",
    "timezone",
    "endpoint",
    "limits",
    "address",
    "min_interval",
    "max_gap",
    "register",
    "host",
    "port",
    "type",
    "principals",
    "kind",
    "roles",
    "signal",
    "unit",
]

SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(allow_nan=True),
    st.dates(),
    st.datetimes(),
    st.text(max_size=8),
    st.sampled_from(["5s", "1.5h", "fake", "loose", "UTC", "delete", "[", "* * * * *", "a"]),
)
DATA = st.recursive(
    SCALARS,
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.dictionaries(st.sampled_from(KEYS) | st.text(max_size=5), inner, max_size=6)
    ),
    max_leaves=30,
)


@settings(max_examples=300)
@given(policy=DATA, site=DATA, principals=DATA)
def test_any_data_gives_findings_never_a_traceback(pm, policy, site, principals):
    documents = [
        Document(path, data) for path, data in (("p", policy), ("s", site), ("r", principals))
    ]
    project, findings = validate([documents[0]], [documents[1]], [documents[2]], pm)
    assert isinstance(project, Project)
    assert all(isinstance(f, Finding) and f.code for f in findings)


@settings(max_examples=200)
@given(devices=st.lists(DATA, max_size=3))
def test_any_devices_give_findings_never_a_traceback(pm, devices):
    site = Document("s", {"site": "s", "timezone": "UTC", "devices": devices})
    project, findings = validate([], [site], [], pm)
    assert findings or project.sites
