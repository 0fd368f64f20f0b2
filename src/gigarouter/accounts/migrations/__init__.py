"""Alembic migrations for the accounts schema, packaged with gigarouter and run from code.

    upgrade("sqlite:////path/gigarouter.db")                    # to the newest revision
    upgrade(url, revision="0001")                               # or to a given one
    current(url)   -> "0004" | None                             # None: an empty database

The same revisions serve SQLite and Postgres. On Postgres the upgrade holds a
transaction-scoped advisory lock, so gateways starting together migrate once.
"""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, text

from gigarouter.accounts.db import is_sqlite, make_engine, transaction
from gigarouter.settings import ConfigError

HERE = Path(__file__).resolve().parent
#: Advisory lock id (classid, objid) taken while migrating a Postgres database.
_MIGRATION_LOCK = (0x6772_6F75, 0)


def _config(connection: Connection | None = None) -> Config:
    config = Config()
    config.set_main_option("script_location", str(HERE))
    config.attributes["connection"] = connection
    return config


def head() -> str:
    """The newest revision these migrations know."""
    return ScriptDirectory.from_config(_config()).get_current_head()


def upgrade(database_url: str, revision: str = "head") -> None:
    engine = make_engine(database_url, pool_size=1)
    try:
        with transaction(engine, write=True) as conn:
            if not is_sqlite(engine):
                conn.execute(text("SELECT pg_advisory_xact_lock(:a, :b)"),
                             {"a": _MIGRATION_LOCK[0], "b": _MIGRATION_LOCK[1]})
            command.upgrade(_config(conn), revision)
    finally:
        engine.dispose()


def downgrade(database_url: str, revision: str) -> None:
    engine = make_engine(database_url, pool_size=1)
    try:
        with transaction(engine, write=True) as conn:
            command.downgrade(_config(conn), revision)
    finally:
        engine.dispose()


def current(database_url: str) -> str | None:
    engine = make_engine(database_url, pool_size=1)
    try:
        with transaction(engine, write=False) as conn:
            return MigrationContext.configure(conn).get_current_revision()
    finally:
        engine.dispose()


def ensure_current(database_url: str, *, migrate: bool) -> None:
    """Upgrade when ``migrate`` (the SQLite default), else insist the database is already at head."""
    if migrate:
        upgrade(database_url)
    found = current(database_url)
    if found != head():
        raise ConfigError(f"the accounts database is at revision {found or 'none (empty)'} and this gigarouter "
                          f"needs {head()}: run `gigarouter db upgrade`")
