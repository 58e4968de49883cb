"""Stage verify: recompute every leaf, batch root, signature, audit entry and checkpoint.

:func:`~engine.verify.whole.verify_store` reads a store and trusts nothing in
it but what the given public keys signed (:class:`~engine.verify.trust.Trust`).
It does not stop at the first failure: every problem is named (device and
batch, audit entry, checkpoint, plan) in a :class:`~engine.verify.report.Report`,
so an auditor sees the whole extent of a tamper. What each check catches is in
docs/audit.md.

The checks, in the order they run (each later one uses what the earlier ones
established):

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
   entries say. ``archives.py``, when a folder is given: each archive a
   receipt relied on is there, with the SHA-256 its entry signed.
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

``whole.py`` runs them (:func:`~engine.verify.whole.verify_store`), ``report.py``
holds :class:`~engine.verify.report.Report` and its problems, ``trust.py`` the
trusted keys. The SQL and driver code behind every check is in
:mod:`engine.store.reads`: this package holds the checks, not database access.

This file imports none of them: a command that needs only the trusted keys
(``trust.py``, as ``converge query`` does) loads neither the checks nor the
store's reads.
"""
