"""Public key exports, as a site or the centre hands them to whoever must trust its keys."""

from __future__ import annotations

import json
from pathlib import Path

from engine.keys import KeyStore


def export(keys: KeyStore, folder: Path) -> list[Path]:
    """Each key's public versions as ``converge keys export-public --format json`` writes them."""
    folder.mkdir(parents=True, exist_ok=True)
    files = []
    for name in keys.names():
        path = folder / f"{name}.json"
        path.write_text(json.dumps([v.as_dict() for v in keys.versions(name)]))
        files.append(path)
    return files
