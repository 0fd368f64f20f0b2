"""The model page's providers table and the "API providers" count, in-process on the fake engine."""

from __future__ import annotations

import re

from fastapi.testclient import TestClient

from gigarouter.settings import ProviderConfig
from tests.web.test_pages import text_of

MODEL = "all-minilm-l6-v2"
#: A remote provider of the default model on a loopback port nothing listens on: always down.
EAST = ProviderConfig(name="east", base_url="http://127.0.0.1:9/v1", models=((MODEL, MODEL),), timeout_s=2.0)


def provider_rows(html: str) -> dict[str, str]:
    """Each row of the providers table as its text, by provider name."""
    table = re.search(r'<table class="providers">(.*?)</table>', html, re.S)
    assert table, "the model page has no providers table"
    rows = re.findall(r"<tr>\s*<th scope=\"row\">(.*?)</tr>", table.group(1), re.S)
    return {text_of(row).split()[0]: text_of(row).strip() for row in rows}


def test_model_page_lists_the_local_provider_with_its_state_price_latency_and_fingerprint(
        fake_client_factory) -> None:
    client: TestClient = fake_client_factory()
    api = client.get(f"/v1/models/{MODEL}").json()
    local = api["providers"][0]
    assert local["name"] == "local" and local["state"] == "healthy" and local["fingerprint"]

    page = client.get(f"/models/{MODEL}")
    assert page.status_code == 200
    rows = provider_rows(page.text)
    assert list(rows) == ["local"]
    row = rows["local"]
    assert "healthy" in row and "$0.002" in row and local["fingerprint"] in row
    assert re.search(r"\d+(\.\d)? ms", row), row          # p50 of the probe round
    assert "100%" in row                                  # uptime: every probe answered
    assert f"<code>{local['fingerprint']}</code>" in page.text
    text = text_of(page.text)
    assert "API providers 1" in text
    assert f"Vector fingerprint {api['fingerprint']}" in text and "x-gigarouter-fingerprint" in text
    assert "mismatch:" not in text and "down:" not in text     # notes only for states present


def test_a_down_remote_provider_is_listed_and_not_counted(fake_client_factory) -> None:
    client: TestClient = fake_client_factory(providers=(EAST,), breaker_cooldown_s=0.05)
    page = client.get(f"/models/{MODEL}").text
    rows = provider_rows(page)
    assert list(rows) == ["local", "east"]
    assert "healthy" in rows["local"]
    east = rows["east"]
    assert "down" in east and "remote" in east and "$0.002" in east
    assert "0%" in east and " — " in east                 # no latency, no fingerprint: it never answered
    assert 'class="badge down" title="not answering now' in page
    text = text_of(page)
    assert "API providers 1" in text and "down: not answering" in text
    compare = text_of(client.get("/compare", params={"models": MODEL}).text)
    assert "API providers 1" in compare

    # A provider whose vectors differ from the model's is listed as mismatch, never counted.
    route = client.app.state.router.find(MODEL)
    route.binding("east").mismatch = True
    page = client.get(f"/models/{MODEL}").text
    assert "mismatch" in provider_rows(page)["east"]
    assert 'title="returns different vectors; never serves this model"' in page
    text = text_of(page)
    assert "API providers 1" in text and "mismatch: returns different vectors" in text


def test_a_coming_soon_model_has_no_providers_table(fake_client_factory) -> None:
    client: TestClient = fake_client_factory()
    page = client.get("/models/linq-embed-mistral").text
    assert 'class="providers"' not in page and "x-gigarouter-fingerprint" not in page
    assert "API providers 0" in text_of(page)


def test_a_model_whose_providers_are_all_down_is_not_live_but_lists_them(fake_client_factory) -> None:
    client: TestClient = fake_client_factory(providers=(EAST,), breaker_cooldown_s=60.0)
    local = client.app.state.router.find(MODEL).binding("local")
    for _ in range(local.health.failures_to_open):        # the local breaker opens for a minute
        local.health.failure()
    page = client.get(f"/models/{MODEL}").text
    rows = provider_rows(page)
    assert "down" in rows["local"] and "down" in rows["east"]
    text = text_of(page)
    assert "API providers 0" in text and "embeddings · coming soon" in text
