"""Onboarding tests run offline: tiny local MTEB tasks only, nothing from the Hub."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

from gigarouter.accounts.db import make_engine
from gigarouter.onboarding.store import OnboardingStore
from tests.accounts.conftest import database_url, migrated_url, postgres_admin  # noqa: F401  (SQLite and Postgres)
from tests.onboarding import tiny_tasks  # noqa: F401  (registers the local tasks)


@pytest.fixture
def any_store(migrated_url):  # noqa: F811  (the fixture imported above)
    """The onboarding store on SQLite and on Postgres (a schema of its own), with a liveness lock of its own."""
    engine = make_engine(migrated_url, pool_size=2)
    store = OnboardingStore(engine)
    yield store
    store.close()
    engine.dispose()
