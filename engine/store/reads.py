"""The reads the verifier needs: every table as stored, and the records straight from the driver.

:mod:`engine.verify` checks what these return and trusts none of it. The
small tables (meta, audit entries, checkpoints, plans, batches and their
signatures) come through SQLAlchemy. The records (readings and gap records,
nearly all of a store) come from the DB-API driver itself, in batch order,
through C iterators; a worker process verifying ranges of batches reads
them on a connection of its own (:func:`kept_driver`).
"""

from __future__ import annotations

import os
import sqlite3
from collections import defaultdict
from collections.abc import Iterator, Sequence
from contextlib import closing, contextmanager, suppress
from dataclasses import dataclass
from functools import partial
from itertools import chain
from typing import Any, NamedTuple
from urllib.parse import quote

from sqlalchemy import Connection, Row, select

from engine.store.database import postgres_timeout
from engine.store.tables import (
    AUDIT,
    BATCHES,
    CHECKPOINTS,
    COSIGNATURES,
    META,
    PLANS,
    QUARANTINE,
    SIGNATURES,
    WITNESSED,
)

# --- the small tables, through SQLAlchemy ----------------------------------------------


def meta(conn: Connection, key: str) -> str | None:
    """The value stored under ``key`` in the meta table, if any."""
    found = conn.execute(select(META.c.value).where(META.c.key == key)).scalar()
    return None if found is None else str(found)


def audit_entries(conn: Connection) -> Iterator[tuple[int, str, str, bytes]]:
    """(seq, time, kind, entry bytes) of every stored audit entry, in seq order."""
    for seq, time, kind, stored in conn.execute(select(AUDIT).order_by(AUDIT.c.seq)):
        yield seq, time, kind, as_bytes(stored)


def checkpoints(conn: Connection) -> Sequence[Row[Any]]:
    """Every checkpoint row (id, size, note, created_at), in id order."""
    return conn.execute(select(CHECKPOINTS).order_by(CHECKPOINTS.c.id)).all()


def plans(conn: Connection) -> Iterator[Row[Any]]:
    """Every plan row (digest, device, body, signature, deployed_at)."""
    return iter(conn.execute(select(PLANS)))


def batches(conn: Connection) -> Iterator[Row[Any]]:
    """Every batch row, in id order."""
    return iter(conn.execute(select(BATCHES).order_by(BATCHES.c.id)))


def batch_signatures(conn: Connection) -> dict[int, dict[str, bytes]]:
    """Every stored batch signature: by batch id, then by key name."""
    signatures: dict[int, dict[str, bytes]] = defaultdict(dict)
    for batch_id, key, signature in conn.execute(select(SIGNATURES)):
        signatures[batch_id][key] = bytes(signature)
    return signatures


def quarantine(conn: Connection) -> Sequence[Row[Any]]:
    """Every message a central store quarantined, in id order."""
    return conn.execute(select(QUARANTINE).order_by(QUARANTINE.c.id)).all()


def witnessed(conn: Connection) -> Sequence[Row[Any]]:
    """The newest checkpoint a central store cosigned of each site log."""
    return conn.execute(select(WITNESSED).order_by(WITNESSED.c.site, WITNESSED.c.origin)).all()


def cosignatures(conn: Connection) -> Sequence[Row[Any]]:
    """Every cosigned checkpoint a site store keeps, in id order."""
    return conn.execute(select(COSIGNATURES).order_by(COSIGNATURES.c.id)).all()


def as_bytes(value: object) -> bytes:
    """A blob the driver gave as memoryview, or as text (SQLite, after an edit through SQL)."""
    return value.encode() if isinstance(value, str) else bytes(value)  # type: ignore[call-overload]


# --- the records, from the driver ------------------------------------------------------

RecordRow = tuple[int, int, bytes]
"""(batch id, position, leaf) of a reading or gap record, as the driver gives it."""


class BatchIds(NamedTuple):
    """The batch ids after ``after`` (None: from the lowest) up to ``upto`` (None: the highest),
    and of those only the ones in ``only`` (None: every one)."""

    after: int | None = None
    upto: int | None = None
    only: frozenset[int] | None = None

    def where(self) -> str:
        """The SQL condition selecting these batch ids ("" for all of them)."""
        conditions = []
        if self.after is not None:
            conditions.append(f"batch_id > {self.after:d}")
        if self.upto is not None:
            conditions.append(f"batch_id <= {self.upto:d}")
        if self.only is not None:
            listed = ",".join(f"{i:d}" for i in sorted(self.only)) or "NULL"
            conditions.append(f"batch_id IN ({listed})")
        return " AND ".join(conditions)


@dataclass(frozen=True)
class Records:
    """The record tables of a store, read through one DB-API connection of its driver."""

    driver: Any
    postgres: bool

    @contextmanager
    def rows(self, table: str, ids: BatchIds) -> Iterator[Iterator[RecordRow]]:
        """(batch id, position, leaf) of the rows of ``table`` in ``ids``, in batch order.

        The rows come straight from ``fetchmany`` through C iterators: no
        Python code runs per row.
        """
        # a named (server-side) cursor streams on PostgreSQL; SQLite's cursor streams anyway
        cursor = self.driver.cursor(f"verify_{table}") if self.postgres else self.driver.cursor()
        where = ids.where()
        condition = f" WHERE {where}" if where else ""
        cursor.execute(
            f"SELECT batch_id, position, leaf FROM {table}{condition} ORDER BY batch_id, position"
        )
        try:
            yield chain.from_iterable(iter(partial(cursor.fetchmany, 20_000), []))
        finally:
            cursor.close()


def records(conn: Connection) -> Records:
    """The record tables, read in ``conn``'s transaction."""
    return Records(conn.connection.driver_connection, conn.dialect.name == "postgresql")


class Source(NamedTuple):
    """What a worker process connects to: a SQLite file, or a PostgreSQL (libpq) URL."""

    postgres: bool
    target: str


def source(conn: Connection) -> Source | None:
    """What worker processes connect to; None for a database they cannot open (in memory)."""
    url = conn.engine.url
    if conn.dialect.name == "postgresql":  # libpq takes no "+psycopg" driver name
        return Source(True, url.set(drivername="postgresql").render_as_string(hide_password=False))
    database = url.database
    given_as_uri = "uri" in url.query  # a file: URI, not a path a worker could open
    if conn.dialect.name == "sqlite" and database and database != ":memory:" and not given_as_uri:
        return Source(False, database)
    return None


@contextmanager
def connect(source: Source) -> Iterator[Records]:
    """The record tables on a new DB-API connection to the store, closed at the end."""
    with closing(open_driver(source)) as driver:
        yield Records(driver, source.postgres)


def open_driver(source: Source, *, autocommit: bool = False) -> Any:
    """A new DB-API connection to the store, by the driver its engine uses, waiting for a
    PostgreSQL server no longer than the store's engine does, and never creating a SQLite
    file where the store's has gone; ``autocommit``: each statement reads the store as it is
    then, no transaction held between them (SQLite's driver holds none for reads anyway)."""
    if source.postgres:
        import psycopg  # noqa: PLC0415 -- 90 ms to import, only PostgreSQL stores need it

        timeout = postgres_timeout(source.target)
        return psycopg.connect(source.target, autocommit=autocommit, **timeout)
    return sqlite3.connect(f"file:{quote(os.fsencode(source.target))}?mode=rw", uri=True)


def kept_driver(source: Source, *, autocommit: bool = False) -> Any | None:
    """This process's own DB-API connection to the store (:func:`open_driver`), opened by its
    first call and kept for the next: a worker process's, for every range or batch it is
    given, one connection rather than one each. None when it could not be opened (not tried
    again: each try may wait its timeout). Kept by the process's id, so a process forked from
    one that keeps a connection never takes that one for its own; a worker ends by
    ``os._exit``, and the system closes it."""
    key = os.getpid(), source, autocommit
    if key not in _KEPT:
        try:
            _KEPT[key] = open_driver(source, autocommit=autocommit)
        except driver_errors(source):  # the server refusing, the file gone
            _KEPT[key] = None
    return _KEPT[key]


_KEPT: dict[tuple[int, Source, bool], Any] = {}


def drop_kept(source: Source, *, autocommit: bool = False) -> None:
    """Close and forget this process's kept connection to ``source`` (one a read failed on: it
    may be lost), so that its next :func:`kept_driver` opens a new one."""
    driver = _KEPT.pop((os.getpid(), source, autocommit), None)
    if driver is not None:
        with suppress(*driver_errors(source)):
            driver.close()


def driver_errors(source: Source) -> tuple[type[Exception], ...]:
    """What the driver of ``source`` raises when it cannot connect or read."""
    if source.postgres:
        import psycopg  # noqa: PLC0415 -- only PostgreSQL stores need it

        return (psycopg.Error,)
    return (sqlite3.Error,)
