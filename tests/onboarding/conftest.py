"""Onboarding tests run offline: tiny local MTEB tasks only, nothing from the Hub."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

from tests.accounts.conftest import database_url, migrated_url, postgres_admin  # noqa: F401  (SQLite and Postgres)
from tests.onboarding import tiny_tasks  # noqa: F401  (registers the local tasks)
