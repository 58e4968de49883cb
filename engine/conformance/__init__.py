"""The protocol conformance kit, a pytest plugin.

Run every engine check against one protocol plugin and a server::

    pytest -p engine.conformance --converge-protocol NAME [--converge-site SITE.yaml]
           [--converge-server simulator|external]

or subclass :class:`ConformanceChecks` in a test module (``protocol = "NAME"``)
with ``-p engine.conformance`` active. The site is ``--converge-site``, else
the ``conformance/site.yaml`` shipped next to the module of the plugin's
``converge`` entry point; ``${PORT}``, ``${PORT_B}``, ... in it become free
loopback ports. With ``--converge-server simulator`` (the default) the kit
serves the site with the plugin's own simulator and a value function of its
own, and compares values; with ``external`` it reads the author's server and
checks only the shape and quality of the records. ``docs/conformance.md``
says what each check means.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from engine.compile.load import load_files
from engine.compile.validate import validate
from engine.compile.validate.jsonschema import json_schema
from engine.compile.validate.rules import ConvergeValidator
from engine.conformance.scenarios import (
    coverage_problem,
    groups_of,
    limit_problems,
    read_every_group,
    reconnect_scenario,
    run,
    subscribe_every_group,
    timeout_scenario,
)
from engine.conformance.target import SERVERS, Target, shipped_site
from engine.errors import Severity
from engine.plugin_manager import make_plugin_manager

# --- the pytest plugin ---------------------------------------------------------------------

KIT = str(Path(__file__).resolve())
"""This module: the kit adds it to the paths pytest collects."""


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("converge", "Converge protocol conformance kit")
    group.addoption(
        "--converge-protocol",
        metavar="NAME",
        help="run the conformance checks against this protocol plugin",
    )
    group.addoption(
        "--converge-site",
        metavar="SITE.yaml",
        help="site whose devices of the protocol are checked (default: the "
        "plugin's conformance/site.yaml); ${PORT...} become free ports",
    )
    group.addoption(
        "--converge-server",
        choices=SERVERS,
        default="simulator",
        help="simulator: serve the site with the plugin's simulator and compare "
        "values (default); external: read servers already running",
    )


def pytest_configure(config: pytest.Config) -> None:
    """With ``--converge-protocol``, collect the checks of this module (and nothing else
    unless test paths were given)."""
    if not config.getoption("converge_protocol", None) or KIT in config.args:
        return
    if config.args_source is pytest.Config.ArgsSource.ARGS:
        config.args.append(KIT)
    else:
        config.args[:] = [KIT]


@pytest.fixture(scope="class")
def converge_target(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Target:
    """The protocol under test, its compiled site and how to reach its server."""
    config = request.config
    protocol = getattr(request.cls, "protocol", None) or config.getoption("converge_protocol", None)
    if not protocol:
        pytest.fail("no protocol to check: pass --converge-protocol NAME", pytrace=False)
    site = getattr(request.cls, "site", None) or config.getoption("converge_site", None)
    server = getattr(request.cls, "server", None) or config.getoption("converge_server", None)
    pm = make_plugin_manager()
    root = tmp_path_factory.mktemp(f"conformance-{protocol}")
    source = Path(site) if site else shipped_site(pm, protocol)
    return Target.build(str(protocol), pm, source, root, str(server or "simulator"))


# --- the checks ----------------------------------------------------------------------------


class ConformanceChecks:
    """Every conformance check, as test methods; subclass it as ``Test...`` to run them.

    Class attributes override the command line: ``protocol``, ``site`` (a site
    file) and ``server`` (``simulator`` or ``external``).
    """

    protocol: str | None = None
    site: str | None = None
    server: str | None = None

    def test_protocol_is_registered_once(self, converge_target: Target) -> None:
        names = [n for got in converge_target.pm.hook.converge_protocol_names() for n in got]
        count = names.count(converge_target.protocol)
        assert count == 1, (
            f"protocol '{converge_target.protocol}' is named by {count} plugins; "
            f"installed protocols: {sorted(names)}"
        )

    def test_schemas_are_valid_cerberus(self, converge_target: Target) -> None:
        for part in ("endpoint", "address"):
            hook = getattr(converge_target.pm.hook, f"converge_{part}_schema")
            schema = hook(protocol=converge_target.protocol)
            assert isinstance(schema, dict), f"converge_{part}_schema gave {schema!r}, not a dict"
            ConvergeValidator(schema)  # raises cerberus.SchemaError, naming the bad rule

    def test_json_schema_export_has_the_protocol(self, converge_target: Target) -> None:
        device = json_schema("site", converge_target.pm)["properties"]["devices"]["items"]
        assert converge_target.protocol in device["properties"]["protocol"]["enum"]
        cases = [
            c["then"]
            for c in device.get("allOf", [])
            if c["if"]["properties"]["protocol"].get("const") == converge_target.protocol
        ]
        assert len(cases) == 1, "the site JSON Schema has no case for the protocol"
        assert {"endpoint", "points"} <= set(cases[0]["properties"]), cases[0]

    def test_site_validates(self, converge_target: Target) -> None:
        documents, findings = load_files([converge_target.site_file])
        _, more = validate([], documents, [], converge_target.pm)
        errors = [str(f) for f in findings + more if f.severity is Severity.ERROR]
        assert not errors, "the site has errors:\n" + "\n".join(errors)
        assert converge_target.devices, f"the site has no device of '{converge_target.protocol}'"

    def test_read_groups_cover_every_point_once(self, converge_target: Target) -> None:
        converge_target.need_plans()
        problems = [coverage_problem(d, converge_target.plans) for d in converge_target.devices]
        assert not any(problems), "\n".join(p for p in problems if p)

    def test_read_groups_respect_device_limits(self, converge_target: Target) -> None:
        converge_target.need_plans()
        problems = [p for plan in converge_target.plans for p in limit_problems(plan)]
        assert not problems, "\n".join(problems)

    def test_reads_give_one_record_per_point(self, converge_target: Target) -> None:
        converge_target.need_plans()
        if not any(groups_of(plan, "read") for plan in converge_target.plans):
            pytest.skip("no read groups: the protocol only subscribes")
        problems = run(read_every_group(converge_target))
        assert not problems, "\n".join(problems)

    def test_subscriptions_deliver(self, converge_target: Target) -> None:
        converge_target.need_plans()
        if not any(groups_of(plan, "subscribe") for plan in converge_target.plans):
            pytest.skip("no subscription groups in the plans")
        problems = run(subscribe_every_group(converge_target))
        assert not problems, "\n".join(problems)

    def test_late_answer_is_a_timeout_gap(self, converge_target: Target) -> None:
        converge_target.require_simulator()
        converge_target.need_plans()
        reading = [p for p in converge_target.plans if groups_of(p, "read")]
        if not reading:
            pytest.skip("no read groups: timeouts apply to reads")
        problems = run(timeout_scenario(converge_target, reading[0]))
        assert not problems, "\n".join(problems)

    def test_reconnects_after_server_restart(self, converge_target: Target) -> None:
        converge_target.require_simulator()
        converge_target.need_plans()
        problems = run(reconnect_scenario(converge_target, converge_target.plans[0]))
        assert not problems, "\n".join(problems)


class TestConformance(ConformanceChecks):
    """The checks ``pytest -p engine.conformance --converge-protocol NAME`` runs."""


__all__ = ["ConformanceChecks", "Target", "TestConformance"]
