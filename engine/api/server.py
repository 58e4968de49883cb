"""The read API's HTTP server: uvicorn, plain or TLS, client certificates optional.

uvicorn gives an application no view of the TLS connection, so the server's HTTP protocol
is uvicorn's h11 protocol with one addition: when a connection is made, the SHA-256
fingerprint of the client certificate the handshake verified (``--client-ca``) goes into
the state of every request on that connection (:data:`CERTIFICATE`), where
:mod:`engine.api.auth` looks for it.
"""

from __future__ import annotations

import asyncio
import hashlib
import socket
import ssl
from dataclasses import dataclass
from pathlib import Path

import uvicorn
from fastapi import FastAPI
from uvicorn.protocols.http.h11_impl import H11Protocol

CERTIFICATE = "converge.client_certificate"
"""The request state key of the client certificate's ``sha256:<hex>`` fingerprint."""


@dataclass(frozen=True)
class Tls:
    """The server's certificate and key, and the CA that client certificates must chain to
    (``None``: clients authenticate by token only)."""

    cert: Path
    key: Path
    client_ca: Path | None = None


class CertifiedH11(H11Protocol):
    """uvicorn's h11 protocol, handing the verified client certificate to the application."""

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        tls = transport.get_extra_info("ssl_object")
        der = tls.getpeercert(binary_form=True) if tls is not None else None
        if der:
            fingerprint = "sha256:" + hashlib.sha256(der).hexdigest()
            self.app_state = {**self.app_state, CERTIFICATE: fingerprint}


def make_server(app: FastAPI, tls: Tls | None = None) -> uvicorn.Server:
    """A server for ``app``; run it on a bound socket (:func:`bind`)."""
    config = uvicorn.Config(
        app,
        http=CertifiedH11,
        lifespan="off",
        log_level="warning",
        access_log=False,
        server_header=False,
        ssl_certfile=str(tls.cert) if tls else None,
        ssl_keyfile=str(tls.key) if tls else None,
        ssl_ca_certs=str(tls.client_ca) if tls and tls.client_ca else None,
        ssl_cert_reqs=ssl.CERT_OPTIONAL if tls and tls.client_ca else ssl.CERT_NONE,
    )
    return uvicorn.Server(config)


def bind(host: str, port: int) -> socket.socket:
    """A listening TCP socket on ``host``:``port`` (0: a free port), IPv4 or IPv6."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError:
        sock.close()
        raise
    sock.listen(128)
    return sock
