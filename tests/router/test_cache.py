"""The per-input cache over fake providers: exact partial hits, order, single flight, keys, scopes, failures."""

from __future__ import annotations

import asyncio
import hashlib
import time

import numpy as np
import pytest

from gigarouter.errors import ProviderRejected, ProviderUnavailable
from gigarouter.metrics import Metrics
from gigarouter.providers.base import EmbedCall, ProviderResult
from gigarouter.recipes.base import PreparedInput
from gigarouter.router.cache import EmbeddingCache, MemoryStore, decode_entry, encode_entry, input_keys, split
from gigarouter.router.health import Health
from gigarouter.router.preferences import Preferences
from gigarouter.router.route import Binding, Route

DIM = 6


def vector_of(payload: str) -> np.ndarray:
    """A deterministic, irregular float32 vector per input (every bit matters when compared)."""
    seed = int.from_bytes(hashlib.sha256(payload.encode()).digest()[:8], "little")
    return np.random.default_rng(seed).standard_normal(DIM).astype(np.float32) / np.float32(3.0)


def payload_of(call: EmbedCall, i: int) -> str:
    if call.items is not None:
        return f"{call.items[i].pool_start}:{call.items[i].token_ids}"
    text = call.texts[i] if call.texts is not None else str(call.token_ids[i])
    return f"{call.input_type}|{call.instruction}|{text}"


class Provider:
    """Vectors from what it is sent; records every input it computed; may wait on a gate or fail."""

    def __init__(self, name: str = "p", *, kind: str = "remote", error: Exception | None = None,
                 gate: asyncio.Event | None = None, usage: int | None = None, fail_first: int | None = None) -> None:
        self.name, self.kind, self.error, self.gate, self.usage = name, kind, error, gate, usage
        self.fail_first = fail_first          # with error: only the first calls fail
        self.ready = True
        self.calls: list[list[str]] = []
        self.started = asyncio.Event()

    async def embed(self, call: EmbedCall, *, model: str, timeout_s: float) -> ProviderResult:
        self.calls.append([payload_of(call, i) for i in range(call.count)])
        error = self.error if self.fail_first is None or len(self.calls) <= self.fail_first else None
        self.started.set()
        if self.gate is not None:
            await self.gate.wait()
        if error is not None:
            raise error
        vectors = np.stack([vector_of(payload_of(call, i)) for i in range(call.count)])
        return ProviderResult(vectors, upstream_tokens=self.usage, timings={"upstream": 0.001})

    async def close(self) -> None:
        pass

    @property
    def computed(self) -> list[str]:
        return [p for call in self.calls for p in call]


def make_route(*providers: Provider, cache: EmbeddingCache | None = None, fingerprint: str | None = "fp-1",
               cached_price: float = 0.0) -> Route:
    bindings = [Binding(p, price_per_million_usd=0.02, health=Health(), verified=True, dim=DIM) for p in providers]
    return Route(name="m", card=None, bindings=bindings, fingerprint=fingerprint,
                 cache=cache if cache is not None else EmbeddingCache(MemoryStore(1 << 20), metrics=Metrics()),
                 cached_price_per_million_usd=cached_price)


def items_call(*sequences: tuple[int, ...], pool_start: int = 0) -> EmbedCall:
    items = [PreparedInput(token_ids=list(s), pool_start=pool_start) for s in sequences]
    return EmbedCall(texts=[f"t{i}" for i in range(len(items))], token_ids=None, items=items,
                     tokens=sum(len(s) for s in sequences))


def text_call(*texts: str, **options) -> EmbedCall:
    return EmbedCall(texts=list(texts), token_ids=None, tokens=sum(len(t.encode()) + 64 for t in texts),
                     exact_tokens=False, **options)


async def embed(route: Route, call: EmbedCall, *, account: str | None = "acct_a", use_cache: bool = True,
                deadline: float = 30.0):
    return await route.embed(route.plan(Preferences()), call, deadline=time.monotonic() + deadline,
                             account=account, use_cache=use_cache)


def expected(call: EmbedCall) -> np.ndarray:
    return np.stack([vector_of(payload_of(call, i)) for i in range(call.count)])


def sample(route: Route, name: str, **labels) -> float:
    return route.cache.metrics.registry.get_sample_value(name, {"model": "m", **labels}) or 0.0


# -- exactness, partial hits, order ------------------------------------------------------------------------------

@pytest.mark.asyncio
async def test_a_partial_hit_computes_only_the_misses_and_answers_in_order_bit_for_bit():
    p = Provider()
    r = make_route(p)
    first = items_call((1, 2), (3,), (4, 5, 6))
    got = await embed(r, first)
    assert got.cache == "miss" and got.cached_tokens == 0 and got.binding.name == "p"
    np.testing.assert_array_equal(got.result.vectors, expected(first))

    second = items_call((7,), (3,), (1, 2), (8, 9), (4, 5, 6))
    got = await embed(r, second)
    assert p.calls[-1] == ["0:[7]", "0:[8, 9]"]                       # only the two misses, in input order
    assert got.cache == "partial" and got.cached_tokens == 1 + 2 + 3
    assert got.result.vectors.dtype == np.float32 and got.result.vectors.shape == (5, DIM)
    np.testing.assert_array_equal(got.result.vectors, expected(second))   # every row in its place, exact
    assert got.sent.count == 2 and got.sent.tokens == 3                 # what the provider computed
    # The cache changes nothing about the vectors: the uncached path gives the same bits.
    uncached = await embed(r, second, use_cache=False)
    assert uncached.cache is None
    np.testing.assert_array_equal(uncached.result.vectors, got.result.vectors)
    assert sample(r, "gigarouter_cache_hits_total") == 3 and sample(r, "gigarouter_cache_misses_total") == 5


@pytest.mark.asyncio
async def test_a_full_hit_calls_no_provider_and_names_the_cache():
    p = Provider()
    r = make_route(p, cached_price=0.005)
    call = items_call((1,), (2, 3))
    await embed(r, call)
    got = await embed(r, call)
    assert len(p.calls) == 1
    assert got.cache == "hit" and got.cached_tokens == 3 and got.sent is None
    assert got.binding.name == "cache" and got.binding.price_per_million_usd == 0.005
    assert got.result.upstream_tokens is None and "cache" in got.result.timings
    np.testing.assert_array_equal(got.result.vectors, expected(call))


@pytest.mark.asyncio
async def test_duplicates_in_one_request_are_computed_once_and_every_index_answered():
    p = Provider()
    r = make_route(p)
    call = items_call((5,), (6, 6), (5,), (5,), (6, 6))
    got = await embed(r, call)
    assert p.calls == [["0:[5]", "0:[6, 6]"]]
    assert got.cache == "partial" and got.cached_tokens == 1 + 1 + 2       # the repeats were not computed
    np.testing.assert_array_equal(got.result.vectors, expected(call))


@pytest.mark.asyncio
async def test_dimensions_and_normalisation_come_after_the_cache():
    """An entry is the raw vector: a later request is served from it whatever it asks for."""
    from gigarouter.pooling.encoding import finish

    p = Provider()
    r = make_route(p)
    call = items_call((1, 2, 3))
    raw = (await embed(r, call)).result.vectors
    hit = (await embed(r, call)).result.vectors
    np.testing.assert_array_equal(hit, raw)
    np.testing.assert_array_equal(finish(hit, dimensions=3, normalize=True), finish(raw, dimensions=3, normalize=True))
    assert not np.allclose(np.linalg.norm(raw, axis=1), 1.0)         # stored unnormalised


def test_entries_are_a_token_count_then_raw_little_endian_float32():
    v = vector_of("x")
    raw = encode_entry(v, 17)
    assert raw[:4] == (17).to_bytes(4, "little") and raw[4:] == v.astype("<f4").tobytes()
    entry = decode_entry(raw, DIM)
    assert entry.tokens == 17 and entry.vector.tobytes() == v.tobytes()
    assert decode_entry(raw, DIM + 1) is None and decode_entry(raw[:-1], None) is None and decode_entry(None, 1) is None


# -- keys ---------------------------------------------------------------------------------------------------------

def test_keys_cover_the_token_ids_and_the_pooled_span():
    keys = lambda call, **kw: input_keys(call, **{"scope": "s", "route": "m", "fingerprint": "f", **kw})  # noqa: E731
    a = keys(items_call((1, 2)))
    assert a == keys(items_call((1, 2)))
    assert a != keys(items_call((1, 2), pool_start=1))                # an instruction kept out of the mean
    assert a != keys(items_call((2, 1)))
    assert a != keys(items_call((1, 2)), fingerprint="g")
    assert a != keys(items_call((1, 2)), scope="t")
    assert a != keys(items_call((1, 2)), route="n")


def test_without_a_tokenizer_the_key_is_the_text_and_how_it_is_read():
    keys = lambda call: input_keys(call, scope="s", route="m", fingerprint="f")  # noqa: E731
    base = keys(text_call("hello"))
    assert base == keys(text_call("hello"))
    for other in (text_call("hello "), text_call("hello", input_type="query"), text_call("hello", truncate="start"),
                  text_call("hello", instruction="Find"), text_call("hello", instruction="")):
        assert keys(other) != base
    as_ids = EmbedCall(texts=None, token_ids=[[104, 101]], tokens=2, exact_tokens=False)
    assert keys(as_ids) != base


@pytest.mark.asyncio
async def test_a_new_fingerprint_never_hits_old_entries():
    p = Provider()
    r = make_route(p)
    call = items_call((1,), (2,))
    await embed(r, call)
    r.fingerprint = "fp-2"                                # new weights, another revision or recipe
    got = await embed(r, call)
    assert got.cache == "miss" and len(p.calls) == 2
    r.fingerprint = "fp-1"
    assert (await embed(r, call)).cache == "hit"


@pytest.mark.asyncio
async def test_an_unknown_fingerprint_is_not_cached():
    p = Provider()
    r = make_route(p, fingerprint=None)
    call = items_call((1,), (1,))
    for _ in range(2):
        got = await embed(r, call)
        assert got.cache is None and got.cached_tokens == 0
    assert p.calls == [["0:[1]", "0:[1]"]] * 2                     # the request as sent, both times


@pytest.mark.asyncio
async def test_opting_out_neither_reads_nor_writes():
    p = Provider()
    r = make_route(p)
    call = items_call((1,))
    assert (await embed(r, call, use_cache=False)).cache is None
    assert (await embed(r, call)).cache == "miss"                   # nothing was written by the opt-out
    assert (await embed(r, call, use_cache=False)).cache is None and len(p.calls) == 3


# -- single flight -------------------------------------------------------------------------------------------------

@pytest.mark.asyncio
async def test_identical_inputs_in_flight_are_computed_once_across_requests():
    gate = asyncio.Event()
    p = Provider(gate=gate)
    r = make_route(p)
    one = asyncio.create_task(embed(r, items_call((1,), (2,), (3,))))
    await p.started.wait()
    two = asyncio.create_task(embed(r, items_call((3,), (4,), (1,))))     # 1 and 3 are being computed
    three = asyncio.create_task(embed(r, items_call((2,), (1,))))
    await asyncio.sleep(0.05)
    gate.set()
    a, b, c = await asyncio.gather(one, two, three)
    assert sorted(p.computed) == ["0:[1]", "0:[2]", "0:[3]", "0:[4]"]   # each input once, in all
    assert (a.cache, b.cache, c.cache) == ("miss", "partial", "hit")
    assert b.cached_tokens == 2 and c.cached_tokens == 2
    np.testing.assert_array_equal(b.result.vectors, expected(items_call((3,), (4,), (1,))))
    np.testing.assert_array_equal(c.result.vectors, expected(items_call((2,), (1,))))
    assert not r.cache._inflight


@pytest.mark.asyncio
@pytest.mark.parametrize("how", ["fails", "cancelled"])
async def test_when_the_computing_request_fails_or_leaves_a_waiter_computes_it(how):
    gate = asyncio.Event()
    failing = Provider("p", gate=gate, error=ProviderUnavailable("down") if how == "fails" else None, fail_first=1)
    r = make_route(failing)
    owner = asyncio.create_task(embed(r, items_call((1,))))
    await failing.started.wait()
    waiter = asyncio.create_task(embed(r, items_call((1,), (2,))))   # computes 2, waits for 1
    await asyncio.sleep(0.02)
    if how == "cancelled":
        owner.cancel()
    gate.set()
    got = await waiter
    assert failing.calls == [["0:[1]"], ["0:[2]"], ["0:[1]"]]         # it computed the one it waited for
    assert got.cache == "miss" and got.cached_tokens == 0
    np.testing.assert_array_equal(got.result.vectors, expected(items_call((1,), (2,))))
    results = await asyncio.gather(owner, return_exceptions=True)
    assert isinstance(results[0], asyncio.CancelledError if how == "cancelled" else ProviderUnavailable)
    assert not r.cache._inflight


@pytest.mark.asyncio
async def test_a_rejected_input_is_an_error_for_each_request_and_is_not_cached():
    p = Provider(error=ProviderRejected("input refused upstream"))
    r = make_route(p)
    for _ in range(2):
        with pytest.raises(ProviderRejected):
            await embed(r, items_call((1,)))
    assert len(p.calls) == 2 and not r.cache._inflight


# -- scopes -------------------------------------------------------------------------------------------------------

@pytest.mark.asyncio
async def test_accounts_do_not_see_each_others_entries_nor_wait_on_them():
    gate = asyncio.Event()
    p = Provider(gate=gate)
    r = make_route(p)
    call = items_call((1, 2))
    a = asyncio.create_task(embed(r, call, account="acct_a"))
    await p.started.wait()
    b = asyncio.create_task(embed(r, call, account="acct_b"))
    for _ in range(50):                                   # B reaches the provider while A is still computing
        await asyncio.sleep(0.005)
        if len(p.calls) == 2:
            break
    assert len(p.calls) == 2
    gate.set()
    got_a, got_b = await asyncio.gather(a, b)
    assert got_a.cache == got_b.cache == "miss" and got_b.cached_tokens == 0
    assert (await embed(r, call, account="acct_b")).cache == "hit"
    assert (await embed(r, call, account=None)).cache == "miss"      # anonymous (open mode) is a scope too
    assert (await embed(r, call, account="acct_c")).cache == "miss"


@pytest.mark.asyncio
async def test_a_global_scope_shares_entries_between_accounts():
    p = Provider()
    r = make_route(p, cache=EmbeddingCache(MemoryStore(1 << 20), scope="global"))
    await embed(r, items_call((1,)), account="acct_a")
    assert (await embed(r, items_call((1,)), account="acct_b")).cache == "hit"


# -- routing behind the cache ------------------------------------------------------------------------------------

@pytest.mark.asyncio
async def test_failover_is_unchanged_for_the_misses():
    down, up = Provider("down", error=ProviderUnavailable("refused")), Provider("up")
    r = make_route(down, up)
    warm = make_route(Provider("up"), cache=r.cache)         # the same route's entries, from another request
    await embed(warm, items_call((1,)))
    got = await embed(r, items_call((1,), (2,)))
    assert got.binding.name == "up" and got.failovers == 1 and got.cache == "partial"
    assert down.calls == up.calls == [["0:[2]"]]


@pytest.mark.asyncio
async def test_without_a_tokenizer_cached_inputs_keep_their_share_of_the_upstreams_count():
    p = Provider(usage=30)                         # the upstream counts 30 tokens for the two inputs
    r = make_route(p)
    first = text_call("aaaa", "aaaaaaaa")
    got = await embed(r, first)
    assert got.cache == "miss" and got.result.upstream_tokens == 30
    second = text_call("aaaaaaaa", "b")
    p.usage = 5
    got = await embed(r, second)
    assert got.cache == "partial" and p.calls[-1] == ["document|None|b"]
    assert got.cached_tokens == 20                 # 30 split 1:2 by bytes when it was computed
    assert got.sent.count == 1 and got.result.upstream_tokens == 5


def test_split_is_proportional_and_exact():
    assert split(30, [4, 8]) == [10, 20]
    assert split(10, [1, 1, 1]) == [4, 3, 3] and sum(split(7, [5, 0, 2])) == 7
    assert split(5, [0, 0]) == [3, 2] and split(0, [3]) == [0] and split(3, []) == []


# -- stores that fail ---------------------------------------------------------------------------------------------

class BrokenStore:
    kind = "broken"
    slow = True

    def __init__(self) -> None:
        self.calls = 0

    async def get(self, model, keys):
        self.calls += 1
        raise ConnectionError("store unreachable")

    async def put(self, model, items):
        self.calls += 1
        raise ConnectionError("store unreachable")

    async def close(self) -> None:
        pass


@pytest.mark.asyncio
async def test_a_failing_store_is_a_miss_never_an_error(caplog):
    store = BrokenStore()
    metrics = Metrics()
    p = Provider()
    r = make_route(p, cache=EmbeddingCache(store, metrics=metrics))
    call = items_call((1,), (2,))
    for _ in range(3):
        got = await embed(r, call)
        assert got.cache == "miss"
        np.testing.assert_array_equal(got.result.vectors, expected(call))
        await r.cache.flush()                      # its (skipped) write done: nothing left in flight
    assert store.calls == 1                        # then left alone for a few seconds, not asked per request
    assert metrics.registry.get_sample_value("gigarouter_cache_errors_total", {"model": "m", "op": "get"}) == 1
    assert "answering as misses" in caplog.text


@pytest.mark.asyncio
async def test_the_memory_store_is_bounded_in_bytes_and_counts_evictions():
    from gigarouter.router.cache import MEMORY_ENTRY_OVERHEAD

    entry = 4 + 4 * DIM + MEMORY_ENTRY_OVERHEAD
    metrics = Metrics()
    store = MemoryStore(3 * entry, metrics=metrics)
    p = Provider()
    r = make_route(p, cache=EmbeddingCache(store, metrics=metrics))
    await embed(r, items_call((1,), (2,), (3,)))
    await embed(r, items_call((1,)))                # 1 is now the most recently used
    await embed(r, items_call((4,)))                # evicts 2, the least recently used
    assert store.entries == 3 and store.bytes["m"] == 3 * entry and store.evictions["m"] == 1
    assert sample(r, "gigarouter_cache_evictions_total") == 1 and sample(r, "gigarouter_cache_bytes") == 3 * entry
    assert (await embed(r, items_call((1,), (3,), (4,)))).cache == "hit"
    assert (await embed(r, items_call((2,)))).cache == "miss"


def test_a_gateway_routes_cached_price_is_the_highest_its_providers_set(tmp_path):
    from gigarouter.router.router import Router
    from gigarouter.settings import ProviderConfig, Settings

    def remote(name, models, cached=None):
        return ProviderConfig(name=name, base_url="http://127.0.0.1:9/v1", models=tuple((m, m) for m in models),
                              cached_price_per_million_usd=cached)

    settings = Settings(data_dir=tmp_path, models=(), providers=(remote("a", ["x", "y"], 0.001),
                                                                 remote("b", ["x"], 0.003), remote("c", ["y"])))
    router = Router(settings, remotes={n: Provider(n) for n in "abc"})
    assert router.find("x").cached_price_per_million_usd == 0.003
    assert router.find("y").cached_price_per_million_usd == 0.001
    assert router.find("x").cache is router.cache is not None
    assert Router(settings.with_(cache="off"), remotes={n: Provider(n) for n in "abc"}).find("x").cache is None


class SlowStore(MemoryStore):
    """An in-process store that pretends to do I/O: its writes take a while."""

    slow = True

    def __init__(self) -> None:
        super().__init__(1 << 20)
        self.release = asyncio.Event()

    async def put(self, model, items):
        await self.release.wait()
        await super().put(model, items)


@pytest.mark.asyncio
async def test_a_store_with_io_writes_after_the_answer_and_keeps_the_entries_in_flight_till_then():
    store = SlowStore()
    p = Provider()
    r = make_route(p, cache=EmbeddingCache(store))
    first = await embed(r, items_call((1,), (2,)))                 # answered before its entries are written
    assert first.cache == "miss" and store.entries == 0 and r.cache._inflight
    again = await embed(r, items_call((2,), (3,)))                 # 2 comes from the entry in flight
    assert again.cache == "partial" and p.calls[-1] == ["0:[3]"]
    store.release.set()
    await r.cache.flush()
    assert store.entries == 3 and not r.cache._inflight
    assert (await embed(r, items_call((1,), (2,), (3,)))).cache == "hit"
    await r.cache.close()
