"""The batcher: records cut into per-device, per-window batches as they arrive.

A :class:`Batcher` is a collector sink (``async put``, ``async close``). It
puts each record, with a fresh salt, into the window ``[k·w, (k+1)·w)`` of
its device (``w`` = the plan's batch window, times in UTC epoch ms of
:func:`~engine.sign.batch.record_time`) and hands each finished
:class:`~engine.sign.batch.Batch` to ``on_batch``. A window closes when a
record of a later window of the same device arrives, at :meth:`Batcher.flush`
once ``now >= window end + grace``, and at :meth:`Batcher.close`. A record
arriving after its window closed opens that window again and ends up in a
further batch of the same window: nothing is dropped, and the chain of
previous roots orders the two.
"""

from __future__ import annotations

import asyncio
import inspect
import os
from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping
from datetime import datetime
from typing import NoReturn

from engine.errors import ConvergeError
from engine.plans.body import PlanBody
from engine.records import Reading, Record
from engine.sign.batch import (
    ZERO_ROOT,
    Batch,
    BatchSpec,
    Entry,
    epoch_ms,
    make_batch,
    record_time,
)
from engine.sign.leaf import SALT_SIZE, leaf_bytes, new_salt
from engine.sign.merkle import leaf_hash

OnBatch = Callable[[Batch], Awaitable[None] | None]
OnWindow = Callable[[BatchSpec, int, "Window"], Awaitable[None]]
"""Takes each closed window unhashed, instead of a :class:`Batch` (the evidence sink's sealer)."""


def batch_spec(plan: PlanBody) -> BatchSpec:
    """What sealing ``plan``'s batches needs: every batch carries the plan's required keys."""
    keys = plan.required_keys
    waiver = () if keys else plan.signing_waivers
    return BatchSpec(
        plan.device.id, plan.digest, plan.window_ms, keys, waiver, frozenset(plan.point)
    )


_FORKS = [0]
"""How many times this process is a forked child: a salt pool from before a fork is dropped."""
os.register_at_fork(after_in_child=lambda: _FORKS.__setitem__(0, _FORKS[0] + 1))


def _salts() -> Iterator[bytes]:
    """Fresh salts drawn from the CSPRNG many at a time; each byte is handed out once.

    One ``os.urandom`` call per record costs about as much as hashing its leaf;
    one call per 1,024 records does not. A forked child never uses the pool of
    its parent, so the two never hand out the same bytes. One pool per
    :class:`Batcher`, used by the thread that puts its records.
    """
    while True:
        forks = _FORKS[0]
        pool = os.urandom(SALT_SIZE * 1024)
        for at in range(0, len(pool), SALT_SIZE):
            if _FORKS[0] != forks:
                break
            yield pool[at : at + SALT_SIZE]


class Window:
    """The records of one open window in arrival order, with their salts, leaves and hashes.

    Four lists rather than an :class:`Entry` per record: a window holds up to a
    window's worth of a device's records, and every object alive that long is
    walked by each full garbage collection. Entries are made when the window
    closes, and live only until its batch is sealed.
    """

    __slots__ = ("hashes", "leaves", "records", "salts")

    def __init__(self) -> None:
        self.records: list[Record] = []
        self.salts: list[bytes] = []
        self.leaves: list[bytes] = []
        self.hashes: list[bytes] = []

    def entries(self) -> list[Entry]:
        return list(map(_entry, self.records, self.salts, self.leaves, self.hashes))


_new = object.__new__
_set_record, _set_salt, _set_leaf, _set_hash = (
    vars(Entry)[name].__set__ for name in ("record", "salt", "leaf", "leaf_hash")
)


def _entry(record: Record, salt: bytes, leaf: bytes, hashed: bytes) -> Entry:
    """``Entry(record, salt, leaf, hashed)`` at half the cost, for the records of a window.

    A frozen dataclass's ``__init__`` assigns through ``object.__setattr__``
    by name; setting the slots directly does the same in fewer steps.
    """
    entry: Entry = _new(Entry)
    _set_record(entry, record)
    _set_salt(entry, salt)
    _set_leaf(entry, leaf)
    _set_hash(entry, hashed)
    return entry


class Batcher:
    """A sink that cuts records into per-device, per-window batches for ``on_batch``.

    ``previous_roots`` resumes each device's chain (default: :data:`ZERO_ROOT`);
    ``grace_ms`` is how long :meth:`flush` waits after a window's end for late
    records. ``on_batch`` may be a plain or an async function. With ``on_window``,
    leaves are not hashed and each closed window goes to it instead of a batch
    to ``on_batch`` (which it then seals, chains and hands on itself).
    """

    def __init__(
        self,
        plans: Iterable[PlanBody],
        on_batch: OnBatch,
        *,
        grace_ms: int = 5_000,
        previous_roots: Mapping[str, bytes] | None = None,
        salt: Callable[[], bytes] = new_salt,
        on_window: OnWindow | None = None,
    ) -> None:
        self.plans = {spec.device: spec for spec in map(batch_spec, plans)}
        self.on_batch, self.grace_ms, self.on_window = on_batch, grace_ms, on_window
        self.salt = _salts().__next__ if salt is new_salt else salt
        self.previous: dict[str, bytes] = dict(previous_roots or {})
        self.open: dict[str, dict[int, Window]] = {}
        self.closed = False
        self._ms: dict[datetime, int] = {}

    async def put(self, record: Record) -> None:
        """Add a record; closes the device's earlier open windows. Requires a planned device."""
        if self.add(record):
            await self.emit_earlier(record.device)

    def add(self, record: Record) -> bool:
        """Add a record without closing anything; ``True`` when the record's device has an
        earlier window open, which :meth:`emit_earlier` must then close.

        :meth:`put` in two halves, so that a caller with its own ``put`` (the
        evidence sink) adds a record without one more coroutine per record.
        This runs once per record, so it is written for speed: no per-record
        datetime arithmetic (:meth:`_epoch_ms`), salts drawn in bulk, no
        :class:`Entry` until the window closes.
        """
        plan = self.plans.get(record.device)
        if plan is None or self.closed or record.point not in plan.points:
            self._refuse(record)
        moment = (
            record.scheduled_at or record.collected_at
            if type(record) is Reading
            else record_time(record)
        )
        ms = None if moment.fold else self._ms.get(moment)
        window = (self._epoch_ms(moment) if ms is None else ms) // plan.window_ms
        salt = self.salt()
        leaf = leaf_bytes(record, salt)  # before any window: a record without a leaf leaves none
        windows = self.open.get(plan.device)
        if windows is None:
            windows = self.open[plan.device] = {}
        into = windows.get(window)
        if into is None:
            into = windows[window] = Window()
        into.records.append(record)
        into.salts.append(salt)
        into.leaves.append(leaf)
        if self.on_window is None:  # else whoever takes the window hashes its leaves
            into.hashes.append(leaf_hash(leaf))
        return len(windows) > 1  # rarely: the first record of a device's next window

    async def emit_earlier(self, device: str) -> None:
        """Close every window of ``device`` before the newest one it has open."""
        plan, windows = self.plans[device], self.open[device]
        newest = max(windows)
        for earlier in sorted(w for w in windows if w < newest):
            await self._emit(plan, earlier, windows.pop(earlier))

    def _epoch_ms(self, moment: datetime) -> int:
        """:func:`epoch_ms`, remembered: the records of one slot share their time.

        Only ``fold=0`` times are remembered: two times of the same zone that
        differ only in ``fold`` compare equal yet are an hour apart.
        """
        ms = self._ms.get(moment) if not moment.fold else None
        if ms is None:
            ms = epoch_ms(moment)
            if not moment.fold:
                if len(self._ms) >= 4096:
                    self._ms.clear()
                self._ms[moment] = ms
        return ms

    async def flush(self, now: datetime) -> None:
        """Close every window whose end + grace is at or before ``now``."""
        cutoff = epoch_ms(now) - self.grace_ms
        for device, windows in list(self.open.items()):
            plan = self.plans[device]
            for window in sorted(w for w in windows if (w + 1) * plan.window_ms <= cutoff):
                await self._emit(plan, window, windows.pop(window))

    async def close(self) -> None:
        """Close every open window. Called once, after the last record.

        Yields to the event loop after each batch, so that whoever takes the
        batches (the evidence sink's writer) works on them while the rest are
        cut; a record put meanwhile is refused, never dropped.
        """
        self.closed = True
        for device, windows in list(self.open.items()):
            for window in sorted(windows):
                await self._emit(self.plans[device], window, windows[window])
                await asyncio.sleep(0)
        self.open.clear()

    def _refuse(self, record: Record) -> NoReturn:
        if self.closed:
            raise ConvergeError("batcher is closed")
        if record.device not in self.plans:
            raise ConvergeError(f"record of device {record.device!r}, which has no plan")
        raise ConvergeError(f"record of {record.device}/{record.point}, not in the plan")

    async def _emit(self, plan: BatchSpec, window: int, records: Window) -> None:
        if self.on_window is not None:
            await self.on_window(plan, window, records)
            return
        previous = self.previous.get(plan.device, ZERO_ROOT)
        batch = make_batch(plan, window, records.entries(), previous)
        self.previous[plan.device] = batch.root
        result = self.on_batch(batch)
        if inspect.isawaitable(result):
            await result
