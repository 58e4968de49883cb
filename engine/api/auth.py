"""Who calls the read API: a bearer token, or a TLS client certificate, mapped to a principal.

A bearer token (``Authorization: Bearer cvg1.…``, :mod:`engine.api.tokens`) names its
principal; a client certificate (``--client-ca``) names the principal whose entry lists its
SHA-256 fingerprint under ``certificates``. A token, when one is sent, decides; otherwise
the certificate. Either way the principal must be in the principals file as it is now:
the file and its tokens are read again whenever either changes on disk, so a principal
deleted from the file, or a token revoked, is refused from the next request on.

A caller that cannot be authenticated is still a :class:`Caller`: with the principal it
claimed (the token's, when the token is known) or :data:`UNKNOWN`, and why it is refused.
The guard denies it, the decision is an audit entry, and the answer is 401.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import pluggy

from engine.api.tokens import TokenFile, tokens_path
from engine.errors import ConvergeError, FindingsError
from engine.principals import Identity, PrincipalResolver, open_principals

UNKNOWN = "(unknown)"
"""The principal an audit entry names for a caller that claimed none the server knows."""


@dataclass(frozen=True)
class Caller:
    """Who a request comes from, as far as it could be authenticated."""

    principal: str
    identity: Identity | None
    refusal: str | None
    """Why the caller is not authenticated (``None``: it is, as ``identity``)."""
    principals: str
    """The digest of the principals file it was resolved with ("" when it does not load)."""
    via: Mapping[str, str] = field(default_factory=dict)
    """How the request came: its endpoint, the client's address, the credential used."""
    unavailable: bool = False
    """Refused because the principals file or its tokens do not load (503, not 401)."""


class Principals:
    """The principals file (through its resolver) and its tokens, read again on change."""

    def __init__(self, pm: pluggy.PluginManager, path: Path) -> None:
        self.pm, self.path, self.tokens_path = pm, path, tokens_path(path)
        self._lock = threading.Lock()
        self._stamp: tuple[object, ...] | None = None
        self._loaded: tuple[PrincipalResolver, TokenFile] | None = None

    def current(self) -> tuple[PrincipalResolver, TokenFile]:
        """The principals and tokens as the files are now; raises ConvergeError when they do
        not load (never the last good ones: a broken edit must not keep a deleted principal
        in)."""
        with self._lock:
            stamp = (_stamp(self.path), _stamp(self.tokens_path))
            if stamp != self._stamp or self._loaded is None:
                self._loaded, self._stamp = None, None
                resolver = open_principals(self.pm, {"kind": "file", "path": self.path})
                self._loaded, self._stamp = (resolver, TokenFile(self.tokens_path)), stamp
            return self._loaded


def _stamp(path: Path) -> tuple[int, int, int] | None:
    try:
        status = os.stat(path)
    except FileNotFoundError:
        return None
    return (status.st_ino, status.st_size, status.st_mtime_ns)


def authenticate(
    principals: Principals,
    authorization: str | None,
    certificate: str | None,
    via: Mapping[str, str],
) -> Caller:
    """The caller of a request with ``authorization`` (the header) and ``certificate`` (the
    ``sha256:<hex>`` fingerprint of the client certificate the TLS handshake verified)."""
    try:
        resolver, tokens = principals.current()
    except (ConvergeError, FindingsError) as exc:
        reason = f"the principals file {principals.path} does not load: {exc}"
        return Caller(UNKNOWN, None, reason, "", via, unavailable=True)
    principal, credential, problem = _credential(resolver, tokens, authorization, certificate)
    identity = resolver.resolve(principal) if principal and problem is None else None
    if problem is None and identity is None:
        problem = f"principal {principal} is no longer in the principals file"
    return Caller(
        principal or UNKNOWN, identity, problem, resolver.digest, {**via, "credential": credential}
    )


def _credential(
    resolver: PrincipalResolver,
    tokens: TokenFile,
    authorization: str | None,
    certificate: str | None,
) -> tuple[str | None, str, str | None]:
    """(the principal claimed, the credential as the audit entry names it, why it is refused)."""
    if authorization is not None:
        scheme, _, text = authorization.strip().partition(" ")
        if scheme.lower() != "bearer" or not text.strip():
            return None, "malformed", "the Authorization header is not 'Bearer TOKEN'"
        check = tokens.check(text.strip(), datetime.now(UTC))
        return check.principal, f"token {check.token or '(unknown)'}", check.problem
    if certificate is not None:
        found = resolver.by_certificate(certificate)
        problem = None if found else f"no principal lists the client certificate {certificate}"
        return (found.id if found else None), f"certificate {certificate}", problem
    return None, "none", "no credentials: send 'Authorization: Bearer TOKEN' or a certificate"
