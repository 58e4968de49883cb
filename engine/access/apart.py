"""A read's batches verified in a worker process, while the reader matches and writes them.

Verifying a batch on its own (its leaves hashed into its root, its signatures
checked) is about a third of reading it through the guard; the other two
thirds, reading the rows and writing the lines, stay with the reader. The
worker is forked (so it has the trusted keys and the plans without being sent
them) and is sent the very leaves the reader writes, a chunk of batches at a
time: a verdict is always about the records it is written beside, never about
a second read of them. The reader sends chunk *k* and only then waits for the
verdicts of chunk *k - 1*, so the worker verifies one chunk while the reader
reads the next and writes the one before.

Only a reader alone in its process forks (``converge query``), and only on a
machine with more than one core. Such a reader also pauses the cyclic garbage
collector while it reads (:func:`engine.heap.collector_paused`).
"""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from multiprocessing.connection import Connection, Pipe
from typing import Any, NoReturn

from engine.errors import ConvergeError
from engine.plans.body import PlanBody
from engine.store.data import Records, StoredBatch
from engine.verify.single import batch_problem
from engine.verify.trust import Trust


def can_fork() -> bool:
    """Whether a worker can run beside this process: ``fork`` exists, and so does a second
    core for it."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return hasattr(os, "fork") and (cores or 1) > 1


class Verifier:
    """The reader's end: :meth:`send` a chunk's batches, later :meth:`verdicts` of them."""

    def __init__(self, pipe: Connection) -> None:
        self.pipe = pipe

    def send(self, batches: Sequence[tuple[StoredBatch, Records]]) -> None:
        """Batches with their records, positions and leaves as two columns (a sequence of
        bytes pickles ten times faster than one of tuples)."""
        try:
            self.pipe.send(batches)
        except OSError:  # the worker is gone: say why
            while True:
                self.verdicts()

    def verdicts(self) -> list[bool]:
        """Whether each batch of the oldest chunk sent and not yet answered verifies; what
        the worker raised, if it did."""
        try:
            said: tuple[str, Any] = self.pipe.recv()
        except EOFError as exc:
            raise ConvergeError("the process verifying the batches ended") from exc
        if said[0] == "error":
            raise said[1]
        verdicts: list[bool] = said[1]
        return verdicts


@contextmanager
def verifier(plans: Mapping[str, PlanBody | None], trust: Trust) -> Iterator[Verifier]:
    """A worker verifying batches of ``plans`` under ``trust``; it ends with the block."""
    ours, theirs = Pipe()
    pid = os.fork()
    if pid == 0:
        try:
            ours.close()
            _serve(theirs, plans, trust)
        finally:
            os._exit(1)  # never back into the reader's code
    theirs.close()
    try:
        yield Verifier(ours)
    finally:
        ours.close()
        os.waitpid(pid, 0)


def _serve(pipe: Connection, plans: Mapping[str, PlanBody | None], trust: Trust) -> NoReturn:
    """Answer each chunk with its verdicts until the reader closes its end, then leave
    without running anything the reader's process set up (no flush of its buffered output,
    no close of its database connections)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # an interrupt is the reader's to handle
    try:
        while True:
            chunk = pipe.recv()
            verdicts = [_verified(batch, records, plans, trust) for batch, records in chunk]
            pipe.send(("verdicts", verdicts))
    except (EOFError, OSError):  # the reader is done (or gone)
        os._exit(0)
    except Exception as exc:  # the reader raises it, as it would have verifying itself
        with suppress(Exception):
            pipe.send(("error", exc))
        os._exit(1)


def _verified(
    batch: StoredBatch, records: Records, plans: Mapping[str, PlanBody | None], trust: Trust
) -> bool:
    positions, leaves = records
    return batch_problem(batch, positions, leaves, plans.get(batch.plan_digest), trust) is None
