"""Errors an operator meets are one line naming the device and the endpoint (issue 15).

A busy port under ``converge simulate``, for every protocol, ends the command
with one line (exit 2), never a traceback. A session that cannot connect, to
a closed port or a name that does not resolve, raises one
:class:`ConnectionError` whose text is ``<device> at <endpoint>: <why>``:
what the collector's ``connect-failed`` event and gap records carry. TLS and
credentials refused by a real broker are in tests/plugins/test_mqtt_mosquitto.py
and tests/plugins/test_opcua_security.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from engine.plugin_manager import make_plugin_manager
from engine.testkit import plan_of
from plugins.reach import NOT_FOUND, REFUSED

PM = make_plugin_manager()


@contextlib.contextmanager
def busy_port() -> Iterator[int]:
    """A port of 127.0.0.1 that something else listens on."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        yield taken.getsockname()[1]


def closed_port() -> int:
    """A port of 127.0.0.1 that nothing listens on (bound, then released)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


ENDPOINTS = {
    "modbus": ("{{host: 127.0.0.1, port: {port}}}", "127.0.0.1:{port}"),
    "mqtt": ('{{broker: "mqtt://127.0.0.1:{port}"}}', "mqtt://127.0.0.1:{port}"),
    "opcua": (
        '{{url: "opc.tcp://127.0.0.1:{port}/converge"}}',
        "opc.tcp://127.0.0.1:{port}/converge",
    ),
}
ADDRESSES = {
    "modbus": "{table: holding, register: 0, type: int16}",
    "mqtt": "{topic: plant/boiler, field: temperature}",
    "opcua": '{node: "ns=2;s=Boiler.Temperature"}',
}


def site(tmp_path: Path, protocol: str, port: int) -> Path:
    endpoint = ENDPOINTS[protocol][0].format(port=port)
    (tmp_path / "site.yaml").write_text(
        textwrap.dedent(
            f"""\
            site: test-plant
            timezone: Europe/Zurich
            devices:
              - id: boiler-1
                protocol: {protocol}
                endpoint: {endpoint}
                points:
                  - {{name: TT1_PV, address: {ADDRESSES[protocol]}}}
            """
        )
    )
    return tmp_path / "site.yaml"


@pytest.mark.parametrize("protocol", sorted(ENDPOINTS))
def test_simulate_on_a_busy_port_is_one_line_naming_the_device_and_endpoint(
    protocol: str, tmp_path: Path
) -> None:
    """Run as a command, so that a library's logged traceback would show."""
    with busy_port() as port:
        done = subprocess.run(
            [sys.executable, "-m", "engine.cli", "simulate", str(site(tmp_path, protocol, port))],
            capture_output=True,
            text=True,
            check=False,
            timeout=60,
        )
    code, err = done.returncode, done.stderr
    assert code == 2
    where = ENDPOINTS[protocol][1].format(port=port).split("/converge")[0]
    assert err == (
        f"converge: error: cannot serve boiler-1 ({protocol}) at {where}: the port is in use;"
        " stop what listens there or give the device another port\n"
    )


async def connect_error(protocol: str, endpoint: dict[str, object]) -> BaseException:
    plan = plan_of(
        {
            "device": {
                "id": "boiler-1",
                "protocol": protocol,
                "endpoint": endpoint,
                "limits": {"timeout_ms": 3000},
            }
        }
    )
    session = PM.hook.converge_open_session(plan=plan)
    try:
        with pytest.raises(OSError) as caught:
            await asyncio.wait_for(session.connect(), 10)
        return caught.value
    finally:
        await session.close()


def endpoint_of(protocol: str, host: str, port: int) -> tuple[dict[str, object], str]:
    if protocol == "modbus":
        return {"host": host, "port": port}, f"{host}:{port}"
    if protocol == "mqtt":
        return {"broker": f"mqtt://{host}:{port}"}, f"mqtt://{host}:{port}"
    url = f"opc.tcp://{host}:{port}/converge"
    return {"url": url}, url


@pytest.mark.parametrize("protocol", sorted(ENDPOINTS))
def test_a_closed_port_is_one_line_naming_the_device_and_endpoint(protocol: str) -> None:
    endpoint, where = endpoint_of(protocol, "127.0.0.1", closed_port())
    error = asyncio.run(connect_error(protocol, endpoint))
    assert isinstance(error, ConnectionError)
    assert str(error) == f"boiler-1 at {where}: {REFUSED}"


@pytest.mark.parametrize("protocol", sorted(ENDPOINTS))
def test_a_host_that_does_not_resolve_is_one_line_naming_the_device_and_endpoint(
    protocol: str,
) -> None:
    endpoint, where = endpoint_of(protocol, "no-such-host.invalid", 1883)
    error = asyncio.run(connect_error(protocol, endpoint))
    assert isinstance(error, ConnectionError)
    assert str(error) == f"boiler-1 at {where}: {NOT_FOUND}"
