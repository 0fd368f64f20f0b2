"""TEI's /embed and Cohere's /v2/embed go through the same key check and the same metering as
/v1/embeddings: the same charge for the same tokens, the same refusals, each in its own error shape."""

from __future__ import annotations

import httpx

from tests.accounts.test_http_money import COST, TEXT, account_with, books, priced_model
from tests.conftest import FakeEngine, fake_loader, live_server

MODEL = "all-minilm-l6-v2"


def test_tei_and_cohere_are_keyed_and_charged_like_openai(settings):
    settings = settings.with_(models=(priced_model(),), cache="off")
    account_id, key = account_with(settings, credit_micro=3 * COST)
    auth = {"authorization": f"Bearer {key}"}
    with live_server(settings, loader=fake_loader(FakeEngine())) as base:
        # no key: 401 in each protocol's shape
        r = httpx.post(f"{base}/embed", json={"inputs": TEXT})
        assert r.status_code == 401 and r.json()["error_type"] == "Unauthorized" and r.json()["error"]
        r = httpx.post(f"{base}/v2/embed", json={"model": MODEL, "texts": [TEXT], "input_type": "search_document"})
        assert r.status_code == 401 and set(r.json()) == {"id", "message"}
        # each protocol charges the same 4 tokens
        r = httpx.post(f"{base}/v1/embeddings", json={"model": MODEL, "input": TEXT}, headers=auth)
        assert r.status_code == 200
        assert httpx.post(f"{base}/embed", json={"inputs": TEXT}, headers=auth).status_code == 200
        r = httpx.post(f"{base}/v2/embed", json={"model": MODEL, "texts": [TEXT], "input_type": "search_document"},
                       headers=auth)
        assert r.status_code == 200 and r.json()["meta"]["billed_units"]["input_tokens"] == 4
        # the credit is spent: 402 in each shape
        r = httpx.post(f"{base}/embed", json={"inputs": TEXT}, headers=auth)
        assert r.status_code == 402 and r.json()["error_type"] == "Validation"
        r = httpx.post(f"{base}/v2/embed", json={"model": MODEL, "texts": [TEXT], "input_type": "search_query"},
                       headers=auth)
        assert r.status_code == 402 and "credit" in r.json()["message"]
    totals, balance = books(settings, account_id)
    assert totals["settled"] == 3 and totals["usage_cost"] == 3 * COST and balance == 0
