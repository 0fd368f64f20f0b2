"""GET /v1/models lists what this server serves; coming-soon cards are in GET /v1/catalog (issue 15, part 2)."""

from __future__ import annotations

import time

from fastapi.testclient import TestClient

from gigarouter.api.app import create_app
from gigarouter.catalog.cards import load_cards
from gigarouter.settings import ModelConfig, Settings, default_model
from tests.conftest import FakeEngine, fake_loader


def test_every_listed_model_can_be_used(fake_client_factory):
    client: TestClient = fake_client_factory()
    listed = client.get("/v1/models").json()["data"]
    assert [m["id"] for m in listed] == ["all-minilm-l6-v2"]
    for entry in listed:
        assert entry["status"] == "live"
        assert client.get(f"/v1/models/{entry['id']}").status_code == 200
        r = client.post("/v1/embeddings", json={"model": entry["id"], "input": "x"})
        assert r.status_code == 200, r.text


def test_a_catalog_model_not_served_here_is_a_404_that_points_to_the_catalog(fake_client_factory):
    client: TestClient = fake_client_factory()
    r = client.get("/v1/models/linq-embed-mistral")
    assert r.status_code == 404 and "GET /v1/catalog" in r.json()["error"]["message"]
    assert client.get("/v1/models/nope").status_code == 404


def test_the_catalog_lists_every_card_with_its_status_here(fake_client_factory):
    client: TestClient = fake_client_factory()
    catalog = client.get("/v1/catalog").json()
    assert catalog["object"] == "list"
    by_id = {m["id"]: m for m in catalog["data"]}
    assert set(by_id) == set(load_cards())
    assert by_id["all-minilm-l6-v2"]["status"] == "live"
    assert by_id["all-minilm-l6-v2"]["served_as"] == "all-minilm-l6-v2"
    soon = by_id["linq-embed-mistral"]
    assert soon["status"] == "coming_soon" and soon["served_as"] is None and soon["license"] == "cc-by-nc-4.0"
    one = client.get("/v1/catalog/Linq-AI-Research/Linq-Embed-Mistral")
    assert one.status_code == 200 and one.json()["id"] == "linq-embed-mistral"
    assert client.get("/v1/catalog/nope").status_code == 404


def test_a_model_that_failed_to_load_leaves_the_list_but_says_why(tmp_path):
    def loader(config, settings):
        if config.name == "broken":
            raise RuntimeError("weights are corrupt")
        return fake_loader(FakeEngine())(config, settings)

    broken = ModelConfig(name="broken", recipe="sbert", weights="/nowhere")
    with TestClient(create_app(Settings(data_dir=tmp_path, models=(default_model(), broken)), loader=loader)) as c:
        deadline = time.monotonic() + 10
        while c.app.state.router.deployments[1].state == "loading" and time.monotonic() < deadline:
            time.sleep(0.01)
        assert [m["id"] for m in c.get("/v1/models").json()["data"]] == ["all-minilm-l6-v2"]
        assert c.get("/v1/models/broken").json()["status"] == "failed"


def test_a_loading_model_is_listed(tmp_path):
    import threading

    release = threading.Event()

    def slow(config, settings):
        release.wait(timeout=30)
        return fake_loader(FakeEngine())(config, settings)

    with TestClient(create_app(Settings(data_dir=tmp_path), loader=slow)) as client:
        try:
            listed = client.get("/v1/models").json()["data"]
            assert [(m["id"], m["status"]) for m in listed] == [("all-minilm-l6-v2", "loading")]
        finally:
            release.set()
