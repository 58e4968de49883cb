"""Real asyncua servers that serve a site's OPC UA devices on their endpoints.

One :class:`asyncua.Server` per device, listening on the host and port of
the device's ``endpoint.url``, with one variable per point at the point's
NodeId (``ns=0`` points are the server's own nodes, such as ``i=2259``, and
are served as they are). Every 100 ms each variable is written with
``value_at(device, point, t)`` and a fresh source timestamp.

Faults act on the network listener, not on the address space: ``stop``
closes every connection and the listening socket, ``start`` listens again
on the same port with the same variables; ``delay`` holds every request of
the device that long before answering; ``bad-status`` writes its ``code``
(a number or a name such as ``BadSensorFailure``) with every value of the
device until a ``bad-status`` with code 0.

Security follows the endpoint: with ``security_mode`` ``Sign`` or
``SignAndEncrypt`` the server offers exactly that mode and
``security_policy``, with a self-signed certificate generated at start (kept
in memory; any client certificate is accepted). With ``username`` it accepts
only that user, with the password of the environment variable
``password_env`` (read when the simulator is made); anonymous sessions are refused.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import ipaddress
import logging
import math
import os
import socket
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC
from typing import TYPE_CHECKING, Any
from urllib.parse import urlparse

from asyncua import ua
from asyncua.common.utils import Buffer
from asyncua.crypto.cert_gen import (
    dump_private_key_as_pem,
    generate_private_key,
    generate_self_signed_app_certificate,
)
from asyncua.crypto.permission_rules import User, UserRole
from asyncua.server.binary_server_asyncio import BinaryServer, OPCUAProtocol
from asyncua.server.server import Server
from asyncua.server.user_managers import UserManager
from asyncua.ua.status_codes import StatusCodes
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import ExtendedKeyUsageOID

from engine.errors import ConvergeError
from engine.model import Device
from engine.protocols import Fault, ValueAt
from engine.records import Value
from plugins.reach import cannot_serve, quiet

if TYPE_CHECKING:
    from asyncua.server.internal_server import InternalServer

_logger = logging.getLogger(__name__)

TICK_S = 0.1
"""How often every simulated variable gets a new value."""

DEFAULT_PORT = 4840


class _DelayedProtocol(OPCUAProtocol):
    """One client connection whose every request waits ``delay()`` seconds first."""

    def __init__(self, delay: Callable[[], float], *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._delay = delay

    async def _process_one_msg(self, header: Any, buf: Buffer) -> bool:
        seconds = self._delay()
        if seconds > 0:
            await asyncio.sleep(seconds)
        return await super()._process_one_msg(header, buf)


class _Listener(BinaryServer):
    """asyncua's TCP listener, with connections that honour the ``delay`` fault."""

    def __init__(self, old: BinaryServer, delay: Callable[[], float]) -> None:
        super().__init__(old.iserver, old.hostname, old.port, old.limits)
        self.set_policies(old._policies)
        self._delay = delay

    def _make_protocol(self) -> OPCUAProtocol:
        return _DelayedProtocol(
            self._delay,
            iserver=self.iserver,
            policies=self._policies,
            clients=self.clients,
            closing_tasks=self.closing_tasks,
            limits=self.limits,
        )


class _OneUser(UserManager):
    """Accepts one user name with one password (any password when ``password`` is None)."""

    def __init__(self, username: str, password: str | None) -> None:
        self._username = username
        self._password = password

    def get_user(
        self,
        iserver: InternalServer,
        username: str | None = None,
        password: str | None = None,
        certificate: Any = None,
    ) -> User | None:
        if username != self._username:
            return None
        if self._password is not None and not hmac.compare_digest(
            (password or "").encode(), self._password.encode()
        ):
            return None
        return User(role=UserRole.User, name=username)


def security_policy_type(endpoint: Mapping[str, Any]) -> ua.SecurityPolicyType:
    """The one security policy a device's endpoint asks for (``NoSecurity`` for mode None)."""
    mode = str(endpoint.get("security_mode", "None"))
    policy = str(endpoint.get("security_policy", "None"))
    if mode == "None" and policy == "None":
        return ua.SecurityPolicyType.NoSecurity
    name = f"{policy.replace('_', '')}_{mode}"
    try:
        return ua.SecurityPolicyType[name]
    except KeyError:
        raise ConvergeError(
            f"the OPC UA simulator cannot offer security_mode {mode} with security_policy {policy}"
        ) from None


def server_certificate(application_uri: str, host: str) -> tuple[bytes, bytes]:
    """A self-signed server certificate (DER) and its private key (PEM) for ``host``."""
    key = generate_private_key()
    names: list[x509.GeneralName] = [x509.UniformResourceIdentifier(application_uri)]
    try:
        names.append(x509.IPAddress(ipaddress.ip_address(host)))
    except ValueError:
        names.append(x509.DNSName(host))
    names.append(x509.DNSName(socket.gethostname()))  # asyncua warns without it
    certificate = generate_self_signed_app_certificate(
        key,
        "Converge simulator",
        {},
        names,
        extended=[ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH],
        days=2,
    )
    return certificate.public_bytes(Encoding.DER), dump_private_key_as_pem(key)


def _user_manager(device: Device) -> _OneUser | None:
    """The one user the device's endpoint names, with the password of ``password_env``."""
    username = device.endpoint.get("username")
    if not username:
        return None
    password_env = device.endpoint.get("password_env")
    password = None
    if password_env:
        password = os.environ.get(str(password_env))
        if password is None:
            raise ConvergeError(
                f"{device.id}: the environment variable {password_env} (password_env) is not set"
            )
    return _OneUser(str(username), password)


class _DeviceServer:
    """The server of one device, its variables and its fault state."""

    def __init__(self, device: Device) -> None:
        self.device = device
        self.policy = security_policy_type(device.endpoint)
        self.users = _user_manager(device)
        self.server = Server()
        self.variables: dict[str, tuple[ua.NodeId, ua.VariantType]] = {}
        self.status = ua.StatusCode()
        self.delay_s = 0.0
        self.listening = False
        self._listener: _Listener | None = None

    async def start(self, value_at: ValueAt) -> None:
        await self.server.init()
        url = _with_port(str(self.device.endpoint["url"]))
        self.server.set_endpoint(url)
        self.server.set_server_name(f"Converge simulator: {self.device.id}")
        await self._secure(urlparse(url).hostname or "localhost")
        await self._add_variables(value_at)
        try:
            with quiet("asyncua.server.server"):  # it logs a traceback; the error says it all
                await self.server.start()
        except OSError as error:
            parts = urlparse(url)
            host, port = parts.hostname or "localhost", parts.port or DEFAULT_PORT
            what, where = f"{self.device.id} (opcua)", f"opc.tcp://{host}:{port}"
            raise cannot_serve(what, where, host, port, error) from error
        await self._replace_listener()

    async def _secure(self, host: str) -> None:
        """Offer exactly the endpoint's security, and accept only its user if it names one."""
        self.server.set_security_policy([self.policy])
        if self.policy is not ua.SecurityPolicyType.NoSecurity:
            cert, key = server_certificate(self.server.get_application_uri(), host)
            await self.server.load_certificate(cert, format="der")
            await self.server.load_private_key(key, format="pem")
        if self.users is not None:
            self.server.iserver.set_user_manager(self.users)
            self.server.set_identity_tokens([ua.UserNameIdentityToken])

    async def _add_variables(self, value_at: ValueAt) -> None:
        points = self.device.points
        node_ids = {p.name: ua.NodeId.from_string(str(p.address["node"])) for p in points}
        highest = max((n.NamespaceIndex for n in node_ids.values()), default=0)
        await self._register_namespaces(highest)
        for name, node_id in node_ids.items():
            if node_id.NamespaceIndex == 0:
                continue
            variant = _variant(value_at(self.device.id, name, 0.0), None)
            name_ = ua.QualifiedName(name, node_id.NamespaceIndex)
            await self.server.nodes.objects.add_variable(node_id, name_, variant)
            self.variables[name] = (node_id, variant.VariantType)

    async def _register_namespaces(self, highest: int) -> None:
        """Register namespaces until index ``highest`` exists (index 1 is the server's own)."""
        count = len(await self.server.get_namespace_array())
        for index in range(count, highest + 1):
            await self.server.register_namespace(f"urn:converge:simulator:{self.device.id}:{index}")

    async def _replace_listener(self) -> None:
        """Swap asyncua's listener for one whose connections can be delayed."""
        old = self.server.bserver
        if old is None:
            raise ConvergeError(f"{self.device.id}: the OPC UA server did not start listening")
        await old.stop()
        self._listener = _Listener(old, lambda: self.delay_s)
        self.server.bserver = self._listener
        await self.listen()

    async def listen(self) -> None:
        if self._listener is not None and not self.listening:
            await self._listener.start()
            self.listening = True

    async def hang_up(self) -> None:
        """Close every connection and the listening socket; the variables stay."""
        if self._listener is not None and self.listening:
            self.listening = False
            await self._listener.stop()

    async def update(self, value_at: ValueAt, t: float) -> None:
        stamp = ua.DateTime.now(UTC)
        for name, (node_id, variant_type) in self.variables.items():
            variant = _variant(value_at(self.device.id, name, t), variant_type)
            data = ua.DataValue(variant, self.status, SourceTimestamp=stamp, ServerTimestamp=stamp)
            await self.server.write_attribute_value(node_id, data)

    async def stop(self) -> None:
        with contextlib.suppress(Exception):
            await self.server.stop()
        self.listening = False


def _with_port(url: str) -> str:
    """The url with the default port written out, so that the server binds to it."""
    parts = urlparse(url)
    if parts.port is not None:
        return url
    return parts._replace(netloc=f"{parts.netloc}:{DEFAULT_PORT}").geturl()


def _variant(value: Value, variant_type: ua.VariantType | None) -> ua.Variant:
    """The value as a variant of the variable's type (fixed by the first value).

    A ``None`` keeps the variable's type with a zero value: asyncua compares
    values for deadbands, and a null variant would break that comparison.
    """
    if variant_type is None:
        variant_type = _TYPES.get(type(value), ua.VariantType.Double)
    if value is None:
        value = _ZEROS.get(variant_type, 0.0)
    elif variant_type is ua.VariantType.Double and isinstance(value, int | float):
        value = float(value)
    return ua.Variant(value, variant_type)


_TYPES: dict[type, ua.VariantType] = {
    bool: ua.VariantType.Boolean,
    int: ua.VariantType.Int64,
    float: ua.VariantType.Double,
    str: ua.VariantType.String,
}
_ZEROS: dict[ua.VariantType, Value] = {
    ua.VariantType.Boolean: False,
    ua.VariantType.Int64: 0,
    ua.VariantType.String: "",
}


def status_code(code: Any) -> ua.StatusCode:
    """A ``bad-status`` fault's code: a number, or a name such as ``BadSensorFailure``."""
    if isinstance(code, str) and not code.isdigit():
        number = getattr(StatusCodes, code, None)
        if not isinstance(number, int):
            raise ConvergeError(f"bad-status: '{code}' is not an OPC UA status code name")
        return ua.StatusCode(ua.UInt32(number))
    return ua.StatusCode(ua.UInt32(int(code)))


class OpcUaSimulator:
    """Real OPC UA servers for some devices (:class:`engine.protocols.Simulator`)."""

    def __init__(self, devices: Sequence[Device], value_at: ValueAt) -> None:
        self._servers = {d.id: _DeviceServer(d) for d in devices}
        self._value_at = value_at
        self._ticker: asyncio.Task[None] | None = None
        _check_endpoints(devices)

    async def start(self) -> None:
        """Start every device's server, then the task that updates their values."""
        if self._ticker is not None:
            return
        try:
            for server in self._servers.values():
                await server.start(self._value_at)
        except BaseException:
            await self.stop()  # the servers started before the one that failed
            raise
        self._ticker = asyncio.create_task(self._tick())

    async def _tick(self) -> None:
        loop = asyncio.get_running_loop()
        started = loop.time()
        while True:
            t = loop.time() - started
            for server in self._servers.values():
                try:
                    await server.update(self._value_at, t)
                except Exception:
                    _logger.exception("cannot update the points of %s", server.device.id)
            await asyncio.sleep(TICK_S - (loop.time() - started - t) % TICK_S)

    async def inject(self, fault: Fault) -> None:
        server = self._servers.get(fault.device)
        if server is None:
            raise ConvergeError(f"fault for '{fault.device}', which this simulator does not serve")
        if fault.kind == "stop":
            await server.hang_up()
        elif fault.kind == "start":
            await server.listen()
        elif fault.kind == "bad-status":
            server.status = status_code(fault.params.get("code", 0))
        elif fault.kind == "delay":
            seconds = float(fault.params.get("seconds", 0))
            if not math.isfinite(seconds) or seconds < 0:
                raise ConvergeError(f"delay: seconds must be 0 or more, not {seconds}")
            server.delay_s = seconds
        else:
            raise ConvergeError(f"the OPC UA simulator has no fault '{fault.kind}'")

    async def stop(self) -> None:
        """Stop updating and stop every server, all at once (each takes about a second)."""
        ticker, self._ticker = self._ticker, None
        if ticker is not None:
            ticker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await ticker
        await asyncio.gather(*(s.stop() for s in self._servers.values()))


def _check_endpoints(devices: Sequence[Device]) -> None:
    """Two devices cannot listen on one port."""
    seen: dict[tuple[str, int], str] = {}
    for device in devices:
        url = urlparse(str(device.endpoint["url"]))
        key = (url.hostname or "", url.port or DEFAULT_PORT)
        if key in seen:
            raise ConvergeError(
                f"devices '{seen[key]}' and '{device.id}' both use {key[0]}:{key[1]}"
            )
        seen[key] = device.id
