"""Built-in principals file: answers :func:`~engine.hookspecs.converge_principal_resolver`
for ``kind: file``.

Registered through the ``converge`` entry-point group as
``plugins.fileprincipals:plugin``, exactly as an LDAP or OIDC resolver would
be. The file is the principals file of docs/policy-language.md, read and
checked by the compiler's own loader and validator, so a mistake in it is a
finding at its ``path:line:col`` (``converge check`` reports the same).
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from engine.compile.load import load_text
from engine.compile.validate import check_principals
from engine.errors import ConvergeError, FindingsError, has_errors
from engine.hookspecs import hookimpl
from engine.principals import Identity, PrincipalResolver

KIND = "file"


class PrincipalsFile:
    """Every principal of one file, read once; its digest is the SHA-256 of the file's bytes."""

    def __init__(self, path: Path) -> None:
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise ConvergeError(f"cannot read the principals file {path}: {exc.strerror}") from exc
        self._source = str(path)
        self._digest = "sha256:" + hashlib.sha256(data).hexdigest()
        principals, findings = check_principals(load_text(data, str(path)))
        if has_errors(findings):
            raise FindingsError(findings)
        self._by_id = {
            p.id: Identity(p.id, p.kind, frozenset(p.roles), p.name, p.os_users, p.certificates)
            for p in principals
        }

    @property
    def digest(self) -> str:
        return self._digest

    @property
    def source(self) -> str:
        return self._source

    def resolve(self, principal: str) -> Identity | None:
        return self._by_id.get(principal)

    def by_certificate(self, fingerprint: str) -> Identity | None:
        return next((i for i in self._by_id.values() if fingerprint in i.certificates), None)

    def identities(self) -> list[Identity]:
        return [self._by_id[key] for key in sorted(self._by_id)]


class FilePrincipalsPlugin:
    @hookimpl
    def converge_principal_resolver(self, config: Mapping[str, Any]) -> PrincipalResolver | None:
        if config.get("kind") != KIND:
            return None
        return PrincipalsFile(Path(config["path"]))


plugin = FilePrincipalsPlugin()
