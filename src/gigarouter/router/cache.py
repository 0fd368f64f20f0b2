"""The per-input embedding cache: every input is computed once per vector space and scope.

It sits in front of every provider: ``Route.embed`` hands a prepared request to
``EmbeddingCache.run``, which answers what it can from the store, computes only
the distinct inputs it lacks with ``Route.run`` (the same choice of provider and
the same failover as without a cache) and reassembles the vectors in input order,
each index once. The API, the web's try-it and the in-process ``Embedder`` all go
through it. docs/cache.md is the operator's page.

Key: blake2b-256 over the scope (the caller's account, ``anonymous`` in open mode,
or ``global``), the route's name, the route's vector fingerprint and the input as
the model sees it: its exact token ids and pooled-span start when the route has
the model's tokenizer (so instruction, input_type and truncation are in it), else
the exact text or client token ids together with input_type, instruction and
truncate. A route whose fingerprint is not known yet is not cached, so a new
fingerprint (new weights, revision or recipe) never hits old entries.
``dimensions``, normalisation and the output encoding are applied after the
cache: an entry is the raw float32 vector a provider returned, whatever the
request asked for.

Entry: a 4-byte little-endian token count (the input's share of the billed
tokens when it was computed; exactly its token count where the route has the
tokenizer), then the vector as little-endian float32, so a hit is bit for bit
the vector the provider returned.

Single flight: while an input is being looked up or computed, an identical input
(same key, so same scope) of any request in this process waits for that result
instead of computing it again; duplicates inside one request are computed once.
If the request computing it fails or is cancelled, the waiters compute it
themselves. Redis and the file store write new entries after the answer has
gone out (``flush`` waits for them); until written they stay in flight, so
nobody computes them again meanwhile. Store failures (Redis or the file store down) are logged, counted
and answered as misses; for a few seconds after one the store is not asked.
"""

from __future__ import annotations

import array
import asyncio
import hashlib
import logging
import math
import re
import struct
import sys
import threading
import time
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import numpy as np
from cachetools import LRUCache

from gigarouter.errors import NoProviderAvailable
from gigarouter.metrics import Metrics
from gigarouter.providers.base import EmbedCall, ProviderResult

if TYPE_CHECKING:
    from gigarouter.router.route import Plan, Route, Routed
    from gigarouter.settings import Settings

log = logging.getLogger(__name__)

_TOKENS = struct.Struct("<I")
_VERSION = b"gigarouter-emb-1"          # bump when the key or entry layout changes
#: Per-entry bookkeeping of the in-process store beyond the entry's bytes (key object, the LRU's
#: dict and order slots, the tuple, the bytes header): tracemalloc measures about 350 on CPython
#: 3.11 (tests/router/test_cache_stores.py checks it stays within 25%).
MEMORY_ENTRY_OVERHEAD = 400
#: After a store failure, how long the store is left alone (answers are misses meanwhile).
STORE_BACKOFF_S = 5.0
_WARN_EVERY_S = 60.0
#: Requests with more inputs than this are keyed in a worker thread.
_KEYS_INLINE = 64
HIT, PARTIAL, MISS = "hit", "partial", "miss"


# -- stores ------------------------------------------------------------------------------------------------------

class Store(Protocol):
    """Where entries live. Keys are 32-byte digests; values are encoded entries (bytes)."""

    kind: str
    slow: bool                   # does I/O: written after the answer (the entries stay in flight till then)

    async def get(self, model: str, keys: Sequence[bytes]) -> list[bytes | None]: ...

    async def put(self, model: str, items: Sequence[tuple[bytes, bytes]]) -> None: ...

    async def close(self) -> None: ...


class _CountingLRU(LRUCache):
    """cachetools' LRU, bounded by its values' sizes, telling its owner about each eviction."""

    def __init__(self, max_bytes: int, on_evict) -> None:
        super().__init__(maxsize=max_bytes, getsizeof=lambda value: value[2])
        self._on_evict = on_evict

    def popitem(self):
        key, value = super().popitem()
        self._on_evict(value)
        return key, value


class MemoryStore:
    """In this process, least recently used first out, within ``max_bytes`` (vectors plus bookkeeping)."""

    kind = "memory"
    slow = False                 # no I/O: entries are written before the answer goes out

    def __init__(self, max_bytes: int, *, metrics: Metrics | None = None) -> None:
        self.max_bytes = max_bytes
        self.metrics = metrics
        self.bytes: dict[str, int] = defaultdict(int)        # per model
        self.evictions: dict[str, int] = defaultdict(int)
        self._lru = _CountingLRU(max_bytes, self._evicted)

    async def get(self, model: str, keys: Sequence[bytes]) -> list[bytes | None]:
        out = []
        for key in keys:
            value = self._lru.get(key)
            out.append(value[1] if value is not None else None)
        return out

    async def put(self, model: str, items: Sequence[tuple[bytes, bytes]]) -> None:
        for key, raw in items:
            size = len(raw) + MEMORY_ENTRY_OVERHEAD
            if size > self.max_bytes or key in self._lru:
                continue    # too big to keep at all, or already there (the same key is the same vector)
            self._lru[key] = (model, raw, size)
            self._account(model, size)

    def _evicted(self, value: tuple[str, bytes, int]) -> None:
        model, _, size = value
        self.evictions[model] += 1
        self._account(model, -size)
        if self.metrics is not None:
            self.metrics.cache_evictions.labels(model).inc()

    def _account(self, model: str, delta: int) -> None:
        self.bytes[model] += delta
        if self.metrics is not None:
            self.metrics.cache_bytes.labels(model).set(self.bytes[model])

    @property
    def entries(self) -> int:
        return len(self._lru)

    async def close(self) -> None:
        self._lru.clear()


class RedisStore:
    """Shared by every gateway on the same Redis: ``{prefix}:{model}:{key hex}`` -> entry bytes, with a TTL.

    Redis bounds itself (``maxmemory`` with an LRU policy: docs/cache.md); this
    process neither counts its bytes nor its evictions (Redis's INFO does).
    """

    kind = "redis"
    slow = True                  # entries are written after the answer went out

    def __init__(self, url: str, *, prefix: str, ttl_s: int, timeout_s: float = 1.0,
                 max_connections: int = 32) -> None:
        import redis.asyncio

        pool = redis.asyncio.BlockingConnectionPool.from_url(
            url, max_connections=max_connections, timeout=timeout_s, socket_timeout=timeout_s,
            socket_connect_timeout=timeout_s)
        self._redis = redis.asyncio.Redis.from_pool(pool)
        self.prefix = prefix
        self.ttl_s = ttl_s

    def name(self, model: str, key: bytes) -> str:
        return f"{self.prefix}:{model}:{key.hex()}"

    async def get(self, model: str, keys: Sequence[bytes]) -> list[bytes | None]:
        return list(await self._redis.mget([self.name(model, k) for k in keys]))

    async def put(self, model: str, items: Sequence[tuple[bytes, bytes]]) -> None:
        pipe = self._redis.pipeline(transaction=False)
        for key, raw in items:
            pipe.set(self.name(model, key), raw, ex=self.ttl_s or None)
        await pipe.execute()

    async def close(self) -> None:
        await self._redis.aclose()


class FileStore:
    """On local disk (diskcache: SQLite plus files), one directory per model, each within ``max_bytes``.

    Safe to share between processes on one host (a server and ``gigarouter embed``).
    Least recently used entries go first once a directory passes its bound.
    """

    kind = "file"
    slow = True

    def __init__(self, path: Path, *, max_bytes: int, metrics: Metrics | None = None) -> None:
        self.path = Path(path)
        self.max_bytes = max_bytes
        self.metrics = metrics
        self.evictions: dict[str, int] = defaultdict(int)
        self._caches: dict[str, object] = {}
        self._lock = threading.Lock()

    def _cache(self, model: str):
        with self._lock:
            cache = self._caches.get(model)
            if cache is None:
                import diskcache

                # cull_limit=0: nothing is evicted behind our back; put() culls and counts.
                cache = diskcache.Cache(str(self.path / directory_name(model)), size_limit=self.max_bytes,
                                        cull_limit=0, eviction_policy="least-recently-used")
                self._caches[model] = cache
            return cache

    async def get(self, model: str, keys: Sequence[bytes]) -> list[bytes | None]:
        return await asyncio.to_thread(self._get, model, list(keys))

    def _get(self, model: str, keys: list[bytes]) -> list[bytes | None]:
        cache = self._cache(model)
        return [cache.get(k) for k in keys]

    async def put(self, model: str, items: Sequence[tuple[bytes, bytes]]) -> None:
        await asyncio.to_thread(self._put, model, list(items))

    def _put(self, model: str, items: list[tuple[bytes, bytes]]) -> None:
        cache = self._cache(model)
        with cache.transact():
            for key, raw in items:
                cache.set(key, raw)
        evicted = cache.cull() if cache.volume() > self.max_bytes else 0
        if evicted:
            self.evictions[model] += evicted
        if self.metrics is not None:
            if evicted:
                self.metrics.cache_evictions.labels(model).inc(evicted)
            self.metrics.cache_bytes.labels(model).set(cache.volume())

    async def close(self) -> None:
        with self._lock:
            caches, self._caches = list(self._caches.values()), {}
        for cache in caches:
            cache.close()


def directory_name(model: str) -> str:
    """A model's directory under the file store: readable, and distinct for names that differ."""
    safe = re.sub(r"[^A-Za-z0-9._-]", "_", model)[:80]
    return f"{safe}-{hashlib.blake2b(model.encode(), digest_size=4).hexdigest()}"


def build_store(settings: Settings, metrics: Metrics | None = None) -> Store | None:
    """The store the settings ask for; None when the cache is off."""
    if settings.cache == "off":
        return None
    if settings.cache == "redis":
        return RedisStore(settings.cache_url, prefix=settings.cache_prefix, ttl_s=settings.cache_ttl_s)
    if settings.cache == "file":
        return FileStore(settings.resolved_cache_path, max_bytes=settings.cache_file_max_bytes, metrics=metrics)
    return MemoryStore(settings.cache_max_bytes, metrics=metrics)


def build_cache(settings: Settings, metrics: Metrics | None = None) -> EmbeddingCache | None:
    store = build_store(settings, metrics)
    return EmbeddingCache(store, scope=settings.cache_scope, metrics=metrics) if store is not None else None


# -- entries and keys --------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Entry:
    vector: np.ndarray       # [dim] float32, read-only
    tokens: int


def encode_entry(vector: np.ndarray, tokens: int) -> bytes:
    return _TOKENS.pack(tokens) + np.asarray(vector, dtype="<f4").tobytes()


def decode_entry(raw: bytes | None, dim: int | None) -> Entry | None:
    """The entry, or None if absent or not a well-formed entry of this width (a miss)."""
    if raw is None:
        return None
    raw = bytes(raw)
    if len(raw) < _TOKENS.size + 4 or (len(raw) - _TOKENS.size) % 4:
        return None
    vector = np.frombuffer(raw, dtype="<f4", offset=_TOKENS.size)
    if dim is not None and vector.shape[0] != dim:
        return None
    return Entry(vector=vector.astype(np.float32, copy=False), tokens=_TOKENS.unpack_from(raw)[0])


def _field(h, data: bytes) -> None:
    h.update(len(data).to_bytes(8, "little") + data)


def _ids(ids: Sequence[int]) -> bytes:
    """Token ids as little-endian int64 (array is about twice as fast as numpy for a short list)."""
    packed = array.array("q", ids)
    if sys.byteorder != "little":
        packed.byteswap()
    return packed.tobytes()


def input_keys(call: EmbedCall, *, scope: str, route: str, fingerprint: str) -> list[bytes]:
    """One key per input of ``call`` (see the module's docstring)."""
    base = hashlib.blake2b(digest_size=32, person=_VERSION)
    for part in (scope, route, fingerprint):
        _field(base, part.encode())
    keys = []
    if call.items is not None:
        base.update(b"T")                       # token ids the model sees, with the pooled span's start
        for item in call.items:
            h = base.copy()
            ids = _ids(item.token_ids)
            h.update(int(item.pool_start).to_bytes(8, "little") + len(ids).to_bytes(8, "little") + ids)
            keys.append(h.digest())
        return keys
    base.update(b"R")                           # no tokenizer here: what the client sent, and how
    for part in (call.input_type, call.truncate):
        _field(base, part.encode())
    _field(base, b"\x00" if call.instruction is None else b"\x01" + call.instruction.encode())
    if call.texts is not None:
        for text in call.texts:
            h = base.copy()
            h.update(b"s")
            _field(h, text.encode())
            keys.append(h.digest())
    else:
        for ids in call.token_ids or ():
            h = base.copy()
            h.update(b"i")
            _field(h, _ids(ids))
            keys.append(h.digest())
    return keys


def subcall(call: EmbedCall, indices: Sequence[int], *, estimate=None) -> EmbedCall:
    """The part of ``call`` made of the inputs at ``indices`` (what a provider computes).

    Its ``tokens``: exact with the tokenizer; else ``estimate(texts, token_ids,
    instruction)`` (the route's bound), or without one the inputs' share of ``call.tokens``.
    """
    items = [call.items[i] for i in indices] if call.items is not None else None
    texts = [call.texts[i] for i in indices] if call.texts is not None else None
    token_ids = [call.token_ids[i] for i in indices] if call.token_ids is not None else None
    if items is not None:
        tokens = sum(len(item.token_ids) for item in items)
    elif estimate is not None:
        tokens = estimate(texts, token_ids, call.instruction)
    else:
        weights = [len(t.encode()) for t in call.texts] if call.texts is not None else \
            [len(ids) for ids in call.token_ids or ()]
        shares = split(call.tokens, weights)
        tokens = sum(shares[i] for i in indices)
    return replace(call, texts=texts, token_ids=token_ids, items=items, tokens=tokens)


def split(total: int, weights: Sequence[int]) -> list[int]:
    """``total`` in whole parts proportional to ``weights`` (largest remainder), summing to ``total``."""
    if not weights:
        return []
    weight = sum(weights)
    if weight <= 0:
        weights, weight = [1] * len(weights), len(weights)
    exact = [total * w / weight for w in weights]
    parts = [math.floor(x) for x in exact]
    left = total - sum(parts)
    for i in sorted(range(len(weights)), key=lambda i: parts[i] - exact[i])[:left]:
        parts[i] += 1
    return parts


def computed_tokens(call: EmbedCall, upstream: int | None) -> list[int]:
    """Each computed input's tokens: exact with the tokenizer; else its share of what gets billed for it.

    Without a tokenizer the billed count is the upstream's report, never above the
    route's bound, or about four bytes a token when it reports none: the rules of
    ``api/pipeline.billed_tokens``, kept in step with it.
    """
    if call.items is not None:
        return [len(item.token_ids) for item in call.items]
    if call.texts is None:
        weights = [len(ids) for ids in call.token_ids or ()]
        total = min(upstream, call.tokens) if upstream is not None and upstream >= 1 else call.tokens
        return split(total, weights)
    weights = [len(t.encode()) for t in call.texts]
    if upstream is not None and upstream >= 1:
        total = min(upstream, call.tokens)
    else:
        total = max(call.count, min(call.tokens, sum(-(-w // 4) + 2 for w in weights)))
    return split(total, weights)


# -- the cache ---------------------------------------------------------------------------------------------------

def _settle(future: asyncio.Future, entry: Entry) -> None:
    if not future.done():
        future.set_result(entry)


class _Abandoned(Exception):
    """The request computing an input failed or left: whoever waited for it computes it."""


class _CacheProvider:
    """Stands for the cache where a request needed no provider (``x-gigarouter-provider: cache``)."""

    name = "cache"
    kind = "cache"
    ready = True

    async def embed(self, call: EmbedCall, *, model: str, timeout_s: float) -> ProviderResult:
        raise RuntimeError("the cache provider computes nothing")

    async def close(self) -> None:
        return None


class EmbeddingCache:
    def __init__(self, store: Store, *, scope: str = "account", metrics: Metrics | None = None) -> None:
        self.store = store
        self.scope_mode = scope
        self.metrics = metrics
        self._inflight: dict[bytes, asyncio.Future] = {}
        self._down_until = 0.0
        self._warned_at = -math.inf
        self.errors = 0                  # store failures answered as misses
        self._writes: set[asyncio.Task] = set()   # entries being written after their answer went out

    def scope(self, account: str | None) -> str:
        """Whose entries a request may see: its account's (anonymous in open mode), or everyone's."""
        if self.scope_mode == "global":
            return "global"
        return f"account:{account}" if account is not None else "anonymous"

    async def run(self, route: Route, plan: Plan, call: EmbedCall, *, deadline: float,
                  metrics: Metrics | None = None, account: str | None = None) -> Routed:
        """``route.run`` for the inputs not cached; every input's vector in order; ``Routed.cache`` says how."""
        if route.fingerprint is None or call.count == 0:   # the vector space is not known yet: no cache
            return await route.run(plan, call, deadline=deadline, metrics=metrics)
        started = time.perf_counter()
        key_args = dict(scope=self.scope(account), route=route.name, fingerprint=route.fingerprint)
        if call.count > _KEYS_INLINE:     # hashing thousands of inputs would hold the event loop up
            keys = await asyncio.to_thread(input_keys, call, **key_args)
        else:
            keys = input_keys(call, **key_args)
        first: dict[bytes, int] = {}
        for i, key in enumerate(keys):
            first.setdefault(key, i)
        entries: dict[bytes, Entry] = {}
        computed: set[bytes] = set()
        routed: Routed | None = None
        lookup_s = 0.0
        pending = list(first)
        while pending:
            owned, waiting = self._claim(pending)
            if owned:
                storing = False
                try:
                    lookup_started = time.perf_counter()
                    found = await self._get(route.name, list(owned), route.dim)
                    lookup_s += time.perf_counter() - lookup_started
                    for key, entry in found.items():
                        entries[key] = entry
                        _settle(owned[key], entry)
                    misses = [k for k in owned if k not in found]
                    if misses:
                        sent = subcall(call, [first[k] for k in misses], estimate=route._estimate)
                        routed = await route.run(plan, sent, deadline=deadline, metrics=metrics)
                        rows = np.asarray(routed.result.vectors, dtype="<f4")    # what the provider returned
                        counts = computed_tokens(sent, routed.result.upstream_tokens)
                        fresh = []
                        for j, key in enumerate(misses):
                            entries[key] = entry = Entry(vector=rows[j], tokens=counts[j])
                            computed.add(key)
                            _settle(owned[key], entry)
                            fresh.append((key, _TOKENS.pack(counts[j]) + rows[j].tobytes()))
                        routed.sent = sent
                        # Resolved futures stay in flight until the entries are stored, so a request
                        # arriving meanwhile takes them from here instead of computing them again. A
                        # store with I/O (Redis, disk) writes after the answer, not before it.
                        if self.store.slow:
                            task = asyncio.create_task(self._store(route.name, fresh, owned))
                            self._writes.add(task)
                            task.add_done_callback(self._writes.discard)
                            storing = True
                        else:
                            await self._put(route.name, fresh)
                finally:
                    if not storing:
                        self._release(owned)
            pending = []
            for key, future in waiting:
                remaining = deadline - time.monotonic()
                try:
                    entries[key] = await asyncio.wait_for(
                        asyncio.shield(future), timeout=None if math.isinf(remaining) else max(remaining, 0.0))
                except _Abandoned:
                    pending.append(key)          # its owner failed or left: try it ourselves
                except TimeoutError:
                    raise NoProviderAvailable(f"the deadline for model {route.name!r} passed while an identical "
                                              "input was being computed", retry_after=2.0) from None
        return self._answer(route, call, keys, first, entries, computed, routed, lookup_s,
                            time.perf_counter() - started)

    async def _store(self, model: str, fresh: list[tuple[bytes, bytes]], owned: dict[bytes, asyncio.Future]) -> None:
        try:
            await self._put(model, fresh)
        finally:
            self._release(owned)

    def _claim(self, pending: list[bytes]) -> tuple[dict[bytes, asyncio.Future], list[tuple[bytes, asyncio.Future]]]:
        """Keys this request now looks up and computes (with their futures), and those another is on."""
        owned: dict[bytes, asyncio.Future] = {}
        waiting = []
        loop = asyncio.get_running_loop()
        for key in pending:
            future = self._inflight.get(key)
            if future is None:
                owned[key] = self._inflight[key] = loop.create_future()
            else:
                waiting.append((key, future))
        return owned, waiting

    def _release(self, owned: dict[bytes, asyncio.Future]) -> None:
        """Out of flight; a future never resolved (the request failed or left) sends its waiters to compute."""
        for key, future in owned.items():
            if self._inflight.get(key) is future:
                del self._inflight[key]
            if not future.done():
                future.set_exception(_Abandoned())
                future.exception()       # retrieved: a future nobody waited for is no error

    def _answer(self, route: Route, call: EmbedCall, keys: list[bytes], first: dict[bytes, int],
                entries: dict[bytes, Entry], computed: set[bytes], routed: Routed | None, lookup_s: float,
                total_s: float) -> Routed:
        from gigarouter.router.health import Health
        from gigarouter.router.route import Binding, Routed

        vectors = np.stack([entries[k].vector for k in keys])
        exact = call.items is not None
        cached_tokens = 0
        served = 0
        for i, key in enumerate(keys):
            if key in computed and first[key] == i:
                continue
            served += 1
            cached_tokens += len(call.items[i].token_ids) if exact else entries[key].tokens
        outcome = HIT if not computed else (MISS if served == 0 else PARTIAL)
        self._count(route.name, hits=served, misses=len(computed), tokens=cached_tokens)
        if routed is None:     # every input answered without a provider
            binding = Binding(_CacheProvider(), price_per_million_usd=route.cached_price_per_million_usd,
                              health=Health(), verified=True)
            result = ProviderResult(vectors, timings={"cache": total_s})
            return Routed(result=result, binding=binding, failovers=0, cached_tokens=cached_tokens, cache=outcome)
        result = ProviderResult(vectors, upstream_tokens=routed.result.upstream_tokens,
                                timings={"cache": lookup_s, **routed.result.timings}, replica=routed.result.replica)
        return Routed(result=result, binding=routed.binding, failovers=routed.failovers, cached_tokens=cached_tokens,
                      cache=outcome, sent=routed.sent)

    # -- the store, with failures answered as misses -----------------------------------------------------------

    async def _get(self, model: str, keys: list[bytes], dim: int | None) -> dict[bytes, Entry]:
        if time.monotonic() < self._down_until:
            return {}
        try:
            raws = await self.store.get(model, keys)
        except Exception as exc:    # a cache must never fail a request
            self._failed(model, "get", exc)
            return {}
        found = {}
        for key, raw in zip(keys, raws, strict=True):
            entry = decode_entry(raw, dim)
            if entry is not None:
                found[key] = entry
            elif raw is not None:
                self._failed(model, "get", ValueError("a malformed or wrong-width entry"), backoff=False)
        return found

    async def _put(self, model: str, items: list[tuple[bytes, bytes]]) -> None:
        if not items or time.monotonic() < self._down_until:
            return
        try:
            await self.store.put(model, items)
        except Exception as exc:
            self._failed(model, "set", exc)

    def _failed(self, model: str, op: str, exc: Exception, *, backoff: bool = True) -> None:
        self.errors += 1
        if self.metrics is not None:
            self.metrics.cache_errors.labels(model, op).inc()
        if backoff:
            self._down_until = time.monotonic() + STORE_BACKOFF_S
        now = time.monotonic()
        if now - self._warned_at > _WARN_EVERY_S:
            self._warned_at = now
            log.warning("embedding cache (%s) %s failed for model %s: %s: %s; answering as misses", self.store.kind,
                        op, model, type(exc).__name__, exc)

    def _count(self, model: str, *, hits: int, misses: int, tokens: int) -> None:
        if self.metrics is None:
            return
        if hits:
            self.metrics.cache_hits.labels(model).inc(hits)
            self.metrics.cache_hit_tokens.labels(model).inc(tokens)
        if misses:
            self.metrics.cache_misses.labels(model).inc(misses)

    async def flush(self) -> None:
        """Wait for the entries still being written."""
        while self._writes:
            await asyncio.gather(*list(self._writes), return_exceptions=True)

    async def close(self) -> None:
        await self.flush()
        await self.store.close()
