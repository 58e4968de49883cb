"""Store and forward: a bounded local SQLite file keeping sealed batches while the database is away.

The spool is the collector's own file, beside it, so it is reachable when the
database is not (PostgreSQL down, its disk full). Batches go in sealed
(statement, signatures, leaves): they are replayed later exactly as signed,
oldest first, with their original times.

It also keeps each device's chain head (root and window end of the device's
last sealed batch), so a collector restarted while the database is still away
continues every chain where it stopped, and the audit entries of runs that
started or stopped while it was away (:class:`~engine.evidence.sink.Deferred`),
which the store gets before any batch once it answers.

When the spool holds ``max_bytes``, a further batch is **dropped**: only its
statement is kept (device, window, count, root; a few hundred bytes) and, once
the database is back, each one becomes a ``batch.dropped`` audit entry after a
``spool.full`` entry, so the loss is itself signed evidence and the device's
chain still verifies across it (docs/audit.md).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable, Iterator
from contextlib import closing, contextmanager
from dataclasses import dataclass
from pathlib import Path

from engine.errors import StoreError
from engine.store.sealed import SealedBatch
from engine.store.store import Head

DEFAULT_MAX_BYTES = 1 << 30
_SCHEMA = """
CREATE TABLE IF NOT EXISTS spooled (id INTEGER PRIMARY KEY, size INTEGER NOT NULL,
                                    batch BLOB NOT NULL, spooled_at TEXT);
CREATE TABLE IF NOT EXISTS dropped (id INTEGER PRIMARY KEY, statement BLOB NOT NULL,
                                    dropped_at TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS heads (device TEXT PRIMARY KEY, root BLOB NOT NULL,
                                  covered_until TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS deferred (id INTEGER PRIMARY KEY, entries BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS tracked (device TEXT PRIMARY KEY, since TEXT);
"""


@dataclass(frozen=True)
class Dropped:
    id: int
    statement: bytes
    dropped_at: str


class Spool:
    """A durable FIFO of sealed batches, bounded by bytes, plus the chain heads."""

    def __init__(self, path: Path, max_bytes: int = DEFAULT_MAX_BYTES) -> None:
        self.path, self.max_bytes = path, max_bytes
        try:
            self.db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
            self.db.executescript("PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;" + _SCHEMA)
            columns = {row[1] for row in self.db.execute("PRAGMA table_info(spooled)")}
            if "spooled_at" not in columns:  # a spool from before batches kept their time
                self.db.execute("ALTER TABLE spooled ADD COLUMN spooled_at TEXT")
            columns = {row[1] for row in self.db.execute("PRAGMA table_info(tracked)")}
            if "since" not in columns:  # a spool from before it kept when tracking began
                self.db.execute("ALTER TABLE tracked ADD COLUMN since TEXT")
        except sqlite3.Error as exc:
            raise StoreError(f"spool {path}: {exc}") from exc
        total = self.db.execute("SELECT coalesce(sum(size), 0) FROM spooled").fetchone()[0]
        self.bytes = int(total)

    def close(self) -> None:
        self.db.close()

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        self.db.execute("BEGIN IMMEDIATE")
        try:
            yield self.db
        except BaseException:
            self.db.execute("ROLLBACK")
            raise
        self.db.execute("COMMIT")

    def put(self, sealed: SealedBatch, now: str) -> bool:
        """Keep ``sealed`` for replay; ``False`` when the spool is full and it was dropped."""
        data = sealed.to_bytes()
        with self._transaction() as db:
            if self.bytes + len(data) > self.max_bytes:
                db.execute(
                    "INSERT INTO dropped (statement, dropped_at) VALUES (?, ?)",
                    (sealed.statement, now),
                )
                return False
            db.execute(
                "INSERT INTO spooled (size, batch, spooled_at) VALUES (?, ?, ?)",
                (len(data), data, now),
            )
        self.bytes += len(data)
        return True

    def oldest(self, limit: int) -> list[tuple[int, SealedBatch, str | None]]:
        """Up to ``limit`` batches, oldest first: row id, batch, and when it was spooled (an
        instant; ``None`` in a spool from before batches kept their time)."""
        rows = self.db.execute(
            "SELECT id, batch, spooled_at FROM spooled ORDER BY id LIMIT ?", (limit,)
        )
        return [(row_id, SealedBatch.from_bytes(data), at) for row_id, data, at in rows]

    def remove(self, row_id: int) -> None:
        with self._transaction() as db:
            (size,) = db.execute("SELECT size FROM spooled WHERE id = ?", (row_id,)).fetchone()
            db.execute("DELETE FROM spooled WHERE id = ?", (row_id,))
        self.bytes -= int(size)

    def dropped(self) -> list[Dropped]:
        rows = self.db.execute("SELECT id, statement, dropped_at FROM dropped ORDER BY id")
        return [Dropped(i, bytes(s), t) for i, s, t in rows]

    def forget_dropped(self, row_id: int) -> None:
        self.db.execute("DELETE FROM dropped WHERE id = ?", (row_id,))

    def __len__(self) -> int:
        return int(self.db.execute("SELECT count(*) FROM spooled").fetchone()[0])

    # --- audit entries the store has not had yet -------------------------------------

    def defer(self, entries: bytes) -> None:
        self.db.execute("INSERT INTO deferred (entries) VALUES (?)", (entries,))

    def deferred(self) -> list[tuple[int, bytes]]:
        rows = self.db.execute("SELECT id, entries FROM deferred ORDER BY id")
        return [(row_id, bytes(data)) for row_id, data in rows]

    def forget_deferred(self, row_id: int) -> None:
        self.db.execute("DELETE FROM deferred WHERE id = ?", (row_id,))

    # --- chain heads -------------------------------------------------------------------

    def set_head(self, device: str, head: Head) -> None:
        self.db.execute(
            "INSERT INTO heads (device, root, covered_until) VALUES (?, ?, ?) "
            "ON CONFLICT (device) DO UPDATE SET root = excluded.root, "
            "covered_until = excluded.covered_until",
            (device, head.root, head.covered_until),
        )

    def heads(self) -> dict[str, Head]:
        with closing(self.db.execute("SELECT device, root, covered_until FROM heads")) as rows:
            return {device: Head(bytes(root), end) for device, root, end in rows}

    def track(self, devices: Iterable[str], since: str) -> None:
        """Note that the spool has known these devices' chain heads since a run that started
        with the store, at ``since`` (an instant): a device with no head here then has no
        batch in the store either, and its slots are unaccounted for since the first such
        run began, which is kept."""
        self.db.executemany(
            "INSERT INTO tracked (device, since) VALUES (?, ?) ON CONFLICT (device) "
            "DO UPDATE SET since = excluded.since WHERE tracked.since IS NULL",
            [(device, since) for device in devices],
        )

    def tracked(self) -> dict[str, str | None]:
        """Each tracked device and since when (``None`` in a spool from before that was kept)."""
        with closing(self.db.execute("SELECT device, since FROM tracked")) as rows:
            return dict(rows)

    def knows_chain(self, device: str) -> bool:
        """Whether the spool knows where ``device``'s chain ends (at zero, with no head)."""
        query = "SELECT 1 FROM tracked WHERE device = ? UNION SELECT 1 FROM heads WHERE device = ?"
        return self.db.execute(query, (device, device)).fetchone() is not None
