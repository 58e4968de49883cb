"""The MQTT session against a real Mosquitto broker, which `make test` starts.

`tests/services.sh start` installs and starts Mosquitto on loopback and
writes its address to `tests/.services.env` (read by `tests/conftest.py` as
``CONVERGE_MOSQUITTO``). In CI the broker must be there; on a developer
machine without it these tests are skipped with the reason.
"""

from __future__ import annotations

import asyncio
import json
import os
from urllib.parse import urlsplit

import aiomqtt
import pytest

from engine.records import Quality, Reading
from engine.testkit import ProjectBuilder
from plugins.mqtt.session import MqttSession

BROKER = os.environ.get("CONVERGE_MOSQUITTO")
if not BROKER and os.environ.get("CI"):
    pytest.fail("CI must run these against Mosquitto: `make test` starts it", pytrace=False)
pytestmark = pytest.mark.skipif(not BROKER, reason="no Mosquitto: run `make test`")

SITE = """
    site: test-plant
    timezone: UTC
    devices:
      - id: meter-{suffix}
        protocol: mqtt
        endpoint: {{broker: "{broker}", qos: 1}}
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


def plan(project: ProjectBuilder, prefix: str) -> dict[str, object]:
    site = SITE.format(broker=BROKER, prefix=prefix, suffix=prefix.rsplit("/", 1)[-1])
    outcome = project.write({"policies/p.yaml": POLICY, "sites/s/site.yaml": site}).compile()
    outcome.assert_success()
    return dict(outcome.compilation.plans[0].body)


async def collect(plan_body: dict[str, object], messages: list[tuple[str, bytes]]) -> list[Reading]:
    received: list[Reading] = []

    async def deliver(record: object) -> None:
        assert isinstance(record, Reading)
        received.append(record)

    session = MqttSession(plan_body)
    await session.connect()
    for group in plan_body["read_groups"]:  # type: ignore[attr-defined]
        await session.subscribe(group, deliver)
    address = urlsplit(BROKER)
    async with aiomqtt.Client(address.hostname or "127.0.0.1", address.port or 1883) as client:
        for topic, payload in messages:
            await client.publish(topic, payload, qos=1)
    async with asyncio.timeout(5):
        while len(received) < len(messages):
            await asyncio.sleep(0.02)
    await session.close()
    return received


def test_wildcards_fields_and_timestamps_through_mosquitto(converge_project, worker_id):
    prefix = f"converge-test/{worker_id}"
    body = plan(converge_project, prefix)
    payload = json.dumps({"kw": 12.5, "ts": "2026-06-01T12:00:00Z"}).encode()
    readings = asyncio.run(collect(body, [(f"{prefix}/meter/power", payload),
                                          (f"{prefix}/meter/state", b"running")]))
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
