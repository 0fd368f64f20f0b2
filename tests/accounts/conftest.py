"""Fixtures: every database test runs on SQLite (a temporary file) and on Postgres (a fresh schema).

Postgres is ``GIGAROUTER_TEST_POSTGRES_URL`` (default: the ``test`` database at
127.0.0.1:5432) and Redis ``GIGAROUTER_TEST_REDIS_URL`` (default 127.0.0.1:6379).
Either one missing skips its tests on a developer machine and fails them in CI
(the ``CI`` environment variable is set).
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa

from gigarouter.accounts import migrations
from gigarouter.accounts.db import normalize_url
from gigarouter.settings import Settings

POSTGRES_URL = os.environ.get("GIGAROUTER_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
REDIS_URL = os.environ.get("GIGAROUTER_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
SECRET = "test-server-secret-0123456789abcdef"


def _unavailable(what: str, why: Exception) -> None:
    message = f"{what} is not reachable: {why}"
    if os.environ.get("CI"):
        pytest.fail(f"{message} (CI must test against it)")
    pytest.skip(message)


@pytest.fixture(scope="session")
def postgres_admin() -> Iterator[sa.Engine]:
    engine = sa.create_engine(normalize_url(POSTGRES_URL), isolation_level="AUTOCOMMIT",
                              connect_args={"connect_timeout": 3})
    try:
        with engine.connect() as conn:
            conn.exec_driver_sql("SELECT 1")
    except sa.exc.OperationalError as exc:
        engine.dispose()
        _unavailable("PostgreSQL", exc)
    yield engine
    engine.dispose()


@pytest.fixture(scope="session")
def redis_url() -> str:
    import redis

    client = redis.Redis.from_url(REDIS_URL, socket_connect_timeout=3)
    try:
        client.ping()
    except redis.RedisError as exc:
        _unavailable("Redis", exc)
    finally:
        client.close()
    return REDIS_URL


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """An empty database: a SQLite file, or a Postgres schema of its own (dropped afterwards)."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'accounts.db'}"
        return
    admin: sa.Engine = request.getfixturevalue("postgres_admin")
    schema = f"gr_test_{uuid.uuid4().hex[:16]}"
    with admin.connect() as conn:
        conn.exec_driver_sql(f'CREATE SCHEMA "{schema}"')
    url = normalize_url(POSTGRES_URL).update_query_dict({"options": f"-csearch_path={schema}"})
    try:
        yield url.render_as_string(hide_password=False)
    finally:
        with admin.connect() as conn:
            conn.exec_driver_sql(f'DROP SCHEMA "{schema}" CASCADE')


@pytest.fixture
def migrated_url(database_url: str) -> str:
    migrations.upgrade(database_url)
    return database_url


@pytest.fixture
def settings(migrated_url: str, tmp_path: Path) -> Settings:
    return Settings(data_dir=tmp_path / "data", database_url=migrated_url, server_secret=SECRET)
