"""Router tests' fixtures: one real backend gigarouter (the embedded all-minilm-l6-v2) for the session,
and Redis for the cache's store tests (the accounts tests' fixture: skipped without Redis, failed in CI)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.accounts.conftest import redis_url  # noqa: F401
from tests.router.helpers import backend_server


@pytest.fixture(scope="session")
def backend(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with backend_server(tmp_path_factory.mktemp("backend")) as base:
        yield base
