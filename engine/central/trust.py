"""The sites a centre takes messages from, and the public keys each one signs with.

``converge ingest --trust DIR`` names a folder with one folder per site,
named by its site id, holding that site's public key exports (``converge keys
export-public NAME --format json``, one file per key): the keys that sign its
batches and plans, and its audit key. A site's messages are judged by its own
keys only, so two sites may use the same key names (policies name keys, and
sites share policies). A message for a site without a folder is refused.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from engine.errors import ConvergeError
from engine.store.wire import MalformedMessage, check_name
from engine.verify.trust import Trust


@dataclass(frozen=True)
class SiteTrust:
    """Each known site's trusted keys."""

    sites: Mapping[str, Trust]

    @classmethod
    def from_folder(cls, folder: Path) -> SiteTrust:
        """One site per subfolder of ``folder``, its ``*.json`` key exports trusted."""
        if not folder.is_dir():
            raise ConvergeError(
                f"--trust {folder}: not a folder (one folder of key exports a site)"
            )
        sites: dict[str, Trust] = {}
        for site in sorted(p for p in folder.iterdir() if p.is_dir()):
            try:
                check_name(site.name, "site")
            except MalformedMessage as exc:
                raise ConvergeError(f"--trust {folder}: {exc}") from exc
            exports = sorted(site.glob("*.json"))
            if exports:
                sites[site.name] = Trust.from_json(exports)
        if not sites:
            raise ConvergeError(f"--trust {folder}: no site folder with key exports in it")
        return cls(sites)
