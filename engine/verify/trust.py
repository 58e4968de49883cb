"""Trust: the public keys an auditor trusts, and the stored times their validity is judged at."""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from engine.errors import ConvergeError, VerificationError
from engine.keys import KeyStore, KeyVersion


@dataclass(frozen=True)
class Trust:
    """The public keys an auditor trusts: every version of each named key, and (for a central
    store, whose sites share key names) the keys trusted for one site's plans and batches only."""

    keys: Mapping[str, Sequence[KeyVersion]]
    sites: Mapping[str, Mapping[str, Sequence[KeyVersion]]] = field(default_factory=dict)

    @classmethod
    def from_key_store(cls, store: KeyStore) -> Trust:
        return cls({name: store.versions(name) for name in store.names()})

    @classmethod
    def from_json(cls, files: Sequence[Path]) -> Trust:
        """Files written by ``converge keys export-public NAME --format json``. One version of
        a name given twice must be one key: two sites' keys of one name are not merged (either
        would then verify what the other signed)."""
        keys: dict[str, dict[int, KeyVersion]] = defaultdict(dict)
        for path in files:
            try:
                listed = [
                    KeyVersion.from_dict(item) for item in json.loads(path.read_text("utf-8"))
                ]
            except (OSError, ValueError, KeyError, TypeError) as exc:
                raise ConvergeError(f"{path}: not a public key export ({exc})") from exc
            for version in listed:
                known = keys[version.name].setdefault(version.version, version)
                if known.public_key != version.public_key:
                    raise ConvergeError(
                        f"{path}: version {version.version} of key {version.name} is another key"
                        " than the one an earlier file gives: keys of several sites that share"
                        " names are given with --site-trust DIR, one folder per site"
                    )
                if _ends_sooner(version, known):  # an export made after the version retired
                    keys[version.name][version.version] = version
        return cls({name: list(versions.values()) for name, versions in keys.items()})

    def of_site(self, site: str) -> Trust:
        """The keys that judge ``site``'s plans and batches: its own, beside the shared ones."""
        if not self.sites:
            return self
        return Trust({**self.keys, **self.sites.get(site, {})})

    def versions(self) -> list[KeyVersion]:
        return [v for versions in self.keys.values() for v in versions]


def _ends_sooner(version: KeyVersion, than: KeyVersion) -> bool:
    """Of two exports of one key version, the one whose validity ends first is the newer
    word: a version an older export calls current may have been retired since."""
    if version.not_after is None:
        return False
    return than.not_after is None or version.not_after < than.not_after


class BadTime(VerificationError):
    """A stored time that is not an instant with a time zone."""


def instant(text: str) -> datetime:
    """A stored time as an aware datetime, to judge a key version's validity at; raises
    BadTime for anything else."""
    try:
        moment = datetime.fromisoformat(text)
    except (TypeError, ValueError):
        raise BadTime(f"time {text!r} is not an instant") from None
    if moment.tzinfo is None:
        raise BadTime(f"time {text!r} has no time zone")
    return moment
