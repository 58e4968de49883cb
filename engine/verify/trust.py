"""Trust: the public keys an auditor trusts, and the stored times their validity is judged at."""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from engine.errors import ConvergeError, VerificationError
from engine.keys import KeyStore, KeyVersion


@dataclass(frozen=True)
class Trust:
    """The public keys an auditor trusts: every version of each named key."""

    keys: Mapping[str, Sequence[KeyVersion]]

    @classmethod
    def from_key_store(cls, store: KeyStore) -> Trust:
        return cls({name: store.versions(name) for name in store.names()})

    @classmethod
    def from_json(cls, files: Sequence[Path]) -> Trust:
        """Files written by ``converge keys export-public NAME --format json``."""
        keys: dict[str, list[KeyVersion]] = defaultdict(list)
        for path in files:
            try:
                listed = json.loads(path.read_text("utf-8"))
                for item in listed:
                    keys[item["name"]].append(KeyVersion.from_dict(item))
            except (OSError, ValueError, KeyError, TypeError) as exc:
                raise ConvergeError(f"{path}: not a public key export ({exc})") from exc
        return cls(dict(keys))

    def versions(self) -> list[KeyVersion]:
        return [v for versions in self.keys.values() for v in versions]


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
