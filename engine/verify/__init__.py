"""Stage verify: recompute every leaf, batch root, signature, audit entry and checkpoint.

:func:`verify_store` reads a store and trusts nothing in it but what the given
public keys signed (:class:`Trust`). It does not stop at the first failure:
every problem is named (device and batch, audit entry, checkpoint, plan) in a
:class:`Report`, so an auditor sees the whole extent of a tamper. What each
check catches is in docs/audit.md.

The checks, in the order :func:`verify_store` runs them (each later one uses
what the earlier ones established):

1. ``log.py``: the audit log. Every entry is canonical JSON, its columns
   agree with it, sequence numbers have no hole, and the saved state the
   next append starts from is that of the stored entries.
2. ``checkpoints.py``: the log's key is the one the auditor names, and the
   one its origin and first entry name; every stored checkpoint is signed by a
   trusted version of that key valid at the time the checkpoint states, and
   signs a prefix of the log; one root per size (else a fork), each consistent
   with the one before and signed no earlier, none signing a batch whose window
   began after it. ``tail.py``: the entries after
   the last checkpoint are what a running or killed collector leaves, no more.
   Then every checkpoint of the witness file, if given, must be of the stored log.
3. ``plans.py``: every stored plan's bytes verify against its digest, it is
   signed exactly when its ``plan.deployed`` entry says so, its
   signature (required with ``plan_key``) is by the plan key, or else a
   trusted key, valid then, made before the plan was deployed, and names it;
   plans and ``plan.deployed`` entries match one to one.
4. ``batches.py``: every batch row agrees with its signed statement and its
   ``batch.stored`` entry; every key its *plan* requires (never what the row
   says) signed it with a version valid then; every ``batch.stored`` entry
   has its batch. Then each
   device's batches form one chain from the zero root.
5. ``retention.py``: every deletion receipt names a stored batch as signed,
   leaves it the records it says, the store keeps the positions (and leaf
   hashes) it removed, and it was lawful (the batch's plan expired the
   records by then, no hold in force covered them); holds are what their
   entries say.
6. ``records.py``: every record's leaf is rehashed and each batch's root
   rebuilt from its rows (and the leaf hashes its receipts keep) and compared
   with its statement, but for batches whose receipts deleted every record; a
   large store's records are hashed by worker processes, one per CPU. Then
   records kept past their ``keep_at_most`` with no hold are findings
   (``retention.py``).
7. ``central.py``: a central store's quarantine rows and witnessed site logs
   agree with their entries (quarantined messages are notes, not failures);
   ``cosigned.py``: a site store's cosignatures are of its log as stored, and
   by the centre's witness key when it is given (docs/scale-out.md).

``report.py`` holds :class:`Report` and its problems, ``trust.py`` the trusted
keys. The SQL and driver code behind every check is in
:mod:`engine.store.reads`: this package holds the checks, not database access.
"""

from __future__ import annotations

from collections.abc import Collection, MutableMapping
from pathlib import Path

from engine import audit
from engine.audit import DEFAULT_AUDIT_KEY
from engine.store import reads
from engine.store.store import Store
from engine.verify.batches import check_batches, check_chains
from engine.verify.central import check_quarantine, check_witnessed
from engine.verify.checkpoints import LogKey, check_checkpoints, check_log_key, check_witness
from engine.verify.cosigned import check_cosignatures
from engine.verify.log import check_log
from engine.verify.plans import PlanTrust, check_plans
from engine.verify.records import Progress, check_records
from engine.verify.report import Report
from engine.verify.retention import Known, check_kept, check_retention
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
    digests: MutableMapping[int, bytes] | None = None,
) -> Report:
    """Check everything in ``store`` against ``trust`` (and the ``witness`` file, if given);
    the log's checkpoints under ``audit_key`` only, plans' signatures under ``plan_key`` when
    given; the centre's cosignatures of the log by the witness key of ``cosigned_by`` when
    given.

    ``workers``: how many processes hash the records (None: one per CPU for a
    store of at least :data:`~engine.verify.records.PARALLEL_RECORDS` records,
    else this one alone).

    ``records_of``: rehash the records of only these batches, and look for no findings
    (data kept too long); everything else is checked whole. A retention run's check
    before it deletes (:mod:`engine.retention.run` says why that is enough). ``digests``,
    when given, is filled with the digest of the records hashed of each batch no receipt
    deleted records of (:func:`~engine.verify.records.records_digest`): what the run compares
    the records it deletes with.
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
        batches = check_batches(conn, log, plans, trust, report)
        check_chains(batches, log, report)
        known = Known(log, plans, batches, good)
        erased = check_retention(conn, known, report)
        only = None if records_of is None else frozenset(records_of)
        check_records(
            conn, batches, report, progress, workers, erased=erased, only=only, digests=digests
        )
        if only is None:
            check_kept(conn, known, erased, report)
        check_quarantine(conn, log, report)
        check_witnessed(conn, log, report)
        check_cosignatures(conn, log, key, cosigned_by, report)
    return report


__all__ = ["Progress", "Report", "Trust", "verify_store"]
