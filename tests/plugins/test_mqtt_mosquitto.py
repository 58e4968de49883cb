"""The MQTT session against a real Mosquitto broker, which `make test` starts.

`tests/services.sh start` installs and starts Mosquitto on loopback and
writes its address to `tests/.services.env` (read by `tests/conftest.py` as
``CONVERGE_MOSQUITTO``), and that of its TLS listener, which wants a user
name and password, as ``CONVERGE_MOSQUITTO_TLS`` (with the throwaway CA that
signs its certificate and the credentials as ``CONVERGE_MOSQUITTO_CA``,
``_USER`` and ``_PASSWORD``). In CI the broker must be there; on a developer
machine without it these tests are skipped with the reason.
"""

from __future__ import annotations

import asyncio
import json
import os
from typing import Any
from urllib.parse import urlsplit

import aiomqtt
import pytest

from engine.errors import ConvergeError
from engine.plans.body import PlanBody
from engine.plans.format import read_plan
from engine.records import Quality, Reading
from engine.testkit import ProjectBuilder
from plugins.mqtt.session import MqttSession
from plugins.reach import CREDENTIALS

BROKER = os.environ.get("CONVERGE_MOSQUITTO")
if not BROKER and os.environ.get("CI"):
    pytest.fail("CI must run these against Mosquitto: `make test` starts it", pytrace=False)
pytestmark = pytest.mark.skipif(not BROKER, reason="no Mosquitto: run `make test`")

TLS_BROKER = os.environ.get("CONVERGE_MOSQUITTO_TLS")
CA = os.environ.get("CONVERGE_MOSQUITTO_CA")
USER = os.environ.get("CONVERGE_MOSQUITTO_USER")
PASSWORD = os.environ.get("CONVERGE_MOSQUITTO_PASSWORD")
if BROKER and not (TLS_BROKER and CA and USER and PASSWORD) and os.environ.get("CI"):
    pytest.fail("CI must run these against Mosquitto's TLS listener too", pytrace=False)
needs_tls = pytest.mark.skipif(
    not (TLS_BROKER and CA and USER and PASSWORD),
    reason="no Mosquitto TLS listener: run `make test`",
)
PASSWORD_ENV = "CONVERGE_TEST_MQTT_PASSWORD"
CONNECT_WITHIN_S = 15
"""A failing connect must fail well within this (the session's own timeout is 10 s)."""

SITE = """
    site: test-plant
    timezone: UTC
    devices:
      - id: meter-{suffix}
        protocol: mqtt
        endpoint: {{broker: "{broker}", qos: 1{endpoint}}}
        points:
          - {{name: power, address: {{topic: "{prefix}/+/power", field: kw, timestamp_field: ts}}}}
          - {{name: state, address: {{topic: "{prefix}/meter/state", payload: raw}}}}
    """
POLICY = """
    policy: capture-meters
    title: Capture meters
    owner: energy
    applies: {}
    capture: {every: 1s}
    """


def plan(
    project: ProjectBuilder, prefix: str, broker: str | None = BROKER, endpoint: str = ""
) -> PlanBody:
    """The plan of one device on ``broker``; ``endpoint`` adds keys, as ``, username: u``."""
    suffix = prefix.rsplit("/", 1)[-1]
    site = SITE.format(broker=broker, prefix=prefix, suffix=suffix, endpoint=endpoint)
    outcome = project.write({"policies/p.yaml": POLICY, "sites/s/site.yaml": site}).compile()
    outcome.assert_success()
    return read_plan(outcome.compilation.plans[0].canonical)


def tls_endpoint(ca: bool = True) -> str:
    """The TLS listener's user, its password through ``PASSWORD_ENV``, and its CA."""
    keys = f", username: {USER}, password_env: {PASSWORD_ENV}"
    return keys + (f', tls: {{ca: "{CA}"}}' if ca else "")


def tls_publisher() -> dict[str, Any]:
    """How a plain aiomqtt client reaches the TLS listener."""
    return {
        "hostname": "127.0.0.1",
        "port": urlsplit(TLS_BROKER).port,
        "username": USER,
        "password": PASSWORD,
        "tls_params": aiomqtt.TLSParameters(ca_certs=CA),
    }


async def collect(
    plan_body: PlanBody,
    messages: list[tuple[str, bytes]],
    publisher: dict[str, Any] | None = None,
) -> list[Reading]:
    received: list[Reading] = []

    async def deliver(record: object) -> None:
        assert isinstance(record, Reading)
        received.append(record)

    session = MqttSession(plan_body)
    await session.connect()
    for group in plan_body.read_groups:
        await session.subscribe(group, deliver)
    if publisher is None:
        address = urlsplit(BROKER)
        publisher = {"hostname": address.hostname or "127.0.0.1", "port": address.port or 1883}
    async with aiomqtt.Client(**publisher) as client:
        for topic, payload in messages:
            await client.publish(topic, payload, qos=1)
    async with asyncio.timeout(30):  # generous: a loaded machine is slow
        while len(received) < len(messages):
            await asyncio.sleep(0.02)
    await session.close()
    return received


def test_wildcards_fields_and_timestamps_through_mosquitto(converge_project, worker_id):
    prefix = f"converge-test/{worker_id}"
    body = plan(converge_project, prefix)
    payload = json.dumps({"kw": 12.5, "ts": "2026-06-01T12:00:00Z"}).encode()
    readings = asyncio.run(
        collect(body, [(f"{prefix}/meter/power", payload), (f"{prefix}/meter/state", b"running")])
    )
    by_point = {r.point: r for r in readings}
    assert by_point["power"].value == 12.5
    assert by_point["power"].source_at is not None
    assert by_point["power"].source_at.isoformat() == "2026-06-01T12:00:00+00:00"
    assert by_point["state"].value == "running"


def test_a_malformed_payload_through_mosquitto_is_a_bad_reading(converge_project, worker_id):
    prefix = f"converge-bad/{worker_id}"
    body = plan(converge_project, prefix)
    (reading,) = asyncio.run(collect(body, [(f"{prefix}/meter/power", b"{not json")]))
    assert (reading.quality, reading.value, reading.raw_code) == (Quality.BAD, None, "malformed")


async def connect_fails(plan_body: PlanBody) -> BaseException:
    """What ``connect()`` raises; it must raise, and soon."""
    session = MqttSession(plan_body)
    try:
        async with asyncio.timeout(CONNECT_WITHIN_S):
            with pytest.raises((OSError, ConvergeError)) as raised:
                await session.connect()
        assert not session.connected
    finally:
        await session.close()
    return raised.value


@needs_tls
def test_tls_and_a_password_through_mosquitto(converge_project, worker_id, monkeypatch):
    monkeypatch.setenv(PASSWORD_ENV, PASSWORD)
    prefix = f"converge-tls/{worker_id}"
    body = plan(converge_project, prefix, TLS_BROKER, tls_endpoint())
    payload = json.dumps({"kw": 7.25, "ts": "2026-06-01T12:00:00Z"}).encode()
    messages = [(f"{prefix}/meter/power", payload), (f"{prefix}/meter/state", b"idle")]
    readings = asyncio.run(collect(body, messages, tls_publisher()))
    by_point = {r.point: r for r in readings}
    assert (by_point["power"].quality, by_point["power"].value) == (Quality.GOOD, 7.25)
    assert by_point["state"].value == "idle"


@needs_tls
def test_a_wrong_password_is_a_connection_error(converge_project, worker_id, monkeypatch):
    monkeypatch.setenv(PASSWORD_ENV, "not-the-password")
    body = plan(converge_project, f"converge-tls-bad/{worker_id}", TLS_BROKER, tls_endpoint())
    error = asyncio.run(connect_fails(body))
    assert isinstance(error, ConnectionError)
    assert "meter-" in str(error) and "not authorized" in str(error).lower()


@needs_tls
def test_an_untrusted_server_certificate_is_a_connection_error(
    converge_project, worker_id, monkeypatch
):
    monkeypatch.setenv(PASSWORD_ENV, PASSWORD)
    prefix = f"converge-tls-ca/{worker_id}"
    body = plan(converge_project, prefix, TLS_BROKER, tls_endpoint(ca=False))
    error = asyncio.run(connect_fails(body))
    assert isinstance(error, ConnectionError)
    assert "certificate" in str(error).lower()


@needs_tls
def test_no_password_in_the_environment_refuses_to_connect(
    converge_project, worker_id, monkeypatch
):
    monkeypatch.delenv(PASSWORD_ENV, raising=False)
    body = plan(converge_project, f"converge-tls-env/{worker_id}", TLS_BROKER, tls_endpoint())
    error = asyncio.run(connect_fails(body))
    assert isinstance(error, ConvergeError)
    assert PASSWORD_ENV in str(error)


@needs_tls
def test_refused_credentials_and_tls_are_one_line_naming_the_device_and_broker(
    converge_project, worker_id, monkeypatch
):
    """What the collector's connect-failed event says, for an operator to act on."""
    monkeypatch.setenv(PASSWORD_ENV, "not-the-password")
    body = plan(converge_project, f"converge-tls-line/{worker_id}", TLS_BROKER, tls_endpoint())
    error = asyncio.run(connect_fails(body))
    assert str(error) == (f"{body.device.id} at {TLS_BROKER}: {CREDENTIALS} (Not authorized)")
    monkeypatch.setenv(PASSWORD_ENV, PASSWORD)
    body = plan(
        converge_project, f"converge-tls-ca-line/{worker_id}", TLS_BROKER, tls_endpoint(False)
    )
    error = asyncio.run(connect_fails(body))
    assert str(error).startswith(
        f"{body.device.id} at {TLS_BROKER}: TLS: the server's certificate is not trusted ("
    )
    assert "\n" not in str(error)
