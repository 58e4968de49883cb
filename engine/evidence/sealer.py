"""The evidence sink's sealer process: hashes, chains, signs and stores closed windows.

With ``EvidenceConfig(writer="process")`` the evidence sink forks one worker
process once it is set up: the process inherits a :class:`Job` (its own copy of
the run's :class:`~engine.evidence.writer.Writer`, what sealing needs of each
plan, the chain heads); nothing is sent. The collector's event loop then only encodes each
record's leaf (salt included) and, when a window closes, puts its records in
batch order as far as the records alone decide it (record time, point, type:
:func:`arrange`) and sends a :class:`Cut`: the leaves in that order, the runs
of equal keys, the gap positions. The sealer hashes the leaves, orders each
run by leaf hash (so the batch order is exactly :func:`~engine.sign.batch.entry_order`)
and computes the root (unless the collector did, see :func:`cut`), chains it
to the device's previous root, signs the
statement, and gives the batch to its writer, which stores, spools, replays and
checkpoints exactly as in the sink's writer thread, on the child's own database
and spool connections. At close the parent sends a :class:`Stop`; the sealer
finishes (replay, ``collector.stopped``, checkpoint) and sends back the
writer's stats, or its traceback.
"""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing
import pickle
import signal
import socket
import traceback
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from engine.canonical import canonical_json
from engine.errors import EvidenceError
from engine.evidence.batcher import Window
from engine.evidence.writer import Writer
from engine.keys import KeyStore
from engine.records import Gap, Record
from engine.sign.batch import (
    ZERO_ROOT,
    BatchSpec,
    Signature,
    Statement,
    covered_until,
    in_order,
    point_map_hash,
    record_order,
    window_bounds,
)
from engine.sign.merkle import leaf_hashes, root_of_hashes
from engine.store.sealed import SealedBatch
from engine.store.store import Head

SEND_BUFFER = 4 << 20


class SealerError(EvidenceError):
    """The sealer process failed or died; its traceback, when it could send one."""


@dataclass(frozen=True, slots=True)
class Cut:
    """A closed window, unhashed: what the sealer needs to make its batch."""

    device: str
    window: int
    leaves: bytes
    """The leaves in batch order (except within each run of :attr:`ties`), one per line.

    A leaf is canonical JSON, which escapes every control character, so it
    holds no raw newline. One joined string pickles and unpickles in a fraction
    of the time a list of thousands of small ones takes (no memo entry each).
    """
    count: int
    ties: list[tuple[int, int]]
    """Runs ``[i, j)`` of records with equal (time, point, type): ordered by leaf hash."""
    gaps: list[int]
    point_map: bytes
    """The SHA-256 of the batch's point map (:func:`~engine.sign.batch.point_map_hash`): the
    records' points, which the collector has (the sealer has only their leaves). The
    records of a run of :attr:`ties` share their point: ordering it changes no name."""
    covered_until: str
    at: datetime
    """The sink's "now" when the window closed: signing keys are chosen for it."""
    root: bytes | None = None
    """The leaves' root, when the collector has hashed them (then :attr:`ties` are ordered)."""


@dataclass(frozen=True, slots=True)
class Stop:
    """The end of the run: how many records the collector took, and its clock at the end."""

    records: int
    at: datetime


@dataclass(frozen=True)
class Job:
    """What the sealer process inherits at the fork: the writer it works with (its own copy),
    what sealing needs of each device's plan, and where each device's chain stands."""

    writer: Writer
    specs: Mapping[str, BatchSpec]
    previous: Mapping[str, bytes]


def arrange(records: Sequence[Record]) -> tuple[list[int] | None, list[tuple[int, int]]]:
    """The batch order of ``records`` by (time, point, type), and its runs of equal keys.

    ``None`` when the records are in that order already, with no ties (the usual case).
    """
    if in_order(records):
        return None, []
    keys = [record_order(r) for r in records]
    order = sorted(range(len(records)), key=keys.__getitem__)
    ties, start = [], 0
    for i in range(1, len(order) + 1):
        if i == len(order) or keys[order[i]] != keys[order[start]]:
            if i - start > 1:
                ties.append((start, i))
            start = i
    return order, ties


def cut(spec: BatchSpec, window: int, records: Window, at: datetime, hashed: bool = False) -> Cut:
    """In the collector: the :class:`Cut` of a closed window, with its root if ``hashed``.

    The collector hashes a window itself when the sealer lags behind or at
    close, when it has nothing else to do: the sealer's backlog is then only
    signing and storing (:meth:`~engine.evidence.sink.EvidenceSink._closed`).
    """
    kept, leaves = records.records, records.leaves
    order, ties = arrange(kept)
    if order is not None:
        kept, leaves = [kept[i] for i in order], [leaves[i] for i in order]
    gaps = [i for i, r in enumerate(kept) if type(r) is Gap]
    root = root_of_hashes(_hashed(leaves, ties)) if hashed else None
    return Cut(
        spec.device,
        window,
        b"\n".join(leaves),
        len(leaves),
        [] if hashed else ties,
        gaps,
        point_map_hash([r.point for r in kept]),
        covered_until([kept[-1], *(kept[i] for i in gaps)]),
        at,
        root,
    )


def _hashed(leaves: list[bytes], ties: list[tuple[int, int]]) -> list[bytes]:
    """The leaves' hashes; each run of ``ties`` (of both lists) reordered by leaf hash."""
    hashes = leaf_hashes(leaves)
    for i, j in ties:
        pairs = sorted(zip(hashes[i:j], leaves[i:j], strict=True))
        hashes[i:j], leaves[i:j] = [h for h, _ in pairs], [leaf for _, leaf in pairs]
    return hashes


def seal(spec: BatchSpec, cut: Cut, previous: bytes, keys: KeyStore) -> SealedBatch:
    """In the sealer: the batch of ``cut``, chained to ``previous``, signed, sealed.

    The same bytes as ``SealedBatch.of(make_batch(...), sign_batch(...))``.
    """
    leaves = cut.leaves.split(b"\n")
    assert len(leaves) == cut.count, "a leaf holds a raw newline"  # canonical JSON has none
    root = cut.root if cut.root is not None else root_of_hashes(_hashed(leaves, cut.ties))
    start, end = window_bounds(spec, cut.window)
    data = Statement(
        spec.device, start, end, len(leaves), root, spec.plan_digest, previous, cut.point_map
    )
    signed = data.to_bytes()
    signatures = tuple(Signature(k, keys.signer(k, cut.at).sign(signed)) for k in spec.keys)
    waiver = canonical_json(list(spec.waiver))
    return SealedBatch(signed, spec.keys, waiver, signatures, tuple(leaves), frozenset(cut.gaps))


class Sealer:
    """The parent's end: forks the sealer for ``job``, sends it cuts, stops it.

    Cuts go through a socket pair, written by the event loop itself without
    blocking (asyncio streams): a sending thread would have to win the GIL
    back from the busy loop for every buffer-full it writes.
    """

    def __init__(self, job: Job) -> None:
        context = multiprocessing.get_context("fork")
        self.sock, child = socket.socketpair()
        with contextlib.suppress(OSError):  # best effort: Linux caps it at net.core.wmem_max
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SEND_BUFFER)
        self.process = context.Process(
            target=_serve, args=(job, child, self.sock), name="converge-sealer", daemon=True
        )
        self.process.start()
        child.close()
        self.streams: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None

    async def send(self, item: Cut | Stop) -> None:
        """Send a cut, or the stop (waits while the sealer lags)."""
        if self.streams is None:
            self.streams = await asyncio.open_connection(sock=self.sock)
        data = pickle.dumps(item, pickle.HIGHEST_PROTOCOL)
        try:
            self.streams[1].write(len(data).to_bytes(8, "big"))
            self.streams[1].write(data)
            await self.streams[1].drain()
        except ConnectionError:
            raise await self._failure() from None

    async def stop(self, records: int, at: datetime) -> dict[str, int]:
        """Let the sealer finish (its last checkpoint signed as of ``at``); the writer's stats.
        Raises SealerError if it failed."""
        await self.send(Stop(records, at))
        kind, value = await self._receive()
        if kind != "ok":
            raise await self._failure(value)
        await asyncio.to_thread(self.process.join)
        self._close()
        stats: dict[str, int] = value
        return stats

    async def _receive(self) -> tuple[str, Any]:
        assert self.streams is not None
        try:
            size = int.from_bytes(await self.streams[0].readexactly(8), "big")
            kind, value = pickle.loads(await self.streams[0].readexactly(size))
        except (asyncio.IncompleteReadError, ConnectionError):
            return "error", None
        return kind, value

    async def _failure(self, said: str | None = None) -> SealerError:
        if said is None:
            said = (await self._receive())[1]
        await asyncio.to_thread(self.process.join)
        self._close()
        return SealerError(
            f"the sealer process failed (exit code {self.process.exitcode})"
            + (f":\n{said}" if said else "")
        )

    def _close(self) -> None:
        if self.streams is not None:
            self.streams[1].close()
        self.sock.close()


class _Channel:
    """The sealer's end of the socket pair: whole pickled messages, each after its size."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock, self.file = sock, sock.makefile("rb")

    def receive(self) -> Any:
        head = self.file.read(8)
        data = self.file.read(int.from_bytes(head, "big")) if len(head) == 8 else b""
        if not data:
            raise EOFError("the collector went away")
        return pickle.loads(data)

    def send(self, item: Any) -> None:
        data = pickle.dumps(item, pickle.HIGHEST_PROTOCOL)
        self.sock.sendall(len(data).to_bytes(8, "big") + data)


def _serve(job: Job, sock: socket.socket, parent_end: socket.socket) -> None:
    """The sealer process: cuts until the stop, then finish and report."""
    parent_end.close()
    for sig in (signal.SIGINT, signal.SIGTERM):  # the collector decides when to stop
        signal.signal(sig, signal.SIG_IGN)
    with contextlib.suppress(ValueError):
        signal.set_wakeup_fd(-1)  # the collector's event loop is not ours
    conn = _Channel(sock)
    writer = job.writer
    try:
        writer.own_connections()
        previous = dict(job.previous)
        while isinstance(item := conn.receive(), Cut):
            spec = job.specs[item.device]
            sealed = seal(spec, item, previous.get(item.device, ZERO_ROOT), writer.keys)
            previous[item.device] = sealed.head.root
            writer.deliver(sealed, Head(sealed.head.root, item.covered_until), item.at)
        try:
            stats = writer.finish(item.records, item.at)
        finally:
            writer.spool.close()
        conn.send(("ok", stats))
    except BaseException:
        with contextlib.suppress(OSError):
            conn.send(("error", traceback.format_exc()))
        raise SystemExit(1) from None


__all__ = ["Cut", "Job", "Sealer", "SealerError", "Stop", "arrange", "cut", "seal"]
