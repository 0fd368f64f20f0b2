"""Redis for the cache's store tests: the accounts tests' fixture (skipped without Redis, failed in CI)."""

from tests.accounts.conftest import redis_url  # noqa: F401
