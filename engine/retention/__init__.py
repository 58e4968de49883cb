"""Stage retention: records deleted on schedule with signed receipts, and legal holds.

- :mod:`~engine.retention.select`: which records of a batch go now (their plan's
  retention, applied to the batch's signed window; no hold in force covers them);
- :mod:`~engine.retention.receipt`: the ``retention.deleted`` entry of each batch;
- :mod:`~engine.retention.run`: a run (:func:`apply`), and what one would do at a
  given time (:func:`forecast`);
- :mod:`~engine.retention.holds`: placing and releasing holds, decided by the guard
  (``access.hold``).

The expiry rule itself is :mod:`engine.plans.expiry`, and the verifier checks
every receipt against it (:mod:`engine.verify.retention`). See docs/retention.md.
"""

from __future__ import annotations

from engine.retention.run import Job, Outcome, StoreUnverified, apply, forecast

__all__ = ["Job", "Outcome", "StoreUnverified", "apply", "forecast"]
