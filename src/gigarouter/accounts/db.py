"""Engines and transactions for the accounts database (SQLite by default, Postgres in production).

SQLite: a file created 0600 (``private_file``), WAL (readers never block the
writer), a 30 s busy timeout, foreign keys on, and ``BEGIN IMMEDIATE`` for write transactions. A deferred
transaction that reads and then writes can fail with SQLITE_BUSY without
waiting; taking the write lock at BEGIN makes writers queue on the busy
timeout instead. Postgres: psycopg 3, sessions in UTC, READ COMMITTED (every
money update is a single conditional UPDATE, which Postgres re-checks against
the newest row version, so no stronger isolation is needed).
"""

from __future__ import annotations

import logging
import os
import stat
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from sqlalchemy import Connection, Engine, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.engine.url import URL

log = logging.getLogger(__name__)
SQLITE_BUSY_TIMEOUT_MS = 30_000
_WRITE = "gigarouter_write"


def normalize_url(url: str | URL) -> URL:
    """``postgres://`` and ``postgresql://`` mean psycopg 3 here (not psycopg2)."""
    parsed = make_url(url)
    if parsed.drivername in ("postgres", "postgresql"):
        parsed = parsed.set(drivername="postgresql+psycopg")
    return parsed


def is_sqlite(engine_or_url: Engine | URL | str) -> bool:
    url = engine_or_url.url if isinstance(engine_or_url, Engine) else make_url(engine_or_url)
    return url.get_backend_name() == "sqlite"


def sqlite_path(engine: Engine) -> Path | None:
    """The database file of a SQLite engine; None for in-memory databases."""
    database = engine.url.database
    if not database or database == ":memory:" or database.startswith("file:"):
        return None
    return Path(database)


def make_engine(url: str | URL, *, pool_size: int = 8) -> Engine:
    """An engine whose pool holds ``pool_size`` connections (match it to the threads that use it)."""
    parsed = normalize_url(url)
    if parsed.get_backend_name() == "sqlite":
        return _sqlite_engine(parsed, pool_size)
    engine = create_engine(parsed, pool_size=pool_size, max_overflow=pool_size, pool_pre_ping=True)
    event.listen(engine, "connect", _postgres_on_connect)
    return engine


def _sqlite_engine(url: URL, pool_size: int) -> Engine:
    if url.database and url.database != ":memory:" and not url.database.startswith("file:"):
        private_file(Path(url.database))
    engine = create_engine(url, pool_size=pool_size, max_overflow=pool_size,
                           connect_args={"check_same_thread": False, "timeout": SQLITE_BUSY_TIMEOUT_MS / 1000})
    event.listen(engine, "connect", _sqlite_on_connect)
    event.listen(engine, "begin", _sqlite_on_begin)
    return engine


def private_file(path: Path) -> None:
    """Create the SQLite file readable by its owner only (0600), before SQLite creates it with the umask's
    0644; its -wal and -shm files take the same mode. A new directory for it is 0700. An existing file is
    left as it is, with a warning if others may read it (it holds balances, emails and password hashes)."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    try:
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
    except FileExistsError:
        if os.name == "posix" and path.stat().st_mode & (stat.S_IRWXG | stat.S_IRWXO):
            log.warning("%s can be read by other users; run: chmod 600 %s*", path, path)


def _sqlite_on_connect(dbapi_connection, connection_record) -> None:
    # Hand transaction control to SQLAlchemy's "begin" event below instead of
    # the sqlite3 module's implicit, late BEGIN.
    dbapi_connection.isolation_level = None
    cursor = dbapi_connection.cursor()
    try:
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA synchronous=FULL")    # money: a commit survives power loss too
    finally:
        cursor.close()


def _sqlite_on_begin(conn: Connection) -> None:
    conn.exec_driver_sql("BEGIN IMMEDIATE" if conn.get_execution_options().get(_WRITE) else "BEGIN")


def _postgres_on_connect(dbapi_connection, connection_record) -> None:
    # Day boundaries in usage reports are UTC whatever the server's default.
    autocommit = dbapi_connection.autocommit
    dbapi_connection.autocommit = True
    try:
        dbapi_connection.execute("SET TIME ZONE 'UTC'")
    finally:
        dbapi_connection.autocommit = autocommit


@contextmanager
def transaction(engine: Engine, *, write: bool = True) -> Iterator[Connection]:
    """One transaction: committed when the block ends, rolled back if it raises."""
    with engine.connect() as conn:
        if write:
            conn.execution_options(**{_WRITE: True})
        with conn.begin():
            yield conn
