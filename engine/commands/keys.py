"""``converge keys``: generate, list, export and rotate signing keys."""

from __future__ import annotations

import json
from datetime import UTC, datetime

from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from rich.console import Console
from rich.markup import escape

from engine.keys import KeyStoreError, KeyVersion


def status(version: KeyVersion, now: datetime) -> str:
    """``current``, ``retired`` (ended by rotation or expiry) or ``not yet valid``, at ``now``."""
    if version.valid_at(now):
        return "current"
    return "not yet valid" if now < version.not_before else "retired"


def render_keys(
    console: Console, versions: list[KeyVersion], now: datetime, title: str | None = None
) -> None:
    """Two lines per version: name, version, status and validity; then both fingerprints,
    whole (a shortened fingerprint invites comparing only its first digits)."""
    if title:
        console.print(f"[bold]{escape(title)}[/]")
    if not versions:
        console.print("no keys")
    colour = {"current": "green", "retired": "yellow", "not yet valid": "cyan"}
    for v in versions:
        state = status(v, now)
        until = _moment(v.not_after) if v.not_after else "until rotated"
        console.print(
            f"{v.name} v{v.version}  [{colour[state]}]{state}[/]  valid"
            f" {_moment(v.not_before)} .. {until}",
            highlight=False,
        )
        console.print(f"  key id {v.key_id}  sha256 {v.sha256}", highlight=False)


def _moment(at: datetime) -> str:
    return at.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%SZ")


def export_public(versions: list[KeyVersion], form: str) -> str:
    """Every version's public key as ``signed-note`` verifier keys, ``pem`` or ``json``.

    Old versions are included on purpose: what they signed while valid must
    still verify, so a verifier needs them all.
    """
    if form == "json":
        return json.dumps([v.as_dict() for v in versions], indent=2) + "\n"
    if form == "pem":
        return "".join(
            v.key.public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo).decode()
            for v in versions
        )
    if form == "signed-note":
        return "".join(f"{v.verifier_key}\n" for v in versions)
    raise KeyStoreError(f"unknown public key format {form!r}: signed-note, pem or json")
