"""One real backend gigarouter (the embedded all-minilm-l6-v2) for every router test of the session."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.router.helpers import backend_server


@pytest.fixture(scope="session")
def backend(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with backend_server(tmp_path_factory.mktemp("backend")) as base:
        yield base
