"""Holding under load through the real ASGI app: refusals before auth and tokenizing, deadlines that
refund, the timeout headers, the watchdog, /health beside a full thread pool, Retry-After on every 503."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import pytest
from fastapi.testclient import TestClient

from gigarouter.accounts import migrations
from gigarouter.accounts.gate import OpenGate
from gigarouter.api.app import create_app
from gigarouter.engine.sources import embedded_model_dir
from gigarouter.errors import QueueFull
from gigarouter.recipes.sbert import SbertRecipe
from gigarouter.settings import ModelConfig, Settings, default_model
from tests.conftest import FakeEngine, wait_ready

MODEL = "all-minilm-l6-v2"


class SlowEngine(FakeEngine):
    """A fake device that takes ``seconds_per_token`` per token (and may be held by ``gate``)."""

    def __init__(self, seconds_per_token: float = 0.001, **kwargs) -> None:
        super().__init__(**kwargs)
        self.seconds_per_token = seconds_per_token

    def embed(self, batch, *, concurrent: bool = False):
        time.sleep(batch.num_tokens * self.seconds_per_token)
        return super().embed(batch, concurrent=concurrent)


class CountingRecipe:
    """The real MiniLM recipe, counting tokenizer calls; ``hold``, when cleared, blocks them."""

    def __init__(self) -> None:
        self._inner = SbertRecipe.from_checkpoint(embedded_model_dir())
        self.calls = 0
        self.hold = threading.Event()
        self.hold.set()

    def prepare_texts(self, *args, **kwargs):
        self.calls += 1
        self.hold.wait(timeout=30)
        return self._inner.prepare_texts(*args, **kwargs)

    def __getattr__(self, name: str):
        return getattr(self._inner, name)


class CountingGate(OpenGate):
    def __init__(self) -> None:
        self.authentications = 0

    async def authenticate(self, authorization, *, scope):
        self.authentications += 1
        return await super().authenticate(authorization, scope=scope)


def start(tmp_path, engine: FakeEngine, *, recipe=None, gate=None, **settings_changes) -> TestClient:
    """The app on ``engine``, ready, with the engine's gate (if any) back in place afterwards."""
    recipe = recipe or CountingRecipe()
    held, engine.gate = engine.gate, None
    settings = Settings(**{"data_dir": tmp_path / "data", **settings_changes})
    client = TestClient(create_app(settings, loader=lambda config, s: (recipe, engine), gate=gate))
    client.__enter__()
    wait_ready(client)
    engine.gate = held
    engine.entered.clear()
    engine.batches.clear()
    return client


def in_thread(fn: Callable[[], object]) -> tuple[threading.Thread, list]:
    out: list = []
    thread = threading.Thread(target=lambda: out.append(fn()), daemon=True)
    thread.start()
    return thread, out


def wait_for(predicate: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.01)
    raise AssertionError("condition not reached")


def scheduler(client: TestClient):
    return client.app.state.router.deployments[0].scheduler


def post(client: TestClient, text: str, **headers):
    return client.post("/v1/embeddings", json={"model": MODEL, "input": text}, headers=headers)


def test_a_saturated_model_refuses_before_auth_and_tokenizing(tmp_path):
    gate, recipe, accounts = threading.Event(), CountingRecipe(), CountingGate()
    client = start(tmp_path, SlowEngine(gate=gate, token_budget=512), recipe=recipe, gate=accounts,
                   max_queue_wait_ms=200)
    try:
        assert scheduler(client).drain.tokens_per_s > 0                  # seeded at warm-up
        scheduler(client).drain.tokens_per_s = 1000.0                    # pinned, for exact sums
        on_device, first = in_thread(lambda: post(client, "hello"))
        assert client.app.state.router.deployments[0].engine.entered.wait(10)
        queued, second = in_thread(lambda: post(client, "word " * 300))  # 256 tokens: ~0.26 s of work
        wait_for(lambda: scheduler(client).queued_tokens > 0)
        tokenized, authenticated = recipe.calls, accounts.authentications
        refused = post(client, "a short query")
        assert (recipe.calls, accounts.authentications) == (tokenized, authenticated)
    finally:
        gate.set()
    on_device.join(30)
    queued.join(30)
    client.__exit__(None, None, None)
    assert refused.status_code == 429, refused.text
    assert refused.json()["error"]["code"] == "queue_full"
    assert int(refused.headers["retry-after"]) >= 1
    assert [first[0].status_code, second[0].status_code] == [200, 200]


def test_the_exact_check_after_tokenizing_refuses_what_the_estimate_let_through(tmp_path):
    gate, recipe = threading.Event(), CountingRecipe()
    client = start(tmp_path, SlowEngine(gate=gate, token_budget=512), recipe=recipe, max_queue_wait_ms=300)
    scheduler(client).drain.tokens_per_s = 1000.0          # pinned: what the device drains, for exact sums
    try:
        on_device, _ = in_thread(lambda: post(client, "hello"))
        assert client.app.state.router.deployments[0].engine.entered.wait(10)
        queued, _ = in_thread(lambda: post(client, "word " * 150))     # 152 tokens queued: ~0.15 s
        wait_for(lambda: scheduler(client).queued_tokens > 0)
        calls = recipe.calls
        # a 912-byte body: estimated 114 tokens (fits in 0.3 s); counted, 242 (does not)
        refused = post(client, "antidisestablishmentarianism " * 30)
        assert recipe.calls == calls + 1
    finally:
        gate.set()
    on_device.join(30)
    queued.join(30)
    client.__exit__(None, None, None)
    assert refused.status_code == 429 and int(refused.headers["retry-after"]) >= 1


def priced_settings(tmp_path) -> tuple[Settings, str, str]:
    """A server with accounts on SQLite and a priced model; two funded accounts' keys."""
    from gigarouter.accounts import keys
    from gigarouter.accounts.db import make_engine
    from gigarouter.accounts.store import AccountStore, KeySpec

    url = f"sqlite:///{tmp_path / 'accounts.db'}"
    migrations.upgrade(url)
    model = ModelConfig(**{**default_model().__dict__, "price_per_million_usd": 1000.0})
    settings = Settings(data_dir=tmp_path / "data", database_url=url, server_secret="s" * 32, models=(model,))
    engine = make_engine(url)
    try:
        store = AccountStore(engine, server_secret=keys.server_secret(settings))
        made = [store.create_account(credit_micro=1_000_000, key=KeySpec())[1].key for _ in range(2)]
    finally:
        engine.dispose()
    return settings, made[0], made[1]


def balance(client: TestClient, key: str) -> int:
    r = client.get("/v1/usage", headers={"authorization": f"Bearer {key}"})
    assert r.status_code == 200, r.text
    return r.json()["balance_micro"]


def test_a_deadline_takes_queued_work_out_refunds_it_and_answers_503(tmp_path):
    settings, blocker_key, key = priced_settings(tmp_path)
    gate = threading.Event()
    engine = FakeEngine(gate=gate)
    held, engine.gate = engine.gate, None
    client = TestClient(create_app(settings, loader=lambda config, s: (CountingRecipe(), engine)))
    client.__enter__()
    try:
        wait_ready(client)
        engine.gate, engine.batches = held, []
        engine.entered.clear()
        before = balance(client, key)
        blocker, first = in_thread(lambda: post(client, "hello", authorization=f"Bearer {blocker_key}"))
        assert engine.entered.wait(10)
        started = time.monotonic()
        expired = post(client, "this one waits too long", authorization=f"Bearer {key}",
                       **{"X-Request-Timeout": "0.5"})
        waited = time.monotonic() - started
        assert scheduler(client).queued_tokens == 0                        # it left the queue
        gate.set()
        blocker.join(30)
        after = balance(client, key)
    finally:
        gate.set()
        client.__exit__(None, None, None)
    assert expired.status_code == 503, expired.text
    assert expired.json()["error"]["code"] == "timeout" and int(expired.headers["retry-after"]) >= 1
    assert 0.5 <= waited < 30                                              # its own deadline, not 600 s
    assert after == before                                                 # refunded exactly
    assert first[0].status_code == 200
    assert [b.num_sequences for b in engine.batches] == [1]                # the expired input never ran


@pytest.mark.parametrize("header", ["X-Request-Timeout", "X-Stainless-Read-Timeout"])
@pytest.mark.parametrize("value", ["abc", "0", "-1", "nan", "inf", "", "1" * 40])
def test_bad_timeout_headers_are_a_400_naming_the_header(fake_client_factory, header, value):
    client = fake_client_factory()
    r = post(client, "hello", **{header: value})
    assert r.status_code == 400
    error = r.json()["error"]
    assert error["param"] == header and error["code"] == "invalid_header"


def test_timeout_headers_within_and_above_the_server_bound_are_accepted(fake_client_factory):
    client = fake_client_factory(request_timeout_s=30)
    for value in ("0.25", "10", "600", "1e9"):   # more than the server's bound is the server's bound
        assert post(client, "hello", **{"X-Request-Timeout": value, "X-Stainless-Read-Timeout": "600"}).status_code \
            == 200


def test_watchdog_a_hung_device_fails_work_turns_ready_503_then_recovers(tmp_path):
    gate = threading.Event()
    engine = FakeEngine(gate=gate)
    client = start(tmp_path, engine, watchdog_floor_s=0.3)
    try:
        stuck, answer = in_thread(lambda: post(client, "hello"))
        assert engine.entered.wait(10)
        wait_for(lambda: client.get("/ready").status_code == 503)
        ready = client.get("/ready")
        stuck.join(10)
        refused = post(client, "new work")
        gate.set()                                                   # the batch comes back
        wait_for(lambda: client.get("/ready").status_code == 200)
        after = post(client, "after recovery")
    finally:
        gate.set()
        client.__exit__(None, None, None)
    assert "device hung" in ready.json()["error"]["message"] and int(ready.headers["retry-after"]) >= 1
    assert answer[0].status_code == 503 and answer[0].json()["error"]["code"] == "device_hung"
    assert int(answer[0].headers["retry-after"]) >= 1
    assert refused.status_code == 503 and refused.json()["error"]["code"] == "device_hung"
    assert after.status_code == 200


def test_health_and_metrics_answer_while_the_thread_pool_is_full(tmp_path):
    recipe = CountingRecipe()
    client = start(tmp_path, FakeEngine(), recipe=recipe)
    recipe.hold.clear()                                            # every tokenizer call now blocks
    try:
        blocked = [in_thread(lambda: post(client, "blocked"))[0] for _ in range(45)]   # > 40 pool threads
        wait_for(lambda: recipe.calls >= 40)
        health, health_out = in_thread(lambda: client.get("/health"))
        metrics, metrics_out = in_thread(lambda: client.get("/metrics"))
        health.join(10)
        metrics.join(10)
        answered = [health_out[0].status_code if health_out else None,
                    metrics_out[0].status_code if metrics_out else None]
    finally:
        recipe.hold.set()
    for t in blocked:
        t.join(30)
    client.__exit__(None, None, None)
    assert answered == [200, 200]


def test_every_503_while_the_model_loads_carries_retry_after(tmp_path):
    loaded = threading.Event()

    def slow_loader(config, settings):
        loaded.wait(timeout=30)
        return CountingRecipe(), FakeEngine()

    client = TestClient(create_app(Settings(data_dir=tmp_path), loader=slow_loader))
    client.__enter__()
    try:
        ready = client.get("/ready")
        embedding = post(client, "hello")
    finally:
        loaded.set()
        client.__exit__(None, None, None)
    for r in (ready, embedding):
        assert r.status_code == 503 and int(r.headers["retry-after"]) >= 1, (r.status_code, r.headers)


def test_one_saturated_model_does_not_shed_requests_for_another(tmp_path):
    first = default_model()
    other = ModelConfig(**{**first.__dict__, "name": "other-model", "aliases": ()})
    engines = {first.name: FakeEngine(), other.name: FakeEngine()}
    settings = Settings(data_dir=tmp_path / "data", models=(first, other))
    client = TestClient(create_app(settings, loader=lambda config, s: (CountingRecipe(), engines[config.name])))
    client.__enter__()
    try:
        wait_ready(client)
        full = next(d for d in client.app.state.router.deployments if d.name == first.name).scheduler
        full.admission_error = lambda tokens, max_wait_s=None: QueueFull("full", retry_after=3.0)
        assert client.app.state.router.saturated(10) is None           # the other model can take it
        served = client.post("/v1/embeddings", json={"model": "other-model", "input": "hello"})
        refused = post(client, "hello")
    finally:
        client.__exit__(None, None, None)
    assert served.status_code == 200
    assert refused.status_code == 429 and refused.headers["retry-after"] == "3"
