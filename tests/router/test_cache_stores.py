"""The cache's stores for real: Redis (own key prefix, cleaned up), the file store (a temporary directory,
shared by two processes), and what an in-process entry really costs in memory."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
import tracemalloc
import uuid
from pathlib import Path

import numpy as np
import pytest

from gigarouter.metrics import Metrics
from gigarouter.router.cache import (
    MEMORY_ENTRY_OVERHEAD,
    EmbeddingCache,
    FileStore,
    MemoryStore,
    RedisStore,
    build_cache,
    decode_entry,
    directory_name,
    encode_entry,
)
from gigarouter.settings import ConfigError, Settings
from tests.router.test_cache import Provider, embed, expected, items_call, make_route

DIM = 6


@pytest.fixture
def redis_prefix(redis_url):
    """A key prefix of this test's own; its keys are deleted afterwards (nothing else is touched)."""
    import redis

    prefix = f"gr-test-cache-{uuid.uuid4().hex[:12]}"
    yield prefix
    client = redis.Redis.from_url(redis_url)
    try:
        for key in client.scan_iter(match=f"{prefix}:*", count=500):
            client.delete(key)
    finally:
        client.close()


@pytest.mark.redis
def test_redis_entries_are_raw_float32_with_a_ttl_and_shared_by_two_gateways(redis_url, redis_prefix):
    import redis

    async def scenario():
        stores = [RedisStore(redis_url, prefix=redis_prefix, ttl_s=600) for _ in range(2)]
        one, two = (make_route(Provider(), cache=EmbeddingCache(s)) for s in stores)
        call = items_call((1, 2), (3,))
        first = await embed(one, call)
        second = await embed(two, items_call((3,), (1, 2), (4,)))       # another gateway, the same Redis
        for s in stores:
            await s.close()
        return first, second, one.bindings[0].provider, two.bindings[0].provider

    first, second, p1, p2 = asyncio.run(scenario())
    assert first.cache == "miss" and second.cache == "partial" and p2.calls == [["0:[4]"]]
    np.testing.assert_array_equal(second.result.vectors, expected(items_call((3,), (1, 2), (4,))))
    client = redis.Redis.from_url(redis_url)
    try:
        keys = sorted(client.scan_iter(match=f"{redis_prefix}:m:*"))
        assert len(keys) == 3                                          # (1, 2), (3,) and (4,)
        raw = client.get(keys[0])
        assert len(raw) == 4 + 4 * DIM and decode_entry(raw, DIM) is not None
        assert 0 < client.ttl(keys[0]) <= 600
    finally:
        client.close()


@pytest.mark.redis
def test_redis_down_is_a_miss_and_the_request_still_succeeds():
    async def scenario():
        metrics = Metrics()
        store = RedisStore("redis://127.0.0.1:1/0", prefix="gr-test-nowhere", ttl_s=60, timeout_s=0.5)
        r = make_route(Provider(), cache=EmbeddingCache(store, metrics=metrics))
        started = time.perf_counter()
        got = await embed(r, items_call((1,)))
        await r.cache.flush()
        again = await embed(r, items_call((1,)))               # within the back-off: Redis is not asked
        await r.cache.close()
        return got, again, time.perf_counter() - started, metrics

    got, again, seconds, metrics = asyncio.run(scenario())
    assert got.cache == again.cache == "miss" and seconds < 5
    assert metrics.registry.get_sample_value("gigarouter_cache_errors_total", {"model": "m", "op": "get"}) == 1


def test_the_file_store_persists_evicts_within_its_bound_and_counts(tmp_path):
    async def fill(cache, start, n):
        return await embed(make_route(Provider(), cache=cache), items_call(*[(start + i,) * 200 for i in range(n)]))

    async def scenario():
        metrics = Metrics()
        store = FileStore(tmp_path, max_bytes=200_000, metrics=metrics)
        cache = EmbeddingCache(store)
        first = await fill(cache, 0, 10)
        await cache.flush()                                    # written after the answer went out
        cache._inflight.clear()
        again = await fill(cache, 0, 10)                       # all hits, from disk
        await cache.close()
        reopened = EmbeddingCache(FileStore(tmp_path, max_bytes=200_000, metrics=metrics))
        after = await fill(reopened, 0, 10)                    # a new process would see them too
        for start in range(100, 2100, 100):                   # past the bound: the oldest go
            await fill(reopened, start, 100)
        await reopened.close()
        assert first.cache == "miss"
        return again, after, reopened.store, metrics

    again, after, store, metrics = asyncio.run(scenario())
    assert again.cache == after.cache == "hit"
    assert (tmp_path / directory_name("m")).is_dir()
    assert store.evictions["m"] > 0
    assert metrics.registry.get_sample_value("gigarouter_cache_evictions_total", {"model": "m"}) == store.evictions["m"]
    assert metrics.registry.get_sample_value("gigarouter_cache_bytes", {"model": "m"}) <= 200_000


_WRITER = """
import asyncio, sys
from gigarouter.router.cache import FileStore, encode_entry
import numpy as np
async def main():
    store = FileStore(sys.argv[1], max_bytes=10_000_000)
    await store.put("m", [(bytes([i]) * 32, encode_entry(np.full(4, i, dtype=np.float32), i)) for i in range(50)])
    await store.close()
asyncio.run(main())
"""


def test_two_processes_share_the_file_store(tmp_path):
    from tests.accounts.helpers import worker_env

    subprocess.run([sys.executable, "-c", _WRITER, str(tmp_path)], check=True, env=worker_env(), timeout=120)
    store = FileStore(tmp_path, max_bytes=10_000_000)
    got = asyncio.run(store.get("m", [bytes([7]) * 32, bytes([99]) * 32]))
    asyncio.run(store.close())
    assert decode_entry(got[0], 4).tokens == 7 and got[1] is None


def test_the_memory_bound_counts_what_an_entry_really_costs():
    """MEMORY_ENTRY_OVERHEAD is within 25% of what tracemalloc sees per entry beyond the vector's bytes."""
    async def fill(store, n, dim):
        await store.put("m", [(i.to_bytes(32, "little"), encode_entry(np.zeros(dim, np.float32), 3))
                              for i in range(n)])

    store = MemoryStore(1 << 30)
    n, dim = 5000, 384
    raws = 0
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    asyncio.run(fill(store, n, dim))
    used = tracemalloc.get_traced_memory()[0] - before
    tracemalloc.stop()
    raws = n * (4 + 4 * dim)
    per_entry = (used - raws) / n
    print(f"{per_entry:.0f} bytes per entry beyond the vector")
    assert 0.75 * per_entry <= MEMORY_ENTRY_OVERHEAD <= 1.25 * per_entry, per_entry
    assert store.bytes["m"] == n * (4 + 4 * dim + MEMORY_ENTRY_OVERHEAD)


def test_the_settings_choose_the_store(tmp_path):
    assert build_cache(Settings(data_dir=tmp_path, cache="off")) is None
    assert isinstance(build_cache(Settings(data_dir=tmp_path)).store, MemoryStore)
    file_cache = build_cache(Settings(data_dir=tmp_path, cache="file"))
    assert isinstance(file_cache.store, FileStore) and file_cache.store.path == tmp_path / "embedding-cache"
    redis_cache = build_cache(Settings(data_dir=tmp_path, cache="redis", cache_url="redis://127.0.0.1:6379/3",
                                       cache_scope="global"))
    assert isinstance(redis_cache.store, RedisStore) and redis_cache.scope("acct_x") == "global"
    asyncio.run(redis_cache.close())
    for bad in ({"cache": "disk"}, {"cache": "redis"}, {"cache_scope": "team"}, {"cache_max_bytes": -1},
                {"cache_ttl_s": 1.5}, {"cache_prefix": ""}):
        with pytest.raises(ConfigError):
            Settings(data_dir=tmp_path, **bad)


def test_the_cache_settings_in_the_config_file(tmp_path):
    from gigarouter.settings import load_settings

    path = tmp_path / "gigarouter.toml"
    path.write_text('cache = "file"\ncache_path = "~/emb-cache"\ncache_scope = "global"\ncache_file_max_bytes = 1000\n'
                    '[[models]]\nname = "mini"\nrecipe = "sbert"\nweights = "w"\ncached_price_per_million_usd = 0.5\n'
                    '[[providers]]\nname = "acme"\nbase_url = "https://api.example.com/v1"\nmodels = ["e5"]\n'
                    'cached_price_per_million_usd = 1\n')
    settings = load_settings(path)
    assert settings.cache == "file" and settings.cache_scope == "global" and settings.cache_file_max_bytes == 1000
    assert settings.resolved_cache_path == Path("~/emb-cache").expanduser()
    assert settings.models[0].cached_price_per_million_usd == 0.5
    assert settings.providers[0].cached_price_per_million_usd == 1
    for bad in ('cached_price_per_million_usd = -1', 'cached_price_per_million_usd = "free"'):
        path.write_text(f'[[models]]\nname = "mini"\nrecipe = "sbert"\nweights = "w"\n{bad}\n')
        with pytest.raises(ConfigError, match="cached_price_per_million_usd"):
            load_settings(path)
