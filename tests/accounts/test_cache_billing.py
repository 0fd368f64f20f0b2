"""Cached tokens in the books (SQLite and Postgres): billed at the cached price, recorded apart, and one
account's entries never showing in another's cached_tokens."""

from __future__ import annotations

import asyncio

import pytest
import sqlalchemy as sa
from fastapi.testclient import TestClient

from gigarouter.accounts import ledger
from gigarouter.accounts.metering import metered
from gigarouter.api.app import create_app
from gigarouter.settings import ModelConfig, default_model
from tests.accounts.helpers import check_invariants, funded, started
from tests.accounts.test_http_money import account_with, store_for
from tests.conftest import FakeEngine, fake_loader, wait_ready

PRICE, CACHED_PRICE = 1000.0, 250.0          # $ per 1M tokens: 1000 and 250 micro-dollars a token
MODEL = "all-minilm-l6-v2"


def test_cost_is_rounded_up_once_for_the_whole_request():
    price, cached = ledger.price_micro_per_million(0.5), ledger.price_micro_per_million(0.1)
    # 1 computed token at $0.5/M and 2 cached at $0.1/M: 0.7 micro-dollars, one micro-dollar in all
    assert ledger.cost_micro(3, price, cached_tokens=2, cached_price_micro_per_million=cached) == 1
    assert ledger.cost_micro(3, price) == 2 and ledger.cost_micro(3, price, cached_tokens=3) == 0
    with pytest.raises(ValueError):
        ledger.cost_micro(3, price, cached_tokens=4)


def test_settle_charges_the_cached_part_at_the_cached_price(settings):
    async def scenario():
        async with started(settings) as gate:
            principal, _ = await funded(gate, 1_000_000)
            async with metered(gate, principal, model="m", tokens=100, price_per_million_usd=1.0,
                               request_id="a") as meter:
                assert meter.charge.cost_micro == 100                  # reserved at the full bound
                charged = await meter.settle(status=200, latency_ms=1.0, price_per_million_usd=0.5, tokens=100,
                                             provider="local", cached_tokens=40, cached_price_per_million_usd=0.1)
            async with metered(gate, principal, model="m", tokens=10, price_per_million_usd=1.0,
                               request_id="b") as meter:          # every token cached, free by default
                free = await meter.settle(status=200, latency_ms=1.0, price_per_million_usd=1.0, tokens=10,
                                          provider="cache", cached_tokens=10)
            return charged, free, (await gate.get_account(principal.account_id)).balance_micro

    charged, free, balance = asyncio.run(scenario())
    assert charged == 60 * 0.5 + 40 * 0.1 == 34 and free == 0 and balance == 1_000_000 - 34
    assert _records(settings.resolved_database_url) == [("a", 100, 40, 34, "local"), ("b", 10, 10, 0, "cache")]


def _records(url: str) -> list[tuple]:
    engine = sa.create_engine(url)
    try:
        check_invariants(engine)
        with engine.connect() as c:
            return [tuple(r) for r in c.execute(sa.text(
                "SELECT request_id, tokens, cached_tokens, cost_micro, provider FROM usage_records "
                "ORDER BY id")).all()]
    finally:
        engine.dispose()


def test_http_bills_hits_at_the_cached_price_per_account(settings):
    model = ModelConfig(**{**default_model().__dict__, "price_per_million_usd": PRICE,
                           "cached_price_per_million_usd": CACHED_PRICE})
    settings = settings.with_(models=(model,))
    a_id, a_key = account_with(settings, credit_micro=1_000_000)
    b_id, b_key = account_with(settings, credit_micro=1_000_000)
    engine = FakeEngine()
    with TestClient(create_app(settings, loader=fake_loader(engine))) as client:
        wait_ready(client)

        def post(key: str, texts: list[str]):
            r = client.post("/v1/embeddings", json={"model": MODEL, "input": texts},
                            headers={"authorization": f"Bearer {key}", "x-request-id": f"r{len(seen)}"})
            assert r.status_code == 200, r.text
            seen.append(r)
            usage = r.json()["usage"]
            cached = usage["prompt_tokens_details"]["cached_tokens"]
            return r.headers["x-gigarouter-cache"], usage["prompt_tokens"], cached

        seen: list = []
        # "hello world" is 4 tokens, "good day" 4, "new words" 4 ([CLS] ... [SEP]).
        assert post(a_key, ["hello world", "good day"]) == ("miss", 8, 0)
        assert post(a_key, ["new words", "hello world"]) == ("partial", 8, 4)
        assert post(b_key, ["hello world"]) == ("miss", 4, 0)          # A's entry is not B's
        assert post(b_key, ["hello world"]) == ("hit", 4, 4)
        assert seen[-1].headers["x-gigarouter-provider"] == "cache"
        assert post(a_key, ["hello world", "good day"]) == ("hit", 8, 8)
        usage = client.get("/v1/usage?group_by=model", headers={"authorization": f"Bearer {a_key}"}).json()
    assert [(d["group"], d["tokens"], d["cached_tokens"]) for d in usage["data"]] == [(MODEL, 24, 12)]
    rows = _records(settings.resolved_database_url)
    assert rows == [("r0", 8, 0, 8 * 1000, "local"), ("r1", 8, 4, 4 * 1000 + 4 * 250, "local"),
                    ("r2", 4, 0, 4 * 1000, "local"), ("r3", 4, 4, 4 * 250, "cache"),
                    ("r4", 8, 8, 8 * 250, "cache")]
    with store_for(settings) as store:
        assert store.get_account(a_id).balance_micro == 1_000_000 - 8000 - 5000 - 2000
        assert store.get_account(b_id).balance_micro == 1_000_000 - 4000 - 1000
        with store.engine.connect() as c:      # every reservation was taken at the full bound
            reserved = c.execute(sa.text("SELECT amount_micro FROM ledger_entries WHERE kind = 'reserve' "
                                         "ORDER BY id")).scalars().all()
    assert reserved == [-8000, -8000, -4000, -4000, -8000]
