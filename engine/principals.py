"""Principals: who people and services are, and which roles they hold, at run time.

Where principals come from is a plugin's business (hook
:func:`~engine.hookspecs.converge_principal_resolver`; a principals file is
built in, ``plugins/fileprincipals``; LDAP or OIDC can come as plugins). What
a principal *is* is decided here, once for every resolver: an
:class:`Identity` with its roles, printed name, the operating-system accounts
that may act as it and the TLS client certificates that authenticate as it.
Every access decision records the :attr:`PrincipalResolver.digest` of the
principals it was made with (docs/access.md).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import pluggy

from engine.errors import PluginError


@dataclass(frozen=True)
class Identity:
    """A principal as a resolver knows it now."""

    id: str
    kind: str
    """``person`` or ``service``."""
    roles: frozenset[str]
    name: str | None = None
    """The printed name, shown in electronic signatures and the audit trail."""
    os_users: tuple[str, ...] = ()
    """The only operating-system accounts that may act as it; empty: any."""
    certificates: tuple[str, ...] = ()
    """``sha256:<hex>`` fingerprints of the TLS client certificates that authenticate as it."""

    @property
    def printed_name(self) -> str:
        return self.name or self.id


@runtime_checkable
class PrincipalResolver(Protocol):
    """Where principals come from. Methods raise :class:`~engine.errors.ConvergeError` for
    users (a source that cannot be read, an input error)."""

    @property
    def digest(self) -> str:
        """``sha256:<hex>`` of what the answers were drawn from, for the record of a decision."""
        ...

    @property
    def source(self) -> str:
        """Where the principals come from, for people (a file name, a directory URL)."""
        ...

    def resolve(self, principal: str) -> Identity | None:
        """The principal ``principal``, or ``None`` when the source does not know it."""
        ...

    def by_certificate(self, fingerprint: str) -> Identity | None:
        """The principal a TLS client certificate (``sha256:<hex>``) authenticates, if any."""
        ...

    def identities(self) -> list[Identity]:
        """Every principal the source holds, sorted by id."""
        ...


def open_principals(pm: pluggy.PluginManager, config: Mapping[str, Any]) -> PrincipalResolver:
    """The resolver a plugin makes for ``config`` (``config["kind"]`` names it)."""
    resolver = pm.hook.converge_principal_resolver(config=config)
    kind = config.get("kind")
    if resolver is None:
        raise PluginError(f"no installed plugin resolves principals of kind {kind!r}")
    if not isinstance(resolver, PrincipalResolver):
        raise PluginError(f"the principal resolver of kind {kind!r} is no PrincipalResolver")
    return resolver
