"""The garbage collector's pace during stages that build many long-lived objects."""

from __future__ import annotations

import contextlib
import gc
from collections.abc import Iterator


@contextlib.contextmanager
def fewer_collections() -> Iterator[None]:
    """Collect garbage less often within the block.

    A compilation builds millions of long-lived objects and frees almost none,
    and a verification streams millions of rows; with CPython's default
    thresholds the cyclic collector walks them again and again, which at
    100,000 points costs more than all of merge.
    """
    previous = gc.get_threshold()
    gc.set_threshold(200_000, 50, 1000)
    try:
        yield
    finally:
        gc.set_threshold(*previous)


@contextlib.contextmanager
def collector_paused() -> Iterator[None]:
    """The cyclic garbage collector off for the block, for a reader alone in its process (and
    the worker it forks inside, which inherits the pause).

    A read allocates a tuple or more for each record (the driver's rows, the worker's copy
    of them), none of them in a reference cycle: reference counting frees each. Every one
    counts towards the collector's next pass all the same, and at a million records those
    passes cost about as much CPU as matching and writing the lines.
    """
    was = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was:
            gc.enable()


@contextlib.contextmanager
def heap_frozen() -> Iterator[None]:
    """The heap as it stands frozen (``gc.freeze``) for the block, in which worker processes
    are forked: else every collection in a worker walks all of the heap it was forked with,
    writing to each object and so copying every page of it. A heap frozen already (a
    collector's run) is left as it is. (The bundle verifier, which stands alone, does the
    same in ``in_order``, where it took a quarter off an export made by a process that had
    just built its store.)"""
    freezing = gc.get_freeze_count() == 0
    if freezing:
        gc.freeze()
    try:
        yield
    finally:
        if freezing:
            gc.unfreeze()
