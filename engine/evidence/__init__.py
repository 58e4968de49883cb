"""Stage evidence: the collector's records batched, signed and stored, or spooled.

The pipeline's link between collection and the store, one module each:

- :mod:`~engine.evidence.batcher`: records cut into per-device, per-window
  batches as they arrive;
- :mod:`~engine.evidence.sink`: the collector sink that batches and signs,
  and hands sealed batches to the writer (a thread) or to the sealer process;
- :mod:`~engine.evidence.sealer`: the forked process that hashes, signs and
  stores closed windows on another core;
- :mod:`~engine.evidence.writer`: sealed batches into the store, or the spool
  while it is away; replays, the run's deferred start and stop, checkpoints;
- :mod:`~engine.evidence.deferred`: the audit entries of a run's start and
  stop, kept in the spool until the store takes them.

:func:`open_evidence` makes the sink of a run, with its start recorded.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from engine.audit import Actor
from engine.errors import StoreError
from engine.evidence.config import EvidenceConfig
from engine.evidence.deferred import Deferred
from engine.evidence.sink import EvidenceSink, check_signers
from engine.keys import KeyStore
from engine.plans.body import PlanBody
from engine.plans.signature import signature_name
from engine.sign.leaf import instant
from engine.store.site import Publishing, SiteStore
from engine.store.spool import DEFAULT_MAX_BYTES, Spool
from engine.store.store import Store


@dataclass(frozen=True)
class EvidenceTarget:
    """Where a run's evidence goes: the store, the spool beside the collector, the witness;
    and, for a site collector that publishes to the centre, who it is there (its store is then
    a :class:`~engine.store.site.SiteStore`, with the outbox)."""

    db: str
    spool: Path
    witness: Path
    max_spool_bytes: int = DEFAULT_MAX_BYTES
    publishing: Publishing | None = None


def open_evidence(
    plans: Sequence[PlanBody],
    plans_dir: Path,
    target: EvidenceTarget,
    keys: KeyStore,
    config: EvidenceConfig,
) -> EvidenceSink:
    """Make the sink, with the run's start (plans, key versions) recorded in the store.

    Must be called in the event loop that runs the collection. When the store
    does not answer, the start waits in the spool with the batches, and
    ``sink.store_error`` says why; but only if the spool knows where every
    device's chain ends (it was used before, for these devices): otherwise
    raises StoreError, as a chain started afresh could fork the store's.
    """
    check_signers(plans, keys, config.audit_key, datetime.now(UTC))  # before anything is written
    actor = Actor.job("collector")
    store = (
        Store.attach(target.db, actor, target.witness, config.audit_key)
        if target.publishing is None
        else SiteStore.attach_site(
            target.db, actor, target.publishing, target.witness, config.audit_key
        )
    )
    spool = Spool(target.spool, target.max_spool_bytes)
    try:
        error = _reach(store, spool, plans)
        started = {
            "plans": [p.digest for p in plans],
            "spool": str(target.spool),
            "checkpoint_s": config.checkpoint_s,
            "checkpoint_entries": config.checkpoint_entries,
        }
        start = Deferred(
            instant(datetime.now(UTC)),
            plans=tuple((p.data, _signature(plans_dir, p)) for p in plans),
            keys=tuple(v for name in keys.names() for v in keys.versions(name)),
            entries=(("collector.started", started),),
        )
        spool.defer(start.to_bytes())
        return EvidenceSink(
            plans, store, keys, spool, config=config, store_error=error, started=start.at
        )
    except BaseException:
        spool.close()
        store.close()
        raise


def _reach(store: Store, spool: Spool, plans: Iterable[PlanBody]) -> str | None:
    """Prepare the store; if it is away, say why, or raise unless the spool can carry the run."""
    try:
        store.prepare()
    except StoreError as exc:
        devices = sorted({p.device.id for p in plans})
        unknown = [device for device in devices if not spool.knows_chain(device)]
        if unknown:
            raise StoreError(
                f"{exc}; collection cannot start without the store: the spool {spool.path} "
                f"does not know where the chains of {', '.join(unknown)} end (it knows those "
                f"of the devices of runs that started with the store). Start again when the "
                f"store answers."
            ) from exc
        return str(exc)
    return None


def _signature(plans_dir: Path, plan: PlanBody) -> str | None:
    path = plans_dir / signature_name(plan.device.id)
    try:
        return path.read_text("utf-8")
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise StoreError(f"cannot read {path}: {exc.strerror}") from exc


__all__ = ["EvidenceConfig", "EvidenceSink", "EvidenceTarget", "open_evidence"]
