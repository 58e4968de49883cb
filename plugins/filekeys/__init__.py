"""Built-in encrypted file key store: answers :func:`~engine.hookspecs.converge_key_store`
for ``kind: file``.

Registered through the ``converge`` entry-point group as
``plugins.filekeys:plugin``, exactly as a third-party key store (HSM, cloud
KMS) would be. See ``docs/keys.md`` for the folder layout and passphrase rules.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from engine.hookspecs import hookimpl
from engine.keys import KeyStore
from plugins.filekeys.store import FileKeyStore

KIND = "file"


class FileKeysPlugin:
    """The hook implementation; the store itself is :class:`FileKeyStore`."""

    @hookimpl
    def converge_key_store(self, config: Mapping[str, Any]) -> KeyStore | None:
        if config.get("kind") != KIND:
            return None
        return FileKeyStore(Path(config.get("path", "keys")), passphrase=config.get("passphrase"))


plugin = FileKeysPlugin()
