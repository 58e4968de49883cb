"""OPC UA sessions against a secured simulator: signed and encrypted channels, user names.

Every test starts its own simulator on a free ephemeral port, with a client
certificate generated in ``tmp_path``, and runs under a hard time limit.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import AsyncIterator, Coroutine, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import pytest
from asyncua import ua
from asyncua.crypto.cert_gen import (
    dump_private_key_as_pem,
    generate_private_key,
    generate_self_signed_app_certificate,
)
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import ExtendedKeyUsageOID
from plugin_builders import device, planned

from engine.errors import ConvergeError
from engine.plans.body import PlanBody
from engine.records import Quality, Reading
from engine.testkit import plan_of
from plugins.opcua.plan import plan_read_groups
from plugins.opcua.session import OpcUaSession
from plugins.opcua.simulator import OpcUaSimulator, security_policy_type
from plugins.reach import CREDENTIALS

TEST_LIMIT_S = 90
"""Generous: starting a server takes seconds of CPU, more on a loaded machine."""
TIMEOUT_MS = 2000
PASSWORD_ENV = "CONVERGE_TEST_OPCUA_PASSWORD"
USER = "converge-collector"
T = TypeVar("T")

POINTS = [
    planned("PT", {"node": "ns=2;s=Filler2.PT201.PV"}),
    planned("COUNT", {"node": "ns=2;i=6017"}),
]


@pytest.fixture(autouse=True)
def quiet_asyncua():
    """asyncua logs refused sessions and certificate warnings."""
    logger = logging.getLogger("asyncua")
    level = logger.level
    logger.setLevel(logging.CRITICAL)
    yield
    logger.setLevel(level)


@pytest.fixture
def client_pki(tmp_path: Path) -> dict[str, str]:
    """A self-signed client certificate (DER) and its key (PEM), as endpoint keys."""
    key = generate_private_key()
    cert = generate_self_signed_app_certificate(
        key,
        "Converge test collector",
        {},
        [x509.UniformResourceIdentifier("urn:freeopcua:client"), x509.DNSName("localhost")],
        extended=[ExtendedKeyUsageOID.CLIENT_AUTH],
        days=2,
    )
    cert_path, key_path = tmp_path / "collector.der", tmp_path / "collector.pem"
    cert_path.write_bytes(cert.public_bytes(Encoding.DER))
    key_path.write_bytes(dump_private_key_as_pem(key))
    return {"certificate": str(cert_path), "private_key": str(key_path)}


def run(test: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(asyncio.wait_for(test, TEST_LIMIT_S))


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def value_at(device_id: str, point: str, t: float) -> float | int:
    return {"PT": 4.25, "COUNT": 7}[point]


def secured_endpoint(port: int, mode: str = "SignAndEncrypt") -> dict[str, Any]:
    return {
        "url": f"opc.tcp://127.0.0.1:{port}/",
        "security_mode": mode,
        "security_policy": "Basic256Sha256",
        "username": USER,
        "password_env": PASSWORD_ENV,
    }


def plan_for(endpoint: Mapping[str, Any]) -> PlanBody:
    dev = device("opcua", POINTS, endpoint, timeout_ms=TIMEOUT_MS)
    return plan_of(
        {
            "device": {
                "id": dev.id,
                "protocol": "opcua",
                "endpoint": dict(endpoint),
                "limits": dev.limits.as_plan(),
            },
            "read_groups": plan_read_groups(dev, POINTS).groups,
        }
    )


@contextlib.asynccontextmanager
async def serving(endpoint: Mapping[str, Any]) -> AsyncIterator[OpcUaSimulator]:
    simulator = OpcUaSimulator([device("opcua", POINTS, endpoint)], value_at)
    await simulator.start()
    try:
        yield simulator
    finally:
        await simulator.stop()


async def refused_quickly(session: OpcUaSession) -> BaseException:
    """``connect()`` fails with an exception of the Session contract, well within the limit."""
    loop = asyncio.get_running_loop()
    started = loop.time()
    try:
        with pytest.raises((OSError, ConvergeError)) as caught:
            await session.connect()
        assert not session.connected
        assert loop.time() - started < TIMEOUT_MS / 1000 + 1
        return caught.value
    finally:
        await session.close()


# --- the simulator's security -------------------------------------------------------------


@pytest.mark.parametrize(
    ("mode", "policy", "expected"),
    [
        ("None", "None", ua.SecurityPolicyType.NoSecurity),
        ("Sign", "Basic256Sha256", ua.SecurityPolicyType.Basic256Sha256_Sign),
        ("SignAndEncrypt", "Basic256Sha256", ua.SecurityPolicyType.Basic256Sha256_SignAndEncrypt),
        ("Sign", "Aes128_Sha256_RsaOaep", ua.SecurityPolicyType.Aes128Sha256RsaOaep_Sign),
        (
            "SignAndEncrypt",
            "Aes256_Sha256_RsaPss",
            ua.SecurityPolicyType.Aes256Sha256RsaPss_SignAndEncrypt,
        ),
    ],
)
def test_the_simulator_offers_the_endpoints_mode_and_policy(mode, policy, expected):
    assert security_policy_type({"security_mode": mode, "security_policy": policy}) is expected
    assert security_policy_type({}) is ua.SecurityPolicyType.NoSecurity


def test_a_mode_without_a_policy_or_a_missing_password_variable_is_an_error(monkeypatch):
    with pytest.raises(ConvergeError, match="cannot offer security_mode Sign"):
        security_policy_type({"security_mode": "Sign", "security_policy": "None"})
    monkeypatch.delenv(PASSWORD_ENV, raising=False)
    endpoint = secured_endpoint(4840)
    with pytest.raises(ConvergeError, match=PASSWORD_ENV):
        OpcUaSimulator([device("opcua", POINTS, endpoint)], value_at)


# --- sessions ---------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["SignAndEncrypt", "Sign"])
def test_secured_session_with_the_right_user_reads_good_values(monkeypatch, client_pki, mode):
    monkeypatch.setenv(PASSWORD_ENV, "s3cret")
    endpoint = secured_endpoint(free_port(), mode)

    async def test() -> None:
        async with serving(endpoint):
            plan = plan_for({**endpoint, **client_pki})
            session = OpcUaSession(plan)
            try:
                await session.connect()
                records = await session.read(plan.read_groups[0], datetime.now(UTC))
            finally:
                await session.close()
        assert all(isinstance(r, Reading) for r in records), records
        assert [(r.point, r.value, r.quality) for r in records if isinstance(r, Reading)] == [
            ("PT", 4.25, Quality.GOOD),
            ("COUNT", 7, Quality.GOOD),
        ]

    run(test())


def refused_password(
    monkeypatch: pytest.MonkeyPatch, client_pki: dict[str, str]
) -> tuple[dict[str, Any], BaseException]:
    """A secured endpoint, and the error of a session to it whose password the server refuses."""
    monkeypatch.setenv(PASSWORD_ENV, "s3cret")
    endpoint = secured_endpoint(free_port())

    async def connect() -> BaseException:
        async with serving(endpoint):
            monkeypatch.setenv(PASSWORD_ENV, "wrong")
            return await refused_quickly(OpcUaSession(plan_for({**endpoint, **client_pki})))

    return endpoint, run(connect())


def test_wrong_password_is_refused_cleanly(monkeypatch, client_pki):
    _, error = refused_password(monkeypatch, client_pki)
    assert isinstance(error, ConnectionError), error


def test_anonymous_session_is_refused_cleanly(monkeypatch, client_pki):
    monkeypatch.setenv(PASSWORD_ENV, "s3cret")
    endpoint = secured_endpoint(free_port())
    anonymous = {k: v for k, v in endpoint.items() if k not in ("username", "password_env")}

    async def test() -> None:
        async with serving(endpoint):
            error = await refused_quickly(OpcUaSession(plan_for({**anonymous, **client_pki})))
        assert isinstance(error, ConnectionError), error

    run(test())


def test_mode_none_against_a_secured_server_is_refused_cleanly(monkeypatch):
    monkeypatch.setenv(PASSWORD_ENV, "s3cret")
    endpoint = secured_endpoint(free_port())
    plain = {**endpoint, "security_mode": "None", "security_policy": "None"}

    async def test() -> None:
        async with serving(endpoint):
            error = await refused_quickly(OpcUaSession(plan_for(plain)))
        assert isinstance(error, ConnectionError), error  # no endpoint offers mode None

    run(test())


def test_a_client_without_certificate_is_a_converge_error(monkeypatch):
    monkeypatch.setenv(PASSWORD_ENV, "s3cret")
    endpoint = secured_endpoint(free_port())

    async def test() -> None:
        error = await refused_quickly(OpcUaSession(plan_for(endpoint)))
        assert isinstance(error, ConvergeError)
        assert "needs a certificate" in str(error)

    run(test())


def test_a_refused_password_is_one_line_naming_the_device_and_endpoint(monkeypatch, client_pki):
    endpoint, error = refused_password(monkeypatch, client_pki)
    device = plan_for(endpoint).device.id
    assert str(error).startswith(f"{device} at {endpoint['url']}: {CREDENTIALS} (")
    assert "\n" not in str(error)
