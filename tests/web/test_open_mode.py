"""Open mode (no accounts, the loopback default): the catalog and try-it work; account pages say they are off."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from gigarouter.api.app import create_app
from gigarouter.settings import Settings
from tests.web.conftest import csrf_of


@pytest.fixture(scope="module")
def open_client(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    settings = Settings(data_dir=tmp_path_factory.mktemp("open"), batch_token_budget=1024)
    with TestClient(create_app(settings), base_url="http://127.0.0.1") as client:
        deadline = time.monotonic() + 120
        while client.get("/ready").status_code != 200:
            assert time.monotonic() < deadline, "the app did not become ready"
            time.sleep(0.05)
        yield client
    assert not any(Path(settings.data_dir).iterdir()), "open mode wrote files to the data dir"


def test_anyone_may_try_a_live_model_in_open_mode(open_client: TestClient) -> None:
    page = open_client.get("/models/all-minilm-l6-v2")
    assert 'id="try-a"' in page.text and "Voting needs accounts" not in page.text     # live: no vote ask
    assert "Voting needs accounts" in open_client.get("/models/linq-embed-mistral").text
    assert "sign up" not in page.text.lower().split("<main", 1)[0]          # no account links in the header
    r = open_client.post("/models/all-minilm-l6-v2/try", json={"a": "cats", "b": "kittens"},
                         headers={"X-CSRF-Token": csrf_of(page.text), "Accept": "application/json"})
    assert r.status_code == 200 and -1.0 <= r.json()["similarity"] <= 1.0


def test_try_on_a_model_that_is_not_live_says_so(open_client: TestClient) -> None:
    page = open_client.get("/models/linq-embed-mistral")
    assert "opens when Linq-Embed-Mistral is live" in page.text
    token = csrf_of(open_client.get("/models/all-minilm-l6-v2").text)
    r = open_client.post("/models/linq-embed-mistral/try", json={"a": "x", "b": "y"},
                         headers={"X-CSRF-Token": token, "Accept": "application/json"})
    assert r.status_code == 409 and "not live" in r.json()["error"]


@pytest.mark.parametrize("path", ["/signup", "/signin", "/dashboard"])
def test_account_pages_explain_that_accounts_are_off(open_client: TestClient, path: str) -> None:
    r = open_client.get(path)
    assert r.status_code == 404 and "Accounts are off" in r.text
