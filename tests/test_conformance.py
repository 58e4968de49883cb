"""The conformance kit (``pytest -p engine.conformance``) against every protocol we ship.

Each run is a separate pytest process (``pytester.runpytest_subprocess``), as a
plugin author runs it: the three built-ins and the template plugin ``line``
with the sites they ship (their simulators serve them on free ports), and
``line`` against a server started here (``--converge-server external``).

The template is installed for real, with pip, but into a folder of its own
that only these runs see (``PYTHONPATH``): installed into the project's
environment it would be one more protocol for every other test and command.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from engine.conformance.target import free_port
from engine.errors import Location
from engine.model import Device, Limits, Point

pytest_plugins = ["pytester"]

REPO = Path(__file__).resolve().parent.parent
TEMPLATE = REPO / "examples" / "plugin-template"
CHECKS = 10
KIT = ["-p", "engine.conformance", "-p", "no:cacheprovider", "-rs"]

BUILT_INS = ("modbus", "opcua", "mqtt")
"""Each ships the site the kit checks it with, ``plugins/NAME/conformance/site.yaml``."""

SKIPPED = {
    "modbus": ["no subscription groups in the plans"],
    "opcua": [],
    "mqtt": [
        "no read groups: the protocol only subscribes",
        "no read groups: timeouts apply to reads",
    ],
    "line": ["no subscription groups in the plans"],
}


def assert_kit_passed(result: pytest.RunResult, skipped: list[str]) -> None:
    outcomes = result.parseoutcomes()
    assert outcomes.get("passed") == CHECKS - len(skipped), result.stdout.str()
    assert outcomes.get("skipped", 0) == len(skipped), result.stdout.str()
    for reason in skipped:
        result.stdout.fnmatch_lines([f"SKIPPED *{reason}*"])


@pytest.mark.parametrize("protocol", BUILT_INS)
def test_the_built_in_protocols_pass_the_kit_with_their_own_sites(
    pytester: pytest.Pytester, protocol: str
) -> None:
    result = pytester.runpytest_subprocess(*KIT, "--converge-protocol", protocol)
    assert_kit_passed(result, SKIPPED[protocol])


@pytest.fixture(scope="session")
def template_site_packages(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The template plugin installed by pip into a folder of its own."""
    target = tmp_path_factory.mktemp("template-install")
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "-q",
            "--no-deps",
            "--target",
            str(target),
            str(TEMPLATE),
        ],
        check=True,
        capture_output=True,
        timeout=300,
    )
    return target


@pytest.fixture
def template(template_site_packages: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Make the installed template visible to the pytest processes started here."""
    path = os.environ.get("PYTHONPATH")
    joined = os.pathsep.join(p for p in (str(template_site_packages), path) if p)
    monkeypatch.setenv("PYTHONPATH", joined)
    monkeypatch.syspath_prepend(str(template_site_packages))


@pytest.mark.usefixtures("template")
def test_the_installed_template_passes_the_kit_with_its_own_site(pytester: pytest.Pytester) -> None:
    result = pytester.runpytest_subprocess(*KIT, "--converge-protocol", "line")
    assert_kit_passed(result, SKIPPED["line"])


@pytest.mark.usefixtures("template")
def test_the_template_s_own_test_is_the_kit(pytester: pytest.Pytester) -> None:
    result = pytester.runpytest_subprocess(
        "-p",
        "no:cacheprovider",
        "-rs",
        "--rootdir",
        str(TEMPLATE),
        "-c",
        str(TEMPLATE / "pyproject.toml"),
        str(TEMPLATE / "tests"),
    )
    assert_kit_passed(result, SKIPPED["line"])


@contextlib.contextmanager
def line_server(port: int) -> Iterator[None]:
    """The template's simulator on ``port``, in a thread: the kit's 'external' server."""
    from converge_line.simulator import LineSimulator

    here = Location("test")
    device = Device(
        "line-1",
        "external",
        "line",
        {"host": "127.0.0.1", "port": port},
        Limits(),
        (Point("COUNT", None, None, {"register": 0}, here, here),),
        here,
    )
    loop = asyncio.new_event_loop()
    simulator = LineSimulator([device], lambda device, point, t: 42)
    loop.run_until_complete(simulator.start())
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    try:
        yield
    finally:
        asyncio.run_coroutine_threadsafe(simulator.stop(), loop).result(5)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(5)
        loop.close()


@pytest.mark.usefixtures("template")
def test_an_external_server_is_read_without_faults(pytester: pytest.Pytester) -> None:
    port = free_port()
    pytester.makefile(
        ".yaml",
        site=f"""
        site: external
        timezone: UTC
        devices:
          - id: line-1
            protocol: line
            endpoint: {{host: 127.0.0.1, port: {port}}}
            points:
              - {{name: COUNT, address: {{register: 0}}}}
        """,
    )
    with line_server(port):
        result = pytester.runpytest_subprocess(
            *KIT,
            "--converge-protocol",
            "line",
            "--converge-site",
            "site.yaml",
            "--converge-server",
            "external",
        )
    faults = "needs the plugin's simulator and its faults"
    assert_kit_passed(result, ["no subscription groups in the plans", faults, faults])


def test_the_kit_fails_a_value_the_simulator_cannot_serve(pytester: pytest.Pytester) -> None:
    shipped = (REPO / "plugins" / "modbus" / "conformance" / "site.yaml").read_text()
    pytester.makefile(".yaml", site=shipped.replace("scale: 0.1", "scale: 0.001"))
    result = pytester.runpytest_subprocess(
        *KIT, "--converge-protocol", "modbus", "--converge-site", "site.yaml"
    )
    result.assert_outcomes(passed=CHECKS - 2, failed=1, skipped=1)
    result.stdout.fnmatch_lines(
        ["*plc-1: want a Reading, got Gap(*point='SCALED'*Modbus exception 2*"]
    )


@pytest.fixture
def siteless(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> None:
    """A distribution whose ``converge`` entry point names a protocol, ``bare``, and that
    ships no conformance site: a module and its metadata, visible to the runs started here."""
    pytester.makepyfile(
        bare="""
        from engine import hookimpl

        @hookimpl
        def converge_protocol_names():
            return ["bare"]
        """
    )
    info = pytester.mkdir("bare-0.1.dist-info")
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: bare\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[converge]\nbare = bare\n")
    path = os.environ.get("PYTHONPATH")
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(p for p in (str(pytester.path), path) if p))


@pytest.mark.usefixtures("siteless")
def test_a_protocol_without_a_site_fails_with_what_to_do(pytester: pytest.Pytester) -> None:
    result = pytester.runpytest_subprocess(*KIT, "--converge-protocol", "bare")
    result.stdout.fnmatch_lines(["*no site for 'bare': pass --converge-site SITE.yaml*"])
    assert result.ret != 0
