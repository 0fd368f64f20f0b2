"""Rate limits: token-bucket arithmetic, OpenAI headers, Redis atomicity across two processes, the gate's use."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import uuid

import pytest

from gigarouter.accounts.limits import InProcessLimiter, Limit, RedisLimiter, _duration
from gigarouter.accounts.store import KeySpec
from gigarouter.errors import RateLimited
from tests.accounts.helpers import WORKERS, funded, started, worker_env


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.mark.parametrize(("seconds", "text"), [(0, "0ms"), (0.0201, "21ms"), (1, "1s"), (1.5, "1.5s"),
                                               (360, "6m0s"), (61.25, "1m1.25s")])
def test_reset_durations_read_like_openais(seconds, text):
    assert _duration(seconds) == text


def test_token_bucket_admits_a_burst_then_the_refill_rate():
    clock = Clock()
    limiter = InProcessLimiter(clock=clock)
    limit = Limit(requests=3, tokens=100)
    headers = [limiter.take("k", limit, requests=1, tokens=0) for _ in range(3)]
    assert [h["x-ratelimit-remaining-requests"] for h in headers] == ["2", "1", "0"]
    assert headers[-1]["x-ratelimit-reset-requests"] == "1m0s" and headers[-1]["x-ratelimit-limit-tokens"] == "100"
    with pytest.raises(RateLimited) as info:
        limiter.take("k", limit, requests=1, tokens=0)
    assert info.value.retry_after == pytest.approx(20.0)            # one request refills in 60 s / 3
    assert info.value.headers["Retry-After"] == "20"
    assert info.value.headers["x-ratelimit-remaining-requests"] == "0"
    clock.now += 20
    limiter.take("k", limit, requests=1, tokens=0)                    # refilled exactly one


def test_a_refused_call_takes_nothing_and_huge_calls_are_refused_outright():
    limiter = InProcessLimiter(clock=Clock())
    limit = Limit(requests=10, tokens=100)
    limiter.take("k", limit, requests=0, tokens=90)
    with pytest.raises(RateLimited):
        limiter.take("k", limit, requests=0, tokens=20)
    assert limiter.take("k", limit, requests=0, tokens=10)["x-ratelimit-remaining-tokens"] == "0"
    assert limiter.take("k", limit, requests=1, tokens=0)["x-ratelimit-remaining-requests"] == "9"
    with pytest.raises(RateLimited, match="limit is 100 tokens"):
        limiter.take("other", limit, requests=0, tokens=101)
    assert limiter.take("free", Limit(), requests=1, tokens=10**9) == {}


@pytest.mark.redis
def test_redis_buckets_match_the_in_process_arithmetic(redis_url):
    clock_ms = [1_000_000]
    limiter = RedisLimiter.from_url(redis_url, prefix=f"gr-test-{uuid.uuid4().hex}", clock_ms=lambda: clock_ms[0])
    limit = Limit(requests=3, tokens=100)

    async def scenario():
        try:
            got = [await limiter.hit("k", limit, requests=1, tokens=30) for _ in range(3)]
            with pytest.raises(RateLimited) as info:
                await limiter.hit("k", limit, requests=1, tokens=0)
            clock_ms[0] += 20_000
            after = await limiter.hit("k", limit, requests=1, tokens=0)
            return got, info.value, after
        finally:
            await limiter.close()

    got, refused, after = asyncio.run(scenario())
    assert [h["x-ratelimit-remaining-tokens"] for h in got] == ["70", "40", "10"]
    assert refused.retry_after == pytest.approx(20.0) and "requests" in refused.message
    assert after["x-ratelimit-remaining-requests"] == "0"
    assert after["x-ratelimit-remaining-tokens"] == "43"   # 10 + 20 s x 100/60


@pytest.mark.redis
def test_redis_limits_hold_across_two_processes(redis_url):
    prefix = f"gr-test-{uuid.uuid4().hex}"
    procs = [subprocess.Popen([sys.executable, str(WORKERS / "limit_worker.py"), redis_url, prefix, "1000"],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              env=worker_env()) for _ in range(2)]
    try:
        for proc in procs:
            assert proc.stdout.readline().strip() == "ready", proc.stderr.read()
        for proc in procs:                      # both are connected and waiting: start them together
            proc.stdin.write("go\n")
            proc.stdin.flush()
        counts = [tuple(map(int, proc.communicate(timeout=120)[0].split())) for proc in procs]
    finally:
        for proc in procs:
            proc.kill() if proc.poll() is None else None
    assert [fallbacks for _, _, fallbacks in counts] == [0, 0]          # every call went through Redis
    # 2 x 1000 attempts at each bucket: exactly the limit gets through, no more.
    assert sum(requests for requests, _, _ in counts) == 1500          # the requests-per-period limit
    assert sum(tokens for _, tokens, _ in counts) == 1500              # the tokens-per-period limit (7 each)


@pytest.mark.redis
def test_redis_down_falls_back_to_in_process_limits():
    limiter = RedisLimiter.from_url("redis://127.0.0.1:1/0")           # nothing listens on port 1

    async def scenario():
        try:
            await limiter.hit("k", Limit(requests=1), requests=1, tokens=0)
            with pytest.raises(RateLimited):
                await limiter.hit("k", Limit(requests=1), requests=1, tokens=0)
        finally:
            await limiter.close()

    asyncio.run(scenario())
    assert limiter.fallbacks == 2


def test_gate_applies_each_keys_limits(settings):
    async def scenario():
        async with started(settings) as gate:
            principal, _ = await funded(gate, 1_000, KeySpec(rpm=2, tpm=50))
            first = await gate.check_rate(principal, tokens=0)
            tokens = await gate.check_rate(principal, tokens=40)
            await gate.check_rate(principal, tokens=0)
            with pytest.raises(RateLimited) as requests_refused:
                await gate.check_rate(principal, tokens=0)
            with pytest.raises(RateLimited) as tokens_refused:
                await gate.check_rate(principal, tokens=20)
            by_default, _ = await funded(gate, 1_000)
            return first, tokens, requests_refused.value, tokens_refused.value, await gate.check_rate(
                by_default, tokens=0)

    first, tokens, requests_refused, tokens_refused, by_default = asyncio.run(scenario())
    assert first["x-ratelimit-limit-requests"] == "2" and first["x-ratelimit-remaining-requests"] == "1"
    assert tokens["x-ratelimit-remaining-tokens"] == "10"
    assert requests_refused.status == 429 and int(requests_refused.headers["Retry-After"]) >= 1
    assert "tokens" in tokens_refused.message
    # A key without limits of its own has the settings' defaults, and so the headers too.
    assert by_default["x-ratelimit-limit-requests"] == "10000" and by_default["x-ratelimit-limit-tokens"] == "10000000"
