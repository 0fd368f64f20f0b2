"""Batch tests run on the accounts databases: SQLite and Postgres (fixtures from tests/accounts)."""

from tests.accounts.conftest import database_url, migrated_url, postgres_admin, settings  # noqa: F401
