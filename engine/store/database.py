"""Opening the evidence database: SQLite (a file, WAL) by default, PostgreSQL by URL.

``--db`` takes a SQLAlchemy URL (``postgresql://user@host/db`` is read as
psycopg 3) or a plain file path, which means SQLite. Opening a store brings
its schema to the newest Alembic revision first, so a store made by an older
Converge is migrated, never recreated.

SQLite runs in WAL mode with ``synchronous=NORMAL``: a committed transaction
survives the process being killed at any instant (a power cut may lose the
last commits, never tear one). Writes take the write lock at ``BEGIN``
(``BEGIN IMMEDIATE``), so two writers queue instead of failing mid-transaction.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, SQLAlchemyError

from engine.errors import ConvergeError

MIGRATIONS = Path(__file__).with_name("migrations")
BUSY_TIMEOUT_MS = 10_000


class StoreError(ConvergeError):
    """A database that cannot be opened, migrated or written."""


def database_url(target: str) -> str:
    """A SQLAlchemy URL for ``target``: a URL as given (``postgresql`` is psycopg 3); a path
    means a SQLite file."""
    if "://" not in target:
        return f"sqlite:///{Path(target).expanduser().resolve()}"
    try:
        url = make_url(target)
    except ArgumentError as exc:
        raise StoreError(f"--db {target!r} is not a database URL: {exc}") from exc
    if url.drivername in ("postgresql", "postgres"):
        url = url.set(drivername="postgresql+psycopg")
    return url.render_as_string(hide_password=False)


def connect(target: str) -> Engine:
    """An engine for ``target`` (see :func:`database_url`), SQLite tuned as the module says."""
    url = database_url(target)
    if url.startswith("sqlite"):
        engine = create_engine(url, connect_args={"timeout": BUSY_TIMEOUT_MS / 1000})
        event.listen(engine, "connect", _sqlite_pragmas)
        event.listen(engine, "begin", lambda conn: conn.exec_driver_sql("BEGIN IMMEDIATE"))
        return engine
    return create_engine(url, pool_pre_ping=True)


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    # Autocommit at the driver level, so that the "begin" listener decides how a transaction starts.
    dbapi_connection.isolation_level = None
    cursor = dbapi_connection.cursor()
    for pragma in ("journal_mode=WAL", "synchronous=NORMAL", "foreign_keys=ON",
                   f"busy_timeout={BUSY_TIMEOUT_MS}"):  # fmt: skip
        cursor.execute(f"PRAGMA {pragma}")
    cursor.close()


def upgrade(engine: Engine) -> None:
    """Apply every Alembic migration the store lacks (a new store gets them all)."""
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    try:
        with engine.begin() as connection:
            config.attributes["connection"] = connection
            command.upgrade(config, "head")
    except SQLAlchemyError as exc:
        raise StoreError(f"cannot open the store at {describe(engine)}: {reason(exc)}") from exc


def describe(engine: Engine) -> str:
    """The store's URL without its password, for messages."""
    return engine.url.render_as_string(hide_password=True)


def reason(exc: Exception) -> str:
    """The driver's own message when SQLAlchemy wraps one (it names the real cause)."""
    return str(getattr(exc, "orig", None) or exc)
