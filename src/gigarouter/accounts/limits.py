"""Per-key rate limits, requests and tokens per minute: token buckets, in-process or in Redis.

Algorithm. Each limited dimension of a key is a bucket holding up to
``limit`` units that refills continuously at ``limit / period`` per second
(period = 60 s). A call asks for some requests and some tokens at once; it is
admitted only if every bucket holds enough, and then takes from all of them,
so a refused call consumes nothing. Bursts up to a full minute's allowance
are allowed; the sustained rate never exceeds the limit.

Across processes the bucket lives in Redis and one Lua script reads, refills
and takes it atomically, using Redis's clock (the gateways' clocks may
disagree; Redis is one clock). If Redis becomes unreachable the gateway falls
back to its own in-process buckets rather than refusing all traffic.

Responses carry OpenAI's headers: ``x-ratelimit-{limit,remaining,reset}-
{requests,tokens}``; a refusal is ``errors.RateLimited`` with Retry-After.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from gigarouter.errors import RateLimited

log = logging.getLogger(__name__)

PERIOD_S = 60.0
_DIMENSIONS = ("requests", "tokens")


@dataclass(frozen=True)
class Limit:
    requests: int | None = None      # per period; None = unlimited
    tokens: int | None = None
    period_s: float = PERIOD_S

    @property
    def unlimited(self) -> bool:
        return self.requests is None and self.tokens is None


class Limiter(Protocol):
    async def hit(self, bucket: str, limit: Limit, *, requests: int, tokens: int) -> dict[str, str]:
        """Take from the buckets and return the rate headers, or raise RateLimited (with them)."""

    async def close(self) -> None: ...


def _dims(limit: Limit, requests: int, tokens: int) -> list[tuple[str, int, int]]:
    """(name, capacity, cost) for each limited dimension; refuses a cost no bucket could ever hold."""
    dims = [(name, cap, cost) for name, cap, cost in zip(_DIMENSIONS, (limit.requests, limit.tokens),
                                                        (requests, tokens), strict=True) if cap is not None]
    for name, cap, cost in dims:
        if cost > cap:
            raise RateLimited(f"this request needs {cost} {name} but the key's limit is {cap} {name} "
                              f"per {_duration(limit.period_s)}", retry_after=limit.period_s)
    return dims


def _outcome(dims: list[tuple[str, int, int]], levels: list[float], *, allowed: bool, wait_s: float,
             period_s: float) -> dict[str, str]:
    headers: dict[str, str] = {}
    for (name, cap, _), level in zip(dims, levels, strict=True):
        headers[f"x-ratelimit-limit-{name}"] = str(cap)
        headers[f"x-ratelimit-remaining-{name}"] = str(max(0, math.floor(level + 1e-9)))
        headers[f"x-ratelimit-reset-{name}"] = _duration((cap - level) * period_s / cap)
    if not allowed:
        short = ", ".join(name for (name, _, cost), level in zip(dims, levels, strict=True) if cost > level)
        raise RateLimited(f"rate limit reached for {short}; retry in {_duration(wait_s)}",
                          retry_after=wait_s, headers=headers)
    return headers


def _duration(seconds: float) -> str:
    """OpenAI's reset format: 20ms, 1.5s, 6m0s."""
    ms = max(0, math.ceil(seconds * 1000 - 1e-6))
    if ms < 1000:
        return f"{ms}ms"
    minutes, rest_ms = divmod(ms, 60_000)
    secs = f"{rest_ms / 1000:.3f}".rstrip("0").rstrip(".")
    return f"{minutes}m{secs}s" if minutes else f"{secs}s"


class InProcessLimiter:
    """Buckets in this process's memory: correct for one gateway process."""

    def __init__(self, *, clock: Callable[[], float] = time.monotonic, max_buckets: int = 100_000) -> None:
        self._clock = clock
        self._max = max_buckets
        self._buckets: dict[str, tuple[float, float]] = {}   # name -> (level, stamp)
        self._lock = threading.Lock()

    async def hit(self, bucket: str, limit: Limit, *, requests: int, tokens: int) -> dict[str, str]:
        return self.take(bucket, limit, requests=requests, tokens=tokens)

    def take(self, bucket: str, limit: Limit, *, requests: int, tokens: int) -> dict[str, str]:
        dims = _dims(limit, requests, tokens)
        if not dims:
            return {}
        with self._lock:
            now = self._clock()
            names = [f"{bucket}:{name}" for name, _, _ in dims]
            levels = [self._level(n, cap, now, limit.period_s) for n, (_, cap, _) in zip(names, dims, strict=True)]
            waits = [(cost - lvl) * limit.period_s / cap
                     for (_, cap, cost), lvl in zip(dims, levels, strict=True) if cost > lvl]
            allowed = not waits
            if allowed:
                levels = [lvl - cost for (_, _, cost), lvl in zip(dims, levels, strict=True)]
                for name, level in zip(names, levels, strict=True):
                    self._buckets[name] = (level, now)
                self._evict(now, limit.period_s)
        return _outcome(dims, levels, allowed=allowed, wait_s=max(waits, default=0.0), period_s=limit.period_s)

    def _level(self, name: str, cap: int, now: float, period_s: float) -> float:
        state = self._buckets.get(name)
        if state is None:
            return float(cap)
        level, stamp = state
        return min(float(cap), level + max(0.0, now - stamp) * cap / period_s)

    def _evict(self, now: float, period_s: float) -> None:
        # A bucket untouched for a whole period is full again: forgetting it changes nothing.
        if len(self._buckets) > self._max:
            self._buckets = {k: v for k, v in self._buckets.items() if now - v[1] < period_s}

    async def close(self) -> None:
        return None


# KEYS: one bucket per limited dimension. ARGV: now_ms ('' = Redis's clock), period_ms, then
# (capacity, cost) per key. Returns {allowed, wait_ms, level_1, level_2, ...} (levels after the call).
_SCRIPT = """
local now = tonumber(ARGV[1])
if not now then
  local t = redis.call('TIME')
  now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
local period = tonumber(ARGV[2])
local levels, allowed, wait = {}, 1, 0
for i = 1, #KEYS do
  local cap, cost = tonumber(ARGV[1 + 2 * i]), tonumber(ARGV[2 + 2 * i])
  local state = redis.call('HMGET', KEYS[i], 'l', 't')
  local level = cap
  if state[1] then
    local elapsed = math.max(0, now - tonumber(state[2]))
    level = math.min(cap, tonumber(state[1]) + elapsed * cap / period)
  end
  levels[i] = level
  if cost > level then
    allowed = 0
    wait = math.max(wait, (cost - level) * period / cap)
  end
end
local out = {allowed, tostring(wait)}
for i = 1, #KEYS do
  if allowed == 1 then
    levels[i] = levels[i] - tonumber(ARGV[2 + 2 * i])
    redis.call('HSET', KEYS[i], 'l', tostring(levels[i]), 't', tostring(now))
    redis.call('PEXPIRE', KEYS[i], math.ceil(period))
  end
  out[#out + 1] = tostring(levels[i])
end
return out
"""


class RedisLimiter:
    """Buckets in Redis, shared by every gateway process that uses the same Redis."""

    def __init__(self, client, *, prefix: str = "gigarouter:rl", clock_ms: Callable[[], int] | None = None,
                 fallback: InProcessLimiter | None = None) -> None:
        self._redis = client                      # redis.asyncio.Redis
        self._script = client.register_script(_SCRIPT)
        self._prefix = prefix
        self._clock_ms = clock_ms                 # tests only; production uses Redis's clock
        self._fallback = fallback or InProcessLimiter()
        self._warned_at = -math.inf
        self.fallbacks = 0                        # calls limited in-process because Redis failed

    @classmethod
    def from_url(cls, url: str, *, max_connections: int = 32, **kwargs) -> RedisLimiter:
        import redis.asyncio

        # A bounded pool that makes callers queue for a connection: under a burst,
        # an unbounded one runs into "too many connections" and would fall back.
        pool = redis.asyncio.BlockingConnectionPool.from_url(
            url, max_connections=max_connections, timeout=2.0, socket_timeout=2.0, socket_connect_timeout=2.0)
        return cls(redis.asyncio.Redis.from_pool(pool), **kwargs)

    async def hit(self, bucket: str, limit: Limit, *, requests: int, tokens: int) -> dict[str, str]:
        import redis

        dims = _dims(limit, requests, tokens)
        if not dims:
            return {}
        # One hash slot for all of a key's buckets (Redis Cluster needs that for a multi-key script).
        keys = [f"{self._prefix}:{{{bucket}}}:{name}" for name, _, _ in dims]
        now = "" if self._clock_ms is None else str(self._clock_ms())
        args = [now, str(int(limit.period_s * 1000))]
        for _, cap, cost in dims:
            args += [str(cap), str(cost)]
        try:
            reply = await self._script(keys=keys, args=args)
        except redis.RedisError as exc:
            self.fallbacks += 1
            self._warn(exc)
            return await self._fallback.hit(bucket, limit, requests=requests, tokens=tokens)
        levels = [float(x) for x in reply[2:]]
        return _outcome(dims, levels, allowed=int(reply[0]) == 1, wait_s=float(reply[1]) / 1000,
                        period_s=limit.period_s)

    def _warn(self, exc: Exception) -> None:
        now = time.monotonic()
        if now - self._warned_at > 60:
            self._warned_at = now
            log.warning("Redis rate limiter unavailable (%s); limiting in this process only", exc)

    async def close(self) -> None:
        await self._redis.aclose()
