"""Opening the evidence database: SQLite (a file, WAL) by default, PostgreSQL by URL.

``--db`` takes a SQLAlchemy URL (``postgresql://user@host/db`` is read as
psycopg 3) or a plain file path, which means SQLite. Opening a store brings
its schema to the newest Alembic revision first, so a store made by an older
Converge is migrated, never recreated.

SQLite runs in WAL mode with ``synchronous=NORMAL``: a committed transaction
survives the process being killed at any instant (a power cut may lose the
last commits, never tear one). Write transactions (connections with the
:data:`WRITE` option) take the write lock at ``BEGIN`` (``BEGIN IMMEDIATE``),
so two writers queue instead of failing mid-transaction; readers (``audit
verify``) take no lock and never hold a collector up.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import Connection, Engine, create_engine, event, inspect, text
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError, NoSuchModuleError, SQLAlchemyError

from engine.errors import StoreError

if TYPE_CHECKING:
    from alembic.config import Config

MIGRATIONS = Path(__file__).with_name("migrations")
BUSY_TIMEOUT_MS = 10_000


def database_url(target: str) -> str:
    """A SQLAlchemy URL for ``target``: a URL as given (``postgresql`` is psycopg 3); a path
    means a SQLite file."""
    if "://" not in target:  # a path: its ? and % are the file's, not a query's or escapes
        path = str(Path(target).expanduser().resolve())
        return URL.create("sqlite", database=path).render_as_string(hide_password=False)
    try:
        url = make_url(target)
        url.port  # noqa: B018 -- a port that is not a number raises only when read
    except (ArgumentError, ValueError) as exc:
        raise StoreError(f"--db {target!r} is not a database URL: {exc}") from exc
    if url.drivername in ("postgresql", "postgres"):
        url = url.set(drivername="postgresql+psycopg")
    return url.render_as_string(hide_password=False)


CONNECT_S = 10
"""How long a PostgreSQL connection may take: a server that does not answer (its host
gone, packets dropped) is then an outage, not a hang. A URL's own ``connect_timeout`` (or
``service``) and ``$PGCONNECT_TIMEOUT`` win."""


def postgres_timeout(url: str) -> dict[str, Any]:
    """The driver's arguments that bound a PostgreSQL connection's wait (:data:`CONNECT_S`),
    unless the URL or the environment says how long."""
    given = {"connect_timeout", "service"} & set(make_url(url).query)
    return {} if given or "PGCONNECT_TIMEOUT" in os.environ else {"connect_timeout": CONNECT_S}


WRITE = "converge_write"
"""Execution option of a connection that writes: on SQLite it takes the write lock at BEGIN."""


def connect(target: str) -> Engine:
    """An engine for ``target`` (see :func:`database_url`), SQLite tuned as the module says."""
    url = database_url(target)
    try:
        if not url.startswith("sqlite"):
            return create_engine(url, pool_pre_ping=True, connect_args=postgres_timeout(url))
        engine = create_engine(url, connect_args={"timeout": BUSY_TIMEOUT_MS / 1000})
    except (ArgumentError, NoSuchModuleError, ImportError) as exc:
        raise StoreError(f"--db {target!r}: no database driver for it ({exc})") from exc
    event.listen(engine, "connect", _sqlite_pragmas)
    event.listen(engine, "begin", _sqlite_begin)
    return engine


@contextmanager
def writing(engine: Engine) -> Iterator[Connection]:
    """A write transaction: committed at the end, rolled back on error."""
    with engine.connect().execution_options(**{WRITE: True}) as conn, conn.begin():
        yield conn


def _sqlite_begin(conn: Connection) -> None:
    """Writers take the write lock at once (``BEGIN IMMEDIATE``); readers never block them."""
    immediate = conn.get_execution_options().get(WRITE, False)
    conn.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    # Autocommit at the driver level, so that the "begin" listener decides how a transaction starts.
    dbapi_connection.isolation_level = None
    cursor = dbapi_connection.cursor()
    for pragma in (
        "journal_mode=WAL",
        "synchronous=NORMAL",
        "foreign_keys=ON",
        f"busy_timeout={BUSY_TIMEOUT_MS}",
    ):
        cursor.execute(f"PRAGMA {pragma}")
    cursor.close()


SCHEMA = "0005"
"""The newest migration's revision: the schema this Converge reads and writes
(``tests/test_store.py`` holds it to Alembic's head). Readers compare it with the store's
``alembic_version`` themselves, so that a command that only reads (``converge query``) does not
import Alembic (a quarter of a second) to learn it."""


def _config() -> Config:
    from alembic.config import Config  # noqa: PLC0415 -- only a collector migrates: see SCHEMA

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    return config


def upgrade(engine: Engine) -> None:
    """Apply every Alembic migration the store lacks (a new store gets them all)."""
    from alembic import command  # noqa: PLC0415 -- as above

    config = _config()
    try:
        with writing(engine) as connection:
            config.attributes["connection"] = connection
            command.upgrade(config, "head")
    except SQLAlchemyError as exc:
        raise StoreError(f"cannot open the store at {describe(engine)}: {reason(exc)}") from exc


def require_current(engine: Engine) -> None:
    """Refuse a database that is not a Converge store at this Converge's schema.

    For readers (``converge audit``): they must neither create a store where a
    path was mistyped, nor migrate one they were asked only to read.
    """
    url = engine.url
    if url.get_backend_name() == "sqlite" and url.database and not Path(url.database).exists():
        raise StoreError(f"cannot open the store at {describe(engine)}: there is no such file")
    try:
        with engine.connect() as conn:
            current = (
                list(conn.scalars(text("SELECT version_num FROM alembic_version")))
                if inspect(conn).has_table("alembic_version")
                else []
            )
    except SQLAlchemyError as exc:
        raise StoreError(f"cannot open the store at {describe(engine)}: {reason(exc)}") from exc
    if not current:
        raise StoreError(f"cannot open the store at {describe(engine)}: it holds no Converge store")
    if current != [SCHEMA]:
        raise StoreError(
            f"the store at {describe(engine)} is at schema revision {', '.join(current)}, "
            f"this Converge reads {SCHEMA}: a collector (converge run --db) migrates it"
        )


def describe(engine: Engine) -> str:
    """The store's URL without its password, for messages."""
    return engine.url.render_as_string(hide_password=True)


def reason(exc: Exception) -> str:
    """The first line of the driver's own message when SQLAlchemy wraps one (it names the real
    cause; the lines after it are hints, and a user error is one line)."""
    text = str(getattr(exc, "orig", None) or exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
