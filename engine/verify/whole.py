"""The whole store checked: every check of this package, in order (see the package).

Nothing here decides: each check is its module's; this runs them on one read of the
store and gathers their problems in one :class:`~engine.verify.report.Report`.
"""

from __future__ import annotations

from collections.abc import Collection, MutableMapping
from pathlib import Path

from engine import audit
from engine.audit import DEFAULT_AUDIT_KEY
from engine.sign.merkle import MerkleLog
from engine.store import reads
from engine.store.store import Store
from engine.verify.archives import check_archives
from engine.verify.batches import BatchInfo, check_batches, check_chains
from engine.verify.central import check_quarantine, check_witnessed
from engine.verify.checkpoints import LogKey, check_checkpoints, check_log_key, check_witness
from engine.verify.cosigned import check_cosignatures
from engine.verify.log import check_log
from engine.verify.plans import PlanTrust, check_plans
from engine.verify.records import Progress, check_records
from engine.verify.report import Report
from engine.verify.retention import HoldBook, Known, check_kept, check_retention
from engine.verify.tail import check_tail
from engine.verify.trust import Trust


def verify_store(
    store: Store,
    trust: Trust,
    *,
    witness: Path | None = None,
    progress: Progress | None = None,
    workers: int | None = None,
    audit_key: str = DEFAULT_AUDIT_KEY,
    plan_key: str | None = None,
    cosigned_by: Trust | None = None,
    records_of: Collection[int] | None = None,
    signatures_of: Collection[int] | None = None,
    digests: MutableMapping[int, bytes] | None = None,
    holds: HoldBook | None = None,
    archives: Path | None = None,
    statements: MutableMapping[int, BatchInfo] | None = None,
) -> Report:
    """Check everything in ``store`` against ``trust`` (and the ``witness`` file, if given);
    the log's checkpoints under ``audit_key`` only, plans' signatures under ``plan_key`` when
    given; the centre's cosignatures of the log by the witness key of ``cosigned_by`` when
    given.

    ``workers``: how many processes hash the records (None: one per CPU for a
    store of at least :data:`~engine.verify.records.PARALLEL_RECORDS` records,
    else this one alone).

    ``records_of``: rehash the records of only these batches, and look for no findings (data
    kept too long); ``signatures_of``: verify the signatures (Ed25519) of only these;
    everything else is checked whole. A retention run's check before it deletes gives both
    (:mod:`engine.retention.run` says why that is enough). ``digests``, when given, is
    filled with the digest of the records hashed of each batch no receipt deleted records of
    (:func:`~engine.verify.records.records_digest`): what the run compares the records it
    deletes with. ``holds``, when given, is filled with the holds as the verified log states
    them, and the log's compact state: what the run decides by. ``archives``, when given, is
    the folder the retention runs wrote their archives to: each archive a receipt relied on
    must be there as its entry signed it. ``statements``, when given with ``signatures_of``,
    is filled with each of those batches as its verified statement says (its signatures
    verified).
    """
    report = Report()
    with store.reading() as conn:
        log = check_log(conn, report)
        key = LogKey(audit_key, trust.keys.get(audit_key, ()), reads.meta(conn, audit.ORIGIN_KEY))
        check_log_key(log, key, report)
        good = check_checkpoints(conn, log, key, report)
        check_tail(log, good, report)
        if witness is not None:
            check_witness(conn, witness, log, key, report)
        plans = check_plans(conn, log, PlanTrust(trust, plan_key), report)
        only = None if records_of is None else frozenset(records_of)
        signed = None if signatures_of is None else frozenset(signatures_of)
        batches = check_batches(conn, log, plans, trust, report, only=signed)
        if statements is not None and signed is not None:
            statements.update({i: batches[i] for i in signed if i in batches})
        check_chains(batches, log, report)
        known = Known(log, plans, batches, good)
        erased = check_retention(conn, known, report)
        if archives is not None:
            check_archives(log, archives, report)
        if holds is not None:
            holds.holds = {h.id: h for h in erased.holds}
            holds.log = MerkleLog.from_state(log.state.size, log.state.hashes)  # a copy
        check_records(
            conn, batches, report, progress, workers, erased=erased, only=only, digests=digests
        )
        if only is None:
            check_kept(conn, known, erased, report)
        check_quarantine(conn, log, report)
        check_witnessed(conn, log, report)
        check_cosignatures(conn, log, key, cosigned_by, report)
    return report
