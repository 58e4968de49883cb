"""Stage export: an auditor's bundle of the evidence, and the one-file verifier shipped in it.

- :mod:`~engine.export.bundle`: gathers what a bundle holds and writes the zip;
- :mod:`~engine.export.verifier`: checks a bundle offline with nothing but the
  standard library and ``cryptography``; ``converge verify`` runs it, and every
  bundle carries it as ``verify.py``.

:func:`export` is the whole job: the guard decides the export (``access.export``
grants only; the decision is an audit entry), a checkpoint signed by the log's
key covers that decision, then the bundle is gathered, described by a manifest
and signed by the same key. docs/bundle.md specifies every member.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import nullcontext
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import partial
from importlib.metadata import version
from pathlib import Path
from typing import Any, Protocol

from engine import audit
from engine.access import Range, record
from engine.access.guard import Decision, PointDecision, Rule
from engine.access.guard import Request as GuardRequest
from engine.audit import os_user, seal_with
from engine.errors import AccessDenied
from engine.export import bundle, verifier
from engine.heap import collector_paused
from engine.keys import KeyStore
from engine.report import Readings
from engine.sign.leaf import instant
from engine.sign.note import sign_note
from engine.store import reads
from engine.store.store import Store


class Report(Protocol):
    """Renders the bundle's ``report.html`` for an export decision; ``counted``: the readings of
    the batches the export read whole, by id, which it need not read again; ``controls``: each
    policy's controls, when its target reads them (:attr:`Target.controls`)."""

    def __call__(
        self,
        store: Store,
        decision: Decision,
        *,
        counted: Mapping[int, Readings],
        controls: Mapping[str, Sequence[str]] | None = None,
    ) -> bytes: ...


Controls = Callable[[Mapping[str, bytes]], Mapping[str, Sequence[str]]]
"""Each policy's controls, read from source files (path: bytes)."""


@dataclass(frozen=True)
class Exported:
    """What an export wrote: the decision, how many records and batches, where; and which
    sources of its plans it left out, and why."""

    decision: Decision
    records: int
    batches: int
    path: Path
    left_out: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class Target:
    """Where a bundle goes, how its report is made, which keys its trust file says sign
    plans, the folder the plans' source files are read under, and whether worker processes
    may read its records."""

    out: Path
    report: Report
    plan_keys: tuple[str, ...] = ()
    sources: Path = Path(".")
    parallel: bool = False
    """Whether worker processes may read a large export's records (forked: only in a process
    of its own, never a collector's); the cyclic garbage collector is then paused while it
    writes (:func:`_write`)."""
    controls: Controls | None = None
    """Reads the policies' controls from the source files the bundle carries, for its report
    (the export itself reads no policy file)."""


def export(store: Store, decision: Decision, span: Range, keys: KeyStore, to: Target) -> Exported:
    """Record ``decision``, and when it allows anything, write its bundle to ``to.out``."""
    record(store, decision)
    if not decision.allowed:
        raise AccessDenied(_refusals(decision))
    return _write(store, decision, span, keys, to)


def _write(
    store: Store,
    decision: Decision,
    span: Range,
    keys: KeyStore,
    to: Target,
    *,
    only: Mapping[int, frozenset[int]] | None = None,
) -> Exported:
    """Sign a checkpoint covering the decision's entry, then gather and write the bundle; in a
    process of its own (``to.parallel``), the cyclic garbage collector paused: an export
    allocates an object or more per record and frees each by reference counting, and the
    collector's passes over the heap of the process exporting (a benchmark's had just built
    its store) cost a tenth of its time. (A collector's archives leave its collector be.)"""
    with collector_paused() if to.parallel else nullcontext():
        return _written(store, decision, span, keys, to, only=only)


def _written(
    store: Store,
    decision: Decision,
    span: Range,
    keys: KeyStore,
    to: Target,
    *,
    only: Mapping[int, frozenset[int]] | None,
) -> Exported:
    seal = seal_with(keys, store.audit_key, datetime.now(UTC))
    store.checkpoint(seal)
    with store.reading(snapshot=True) as conn:
        origin = reads.meta(conn, audit.ORIGIN_KEY) or ""
        size = max(row.size for row in reads.checkpoints(conn))
        asked = bundle.Request(
            decision,
            span,
            origin,
            store.audit_key,
            _public(keys),
            to.plan_keys,
            only=only,
            sources=to.sources,
            parallel=to.parallel,
        )
        gathered = bundle.gather(conn, asked, size)
    report = to.report
    if to.controls is not None:
        carried = {path: gathered.members[verifier.SOURCES + path] for path in gathered.sources}
        report = partial(to.report, controls=to.controls(carried))
    files, packed = _completed(store, decision, gathered, report)
    about = _about(decision, span, origin, store.audit_key)
    said = bundle.manifest(gathered, about | ({"archive": True} if only is not None else {}), files)
    note = _sign_manifest(said, origin, keys, store.audit_key)
    members = {**gathered.members, verifier.MANIFEST: said, verifier.SIGNATURE: note}
    bundle.write_zip(to.out, members, packed, gathered.parts)
    records, batches = gathered.records, len(gathered.batches)
    return Exported(decision, records, batches, to.out, tuple(gathered.left_out))


def _completed(
    store: Store, decision: Decision, gathered: bundle.Gathered, report: Report
) -> tuple[dict[str, str], dict[str, bundle.Packed]]:
    """Add the report and ``verify.py`` to the gathered members; every member's digest, and
    the gathered ones deflated (but the records: they were, as they were gathered). Those are
    hashed and deflated on two other threads while the report is made (hashlib and zlib let
    go of the GIL: the other CPU does it)."""
    members = dict(gathered.members)
    with ThreadPoolExecutor(2) as helpers:
        hashed = helpers.submit(bundle.digests, members)
        packed = helpers.submit(bundle.pack, members)
        made = {
            "report.html": report(store, decision, counted=gathered.counted),
            verifier.VERIFIER: Path(verifier.__file__).read_bytes(),
        }
        files = hashed.result() | bundle.digests(made)
        files |= {name: part.digest() for name, part in gathered.parts.items()}
    gathered.members.update(made)
    return files, packed.result()


@dataclass(frozen=True)
class Archive:
    """What a retention run archives before deleting it: these positions of these batches,
    of these points, in this range; its ``retention.archived`` entry names it by ``id``."""

    id: str
    actor: str
    points: tuple[tuple[str, str], ...]
    span: Range
    positions: Mapping[int, frozenset[int]]


def archive(store: Store, keys: KeyStore, asked: Archive, to: Target) -> Exported:
    """Write an archive: a bundle of exactly ``asked``'s records, whose manifest names its
    ``retention.archived`` entry (already logged, its ``decision`` being ``asked.id``) as its
    decision, and says ``"archive": true``.
    No guard decides it: the plans' ``on_expiry: archive`` does, and the entry records it."""
    allowed = Rule("allow", "retention.on_expiry archive")
    decision = Decision(
        GuardRequest(asked.actor, None, os_user(), "export", ()),
        tuple(PointDecision(d, p, True, (allowed,)) for d, p in asked.points),
        id=asked.id,
    )
    return _write(store, decision, asked.span, keys, to, only=asked.positions)


def _refusals(decision: Decision) -> str:
    return (
        f"{decision.request.principal} may export nothing asked ({decision.refusals()};"
        f" decision {decision.id})"
    )


def _public(keys: KeyStore) -> list[Any]:
    return [v for name in keys.names() for v in keys.versions(name)]


def _about(decision: Decision, span: Range, origin: str, audit_key: str) -> dict[str, Any]:
    """What the manifest says of the export itself."""
    return {
        "principal": decision.request.principal,
        "decision": decision.id,
        "from": span.start,
        "to": span.end,
        "points": [f"{p.device}/{p.point}" for p in decision.allowed],
        "refused": [f"{p.device}/{p.point}" for p in decision.denied],
        "exported_at": instant(decision.at),
        "converge": version("converge"),
        "origin": origin,
        "audit_key": audit_key,
    }


def _sign_manifest(manifest: bytes, origin: str, keys: KeyStore, audit_key: str) -> bytes:
    """``manifest.sig``: a C2SP signed note by the log's key under the log's origin, whose text
    names the format, the origin, the manifest's SHA-256 and when it was signed."""
    seal = seal_with(keys, audit_key, datetime.now(UTC))
    text = (f"{verifier.FORMAT}\n{origin}\nsha256:{hashlib.sha256(manifest).hexdigest()}"
            f"\n{audit.time_line(seal.at)}\n")  # fmt: skip
    return sign_note(text, origin, keys.signer(audit_key, seal.at)).encode()


__all__ = ["Archive", "Exported", "Report", "Target", "archive", "export"]
