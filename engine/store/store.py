"""The store: one transaction per batch, its records and its audit entry; idempotent.

A :class:`Store` is used by one collector process. Every write is a single
transaction that first takes the store's write lock (``BEGIN IMMEDIATE`` on
SQLite, a transaction-scoped advisory lock on PostgreSQL), so audit sequence
numbers never race. Records go in with driver-level multi-row ``INSERT``
statements (SQLite) or one binary ``COPY`` (PostgreSQL), never one ORM object
per reading.

Delivery is at least once: :meth:`Store.write` of a batch already stored
(same device and root; the root covers every record and its random salt)
stores nothing and returns ``False``.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from itertools import repeat
from pathlib import Path
from typing import Any, Self

from sqlalchemy import Connection, Engine, func, insert, select
from sqlalchemy.exc import IntegrityError, SQLAlchemyError

from engine import audit
from engine.audit import DEFAULT_AUDIT_KEY, Actor
from engine.canonical import canonical_json
from engine.errors import StoreError, VerificationError
from engine.keys import KeyVersion
from engine.plans.body import PlanBody
from engine.plans.signature import PlanClaim, rfc3339
from engine.sign import note
from engine.sign.leaf import instant
from engine.store import auditlog
from engine.store.database import connect, describe, reason, require_current, upgrade, writing
from engine.store.sealed import SealedBatch
from engine.store.tables import (
    AUDIT,
    BATCHES,
    CHECKPOINTS,
    GAPS,
    META,
    PLANS,
    READINGS,
    SIGNATURES,
)

LOCK_ID = 0x636F6E76  # "conv": the advisory lock every PostgreSQL writer takes
STATE_LOCK = select(META.c.value).where(META.c.key == audit.STATE_KEY).with_for_update()
"""The log's saved state, locked by each PostgreSQL writer (:meth:`Store.transaction`)."""


@dataclass(frozen=True)
class Recorded:
    """Audit entries to record together, dated ``at``: plans to deploy (with their signature
    notes), key versions to log, then ``(kind, payload)`` entries."""

    at: str
    plans: Sequence[tuple[PlanBody, str | None]] = ()
    keys: Sequence[KeyVersion] = ()
    entries: Sequence[tuple[str, dict[str, Any]]] = ()


@dataclass(frozen=True)
class Head:
    """The last batch of a device's chain: its root, and until when its records are kept.

    ``covered_until`` (an instant) is just after the device's last record
    sealed into a batch; the store alone knows only the end of the last batch's
    window, which is used when the collector's spool is gone.
    """

    root: bytes
    covered_until: str


class Store:
    """The evidence database of one collector (or of an auditor reading it)."""

    def __init__(
        self,
        engine: Engine,
        actor: Actor,
        witness: Path | None = None,
        audit_key: str = DEFAULT_AUDIT_KEY,
    ) -> None:
        self.engine, self.actor, self.witness = engine, actor, witness
        self.audit_key = audit_key
        """The key that signs the log's checkpoints (named in the log when it is made)."""
        self.postgres = engine.dialect.name == "postgresql"
        self.prepared = False

    @classmethod
    def open(
        cls,
        target: str,
        actor: Actor,
        witness: Path | None = None,
        audit_key: str = DEFAULT_AUDIT_KEY,
    ) -> Store:
        """Open (made or migrated as needed) the store at ``target``: a path (SQLite) or a
        database URL."""
        store = cls.attach(target, actor, witness, audit_key)
        store.prepare()
        return store

    @classmethod
    def attach(
        cls,
        target: str,
        actor: Actor,
        witness: Path | None = None,
        audit_key: str = DEFAULT_AUDIT_KEY,
    ) -> Self:
        """The store at ``target`` without reaching it yet: :meth:`prepare` it before writing.

        Raises StoreError only for a target that names no database a driver can open.
        """
        return cls(connect(target), actor, witness, audit_key)

    def prepare(self) -> None:
        """Make or migrate the schema, and make the audit log (its origin and first entry)
        unless it exists; raises StoreError when the database cannot be reached, or when its
        log is signed by another key than :attr:`audit_key`."""
        upgrade(self.engine)
        with self.transaction() as conn:
            auditlog.make(conn, self.audit_key, self.actor)
        self.prepared = True

    @classmethod
    def open_existing(cls, target: str) -> Store:
        """Open the store at ``target`` to read it: it must exist, at the current schema."""
        engine = connect(target)
        require_current(engine)
        return cls(engine, actor=Actor.job("reader"))

    def close(self) -> None:
        """Close every connection (SQLite then folds its WAL file into the database file)."""
        self.engine.dispose()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def where(self) -> str:
        return describe(self.engine)

    @contextmanager
    def transaction(self) -> Iterator[Connection]:
        """A write transaction holding the store's write lock; errors become StoreError.

        On PostgreSQL the lock is an advisory one, which only Converge's writers take; the log's
        saved state is also locked for update, so that no one else's write to it commits while
        the transaction reads the log and signs it (a database writer's plain SQL waits, or
        deadlocks and is undone)."""
        try:
            with writing(self.engine) as conn:
                if self.postgres:
                    conn.exec_driver_sql(f"SELECT pg_advisory_xact_lock({LOCK_ID})")
                    conn.execute(STATE_LOCK)
                yield conn
        except IntegrityError:
            raise
        except SQLAlchemyError as exc:
            raise StoreError(f"store {self.where}: {reason(exc)}") from exc

    @contextmanager
    def signed(self, sealer: Callable[[datetime], audit.Seal]) -> Iterator[Connection]:
        """A write transaction whose entries a checkpoint signs before it commits, sealed as of
        when they are all appended (``sealer(now)``: no entry is dated after its checkpoint);
        the note is witnessed once committed. What decides whether a deletion was lawful (a
        hold, a receipt, an archive) is written so: it never waits in the unsigned tail, and
        the checkpoint refuses a tail holding such an entry it did not write
        (:func:`engine.store.auditlog.checkpoint`)."""
        with self.transaction() as conn:
            yield conn
            seal = sealer(datetime.now(UTC))
            note = auditlog.checkpoint(conn, seal)
        self._witness(note)

    @contextmanager
    def reading(self, *, snapshot: bool = False) -> Iterator[Connection]:
        """A read transaction; ``snapshot``: every statement in it reads the store as the first
        did (SQLite's reads always do; PostgreSQL's then run at ``REPEATABLE READ``), as a
        reader whose reads must agree with one another needs (an export). Such a transaction
        may sit idle while worker processes read: a server that ends idle transactions
        (``idle_in_transaction_session_timeout``) must allow an export's length."""
        try:
            with self.engine.connect() as conn:
                if snapshot and conn.dialect.name == "postgresql":
                    conn.execution_options(isolation_level="REPEATABLE READ")
                yield conn
        except SQLAlchemyError as exc:
            raise StoreError(f"store {self.where}: {reason(exc)}") from exc

    # --- batches ----------------------------------------------------------------------

    def write(self, sealed: SealedBatch, at: datetime | None = None) -> bool:
        """Store a batch, its signatures, records and ``batch.stored`` entry atomically.

        Returns ``False`` (and stores nothing) when the batch is already stored.
        """
        try:
            with self.transaction() as conn:
                return self.write_in(conn, sealed, at) is not None
        except IntegrityError:
            return False  # a concurrent writer stored the same batch first

    def write_in(
        self, conn: Connection, sealed: SealedBatch, at: datetime | None, new: bool = False
    ) -> int | None:
        """In ``conn``'s write transaction: :meth:`write`'s work; the ``seq`` of the batch's
        ``batch.stored`` entry, or ``None`` when the batch is already stored (``new``: the
        caller has found it is not, in this transaction)."""
        head = sealed.head
        if not new and self._stored(conn, head.device, head.root):
            return None
        seq = auditlog.append(
            conn,
            "batch.stored",
            self.actor,
            sealed.audit_payload(),
            instant(at or datetime.now(UTC)),
        )
        batch_id = self._insert_batch(conn, sealed, seq)
        self._insert_records(conn, batch_id, sealed)
        return seq

    @staticmethod
    def _stored(conn: Connection, device: str, root: bytes) -> bool:
        query = select(BATCHES.c.id).where(BATCHES.c.device == device, BATCHES.c.root == root)
        return conn.execute(query).first() is not None

    @staticmethod
    def _insert_batch(conn: Connection, sealed: SealedBatch, seq: int) -> int:
        head = sealed.head
        batch_id = conn.execute(
            insert(BATCHES)
            .values(
                device=head.device,
                window_start=head.window_start,
                window_end=head.window_end,
                count=head.count,
                root=head.root,
                previous_root=head.previous_root,
                plan_digest=head.plan_digest,
                statement=sealed.statement,
                keys=canonical_json(list(sealed.keys)).decode(),
                waiver=sealed.waiver.decode(),
                audit_seq=seq,
                point_map=sealed.point_map,
            )
            .returning(BATCHES.c.id)
        ).scalar_one()
        if sealed.signatures:
            conn.execute(
                insert(SIGNATURES),
                [
                    {"batch_id": batch_id, "key": s.key, "signature": s.signature}
                    for s in sealed.signatures
                ],
            )
        return int(batch_id)

    def _insert_records(self, conn: Connection, batch_id: int, sealed: SealedBatch) -> None:
        leaves, gaps = sealed.leaves, sealed.gaps
        if not gaps:  # the usual batch: readings only
            self._bulk(conn, "readings", batch_id, range(len(leaves)), leaves)
            return
        readings = [i for i in range(len(leaves)) if i not in gaps]
        for table, positions in (("readings", readings), ("gap_records", sorted(gaps))):
            if positions:
                self._bulk(conn, table, batch_id, positions, [leaves[i] for i in positions])

    def _bulk(
        self,
        conn: Connection,
        table: str,
        batch_id: int,
        positions: Sequence[int],
        leaves: Sequence[bytes],
    ) -> None:
        """One binary COPY (PostgreSQL), or as few multi-row INSERTs as SQLite allows.

        Binary COPY because the server parses text-format ``bytea`` (hex) at
        about half the speed. Not ``executemany`` on SQLite: it gives up the
        GIL once per row, and the store is written in a thread beside a busy
        event loop (the evidence sink's writer); a thread that needs the GIL
        back once per row waits for the interpreter's switch interval each time.
        """
        driver: Any = conn.connection.driver_connection
        if self.postgres:
            sql = f"COPY {table} (batch_id, position, leaf) FROM STDIN (FORMAT BINARY)"
            cursor = driver.cursor()
            fast_bytea(cursor)
            with cursor.copy(sql) as copy:
                copy.set_types(["int8", "int4", "bytea"])
                for row in zip(repeat(batch_id), positions, leaves):
                    copy.write_row(row)
            return
        per = driver.getlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER) // 3
        for start in range(0, len(leaves), per):
            chunk = leaves[start : start + per]
            params: list[Any] = [batch_id] * (3 * len(chunk))  # (batch_id, position, leaf)...
            params[1::3], params[2::3] = positions[start : start + per], chunk
            marks = ",".join(["(?,?,?)"] * len(chunk))
            conn.exec_driver_sql(
                f"INSERT INTO {table} (batch_id, position, leaf) VALUES {marks}", tuple(params)
            )

    def heads(self) -> dict[str, Head]:
        """Each device's newest batch: of its latest window, the one no other batch follows.

        Only the store's word, for a collector whose spool is gone: a batch that
        was dropped leaves its predecessor unfollowed too, so the latest window
        decides, not the chain alone.
        """
        latest = (
            select(BATCHES.c.device, func.max(BATCHES.c.window_end).label("end"))
            .group_by(BATCHES.c.device)
            .subquery()
        )
        query = select(
            BATCHES.c.id,
            BATCHES.c.device,
            BATCHES.c.root,
            BATCHES.c.previous_root,
            BATCHES.c.window_end,
        ).join(
            latest, (BATCHES.c.device == latest.c.device) & (BATCHES.c.window_end == latest.c.end)
        )
        with self.reading() as conn:
            rows = conn.execute(query).all()
        followed = {(r.device, bytes(r.previous_root)) for r in rows}
        newest: dict[str, Any] = {}
        for r in sorted(rows, key=lambda r: r.id):
            if (r.device, bytes(r.root)) not in followed:
                newest[r.device] = r
        return {d: Head(bytes(r.root), r.window_end) for d, r in newest.items()}

    # --- plans, keys, lifecycle -------------------------------------------------------

    def deploy_plans(
        self, plans: Iterable[tuple[PlanBody, str | None]], at: str | None = None
    ) -> int:
        """Keep each (plan, signature note) not stored yet, with a ``plan.deployed`` entry
        (dated ``at``, default now); returns how many were new."""
        with self.transaction() as conn:
            return self._deploy(conn, plans, at or audit.now_instant())

    def _deploy(
        self, conn: Connection, plans: Iterable[tuple[PlanBody, str | None]], at: str
    ) -> int:
        new = 0
        for plan, signature in plans:
            if conn.execute(select(PLANS.c.digest).where(PLANS.c.digest == plan.digest)).first():
                continue
            row = {"digest": plan.digest, "device": plan.device.id, "body": plan.data}
            conn.execute(insert(PLANS).values(**row, signature=signature, deployed_at=at))
            deployed = {
                "device": plan.device.id,
                "digest": plan.digest,
                "signed": signature is not None,
                **_signed_by(signature),
            }
            auditlog.append(conn, "plan.deployed", self.actor, deployed, at)
            new += 1
        return new

    def record_keys(self, versions: Iterable[KeyVersion], seal: audit.Seal | None = None) -> int:
        """A ``key.generated`` or ``key.rotated`` entry for each key version not logged yet,
        and with ``seal`` a checkpoint after them, in one transaction.

        Key stores live outside the database (a key may be made before any store
        exists), so every collector start brings the log up to date, dated with
        the version's own creation time.
        """
        with self.transaction() as conn:
            new = self._log_keys(conn, versions)
            note = auditlog.checkpoint(conn, seal) if seal and new else None
        self._witness(note)
        return new

    def _log_keys(self, conn: Connection, versions: Iterable[KeyVersion]) -> int:
        logged = {
            (e.payload["name"], e.payload["version"])
            for e in auditlog.entries(conn, ["key.generated", "key.rotated"])
            if "site" not in e.payload  # a site's key, in a central store (store/central.py)
        }
        new = [v for v in versions if (v.name, v.version) not in logged]
        for v in sorted(new, key=lambda v: (v.created_at, v.name, v.version)):
            kind = "key.generated" if v.version == 1 else "key.rotated"
            maker = Actor.from_json(v.created_by) if v.created_by else self.actor
            auditlog.append(conn, kind, maker, key_payload(v), instant(v.created_at))
        return len(new)

    def log(
        self, kind: str, payload: dict[str, Any], at: str | None = None, actor: Actor | None = None
    ) -> int:
        """Append one entry of ``kind`` on its own, dated ``at`` (default now), by ``actor``
        (default: the store's)."""
        with self.transaction() as conn:
            return auditlog.append(conn, kind, actor or self.actor, payload, at)

    def record(self, entries: Recorded, seal: audit.Seal) -> None:
        """In one transaction: ``entries`` and a checkpoint signed after them, so that none
        of them is ever an unsigned tail (a run's start, its stop; docs/audit.md)."""
        with self.transaction() as conn:
            at = entries.at
            self._deploy(conn, entries.plans, at)
            self._log_keys(conn, entries.keys)
            for kind, payload in entries.entries:
                auditlog.append(conn, kind, self.actor, payload, at)
            note = auditlog.checkpoint(conn, seal)
        self._witness(note)

    def chain_end(self, device: str, root: bytes) -> Head | None:
        """The last stored batch of ``device``'s chain after the batch whose root is ``root``
        (following each batch's previous root), or ``None`` when no stored batch follows it.

        Unlike :meth:`heads` this is exact, whatever the windows' order: a window reopened
        for late records, or a clock set back, ends a chain with an earlier window.
        """
        end: Head | None = None
        query = select(BATCHES.c.root, BATCHES.c.window_end).where(BATCHES.c.device == device)
        with self.reading() as conn:
            while row := conn.execute(query.where(BATCHES.c.previous_root == root)).first():
                root = bytes(row.root)
                end = Head(root, row.window_end)
        return end

    def first_starts(self) -> dict[str, str]:
        """Per device, the time of the earliest ``collector.started`` entry naming one of its
        plans (the plans table gives each digest's device): since then a run was meant to
        collect it. An entry that does not parse names nothing (verify reports it)."""
        query = select(AUDIT.c.time, AUDIT.c.entry).where(AUDIT.c.kind == "collector.started")
        with self.reading() as conn:
            device_of = {r.digest: r.device for r in conn.execute(select(PLANS))}
            first: dict[str, str] = {}
            for time, entry in conn.execute(query):
                for digest in _started_plans(bytes(entry)):
                    device = device_of.get(digest)
                    if device is not None and (device not in first or time < first[device]):
                        first[device] = time
        return first

    def checkpoint(self, seal: audit.Seal) -> str | None:
        """Sign a checkpoint of the log as ``seal`` says, and append it to the witness file."""
        with self.transaction() as conn:
            note = auditlog.checkpoint(conn, seal)
        self._witness(note)
        return note

    def _witness(self, note: str | None) -> None:
        """Append a committed checkpoint to the witness file (never one not committed)."""
        if note is not None and self.witness is not None:
            audit.witness_append(self.witness, note)

    def entries_since_checkpoint(self) -> int:
        with self.reading() as conn:
            return auditlog.size(conn) - auditlog.last_checkpoint_size(conn)

    def counts(self) -> dict[str, int]:
        """Rows per evidence table (for summaries)."""
        with self.reading() as conn:
            return {
                name: int(conn.execute(select(func.count()).select_from(table)).scalar_one())
                for name, table in (
                    ("batches", BATCHES),
                    ("readings", READINGS),
                    ("gap_records", GAPS),
                    ("audit_entries", AUDIT),
                    ("checkpoints", CHECKPOINTS),
                )
            }


def _signed_by(signature: str | None) -> dict[str, Any]:
    """Who a plan's signature names (its signer, printed name, meaning, time), as the note
    says; what the note is worth is ``audit verify``'s to check."""
    if signature is None:
        return {}
    try:
        claim = PlanClaim.parse(note.split_note(signature)[0])
    except VerificationError:
        return {}
    said: dict[str, Any] = {"signed_at": rfc3339(claim.signed_at)}
    if claim.signer is not None:
        s = claim.signer
        said |= {"signer": s.principal, "name": s.name, "meaning": s.meaning}
    return said


def fast_bytea(cursor: Any) -> None:
    """Make ``cursor`` dump ``bytea`` COPY values with psycopg's own C dumper for ``bytes``.

    ``set_types(["bytea"])`` takes the dumper last registered for the type, and
    that is the DB-API ``Binary`` wrapper's, written in Python (psycopg/dbapi20.py):
    a Python call per leaf, half the client's COPY time. Registered on the
    cursor only; the connection's other statements are left as they are.
    """
    from psycopg.types.string import BytesBinaryDumper  # noqa: PLC0415 -- PostgreSQL stores only

    cursor.adapters.register_dumper(bytes, BytesBinaryDumper)


def key_payload(version: KeyVersion) -> dict[str, Any]:
    return {
        "name": version.name,
        "version": version.version,
        "key_id": version.key_id,
        "sha256": version.sha256,
        "not_before": instant(version.not_before),
        "not_after": version.not_after and instant(version.not_after),
    }


def _started_plans(entry: bytes) -> list[str]:
    """The plan digests a ``collector.started`` entry names (none when it does not parse)."""
    try:
        plans = json.loads(entry)["payload"]["plans"]
    except (ValueError, KeyError, TypeError):
        return []
    if not isinstance(plans, list):
        return []
    return [digest for digest in plans if isinstance(digest, str)]


__all__ = ["Head", "Recorded", "Store", "fast_bytea", "key_payload"]
