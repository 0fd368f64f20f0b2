"""Route planning and failover over fake providers (no servers, no models)."""

from __future__ import annotations

import asyncio
import time

import numpy as np
import pytest

from gigarouter.errors import InvalidRequest, NoProviderAvailable, ProviderRejected, ProviderUnavailable, QueueFull
from gigarouter.metrics import Metrics
from gigarouter.providers.base import EmbedCall, ProviderResult
from gigarouter.router.health import Health
from gigarouter.router.preferences import Preferences, parse_preferences
from gigarouter.router.route import Binding, Plan, Route

DIM = 4


class FakeProvider:
    """Implements the Provider protocol: fixed vectors, or one error, after an optional delay."""

    kind = "remote"

    def __init__(self, name: str, *, dim: int = DIM, error: Exception | None = None, delay: float = 0.0,
                 ready: bool = True, on_call=None) -> None:
        self.name = name
        self.dim = dim
        self.error = error
        self.delay = delay
        self.ready = ready
        self.on_call = on_call
        self.calls: list[tuple[str, float]] = []

    async def embed(self, call: EmbedCall, *, model: str, timeout_s: float) -> ProviderResult:
        self.calls.append((model, timeout_s))
        if self.on_call is not None:
            self.on_call()
        if self.delay:
            await asyncio.sleep(self.delay)
        if self.error is not None:
            raise self.error
        return ProviderResult(vectors=np.full((call.count, self.dim), 1.0, dtype=np.float32), upstream_tokens=7)

    async def close(self) -> None:
        pass


def binding(name: str, price: float = 0.01, *, p50_s: float | None = None, tokens_per_s: float = 0.0,
            failures: int = 3, verified: bool = True, **provider) -> Binding:
    b = Binding(FakeProvider(name, **provider), price_per_million_usd=price, health=Health(failures=failures),
                verified=verified, dim=DIM if verified else None)
    if p50_s is not None:
        b.health.success(seconds=p50_s)
    b.health.tokens_per_s = tokens_per_s
    return b


def route(*bindings: Binding) -> Route:
    return Route(name="m", card=None, bindings=list(bindings))


def names(plan: Plan) -> list[str]:
    return [b.name for b in plan.candidates]


def call(n: int = 2) -> EmbedCall:
    return EmbedCall(texts=["x"] * n, token_ids=None, tokens=10 * n)


def soon(seconds: float = 30.0) -> float:
    return time.monotonic() + seconds


# -- planning ----------------------------------------------------------------------------------------------------

def test_default_order_is_cheapest_first_then_fastest_then_as_listed():
    r = route(binding("dear", 0.05, p50_s=0.001), binding("slow", 0.01, p50_s=0.5),
              binding("fast", 0.01, p50_s=0.1), binding("unmeasured", 0.01), binding("free", 0.0, p50_s=9.0))
    assert names(r.plan(Preferences())) == ["free", "fast", "slow", "unmeasured", "dear"]
    assert names(r.plan(Preferences(sort="price"))) == ["free", "fast", "slow", "unmeasured", "dear"]


def test_equal_providers_keep_the_listed_order():
    r = route(binding("b"), binding("a"), binding("c"))
    assert names(r.plan(Preferences())) == ["b", "a", "c"]


def test_sort_latency_and_throughput():
    r = route(binding("a", 0.01, p50_s=0.3, tokens_per_s=10), binding("b", 0.02, p50_s=0.1, tokens_per_s=5),
              binding("c", 0.03, p50_s=0.2, tokens_per_s=50), binding("d", 0.0))
    assert names(r.plan(Preferences(sort="latency"))) == ["b", "c", "a", "d"]
    assert names(r.plan(Preferences(sort="throughput"))) == ["c", "a", "b", "d"]


def test_order_puts_the_named_providers_first_in_that_order():
    r = route(binding("a", 0.01), binding("b", 0.02), binding("c", 0.03), binding("d", 0.04))
    assert names(r.plan(Preferences(order=("c", "B")))) == ["c", "b", "a", "d"]


def test_only_ignore_and_max_price_filter():
    r = route(binding("a", 0.01), binding("b", 0.02), binding("c", 0.03))
    assert names(r.plan(Preferences(only=("c", "A")))) == ["a", "c"]
    assert names(r.plan(Preferences(ignore=("a",)))) == ["b", "c"]
    assert names(r.plan(Preferences(max_price=0.02))) == ["a", "b"]
    assert names(r.plan(Preferences(only=("b", "c"), ignore=("b",)))) == ["c"]


def test_allow_fallbacks_false_keeps_only_the_ordered_providers():
    r = route(binding("a", 0.01), binding("b", 0.02), binding("c", 0.03))
    assert names(r.plan(Preferences(order=("c", "b"), allow_fallbacks=False))) == ["c", "b"]
    assert names(r.plan(Preferences(allow_fallbacks=False))) == ["a"]
    assert names(r.plan(Preferences(allow_fallbacks=False, ignore=("a",)))) == ["b"]


def test_allow_fallbacks_false_with_the_ordered_providers_down_is_a_503():
    r = route(binding("a"), binding("b", verified=False))
    with pytest.raises(NoProviderAvailable) as info:
        r.plan(Preferences(order=("b",), allow_fallbacks=False))
    assert info.value.status == 503 and "b is down" in info.value.message
    assert names(r.plan(Preferences(order=("b",)))) == ["a"]      # with fallbacks the others serve


def test_the_plan_reserves_at_the_dearest_candidate():
    r = route(binding("a", 0.01), binding("b", 0.07), binding("c", 0.03))
    assert r.plan(Preferences()).max_price_per_million_usd == 0.07
    assert r.plan(Preferences(allow_fallbacks=False)).max_price_per_million_usd == 0.01


@pytest.mark.parametrize("field", ["order", "only", "ignore"])
def test_an_unknown_provider_name_is_a_400_naming_the_field(field):
    r = route(binding("a"), binding("b"))
    prefs = parse_preferences({field: ["a", "nope"]})
    with pytest.raises(InvalidRequest) as info:
        r.plan(prefs)
    assert info.value.status == 400 and info.value.param == f"provider.{field}"
    assert "nope" in info.value.message


@pytest.mark.parametrize(("prefs", "param"), [
    (Preferences(only=()), "provider.only"),
    (Preferences(ignore=("a", "B")), "provider.ignore"),
    (Preferences(max_price=0.001), "provider.max_price"),
    (Preferences(only=("a",), ignore=("a",)), "provider.ignore"),
    (Preferences(only=("a", "b"), max_price=0.001), "provider.max_price"),
    (Preferences(ignore=("a",), max_price=0.015), "provider.max_price"),
])
def test_preferences_that_exclude_every_provider_are_a_400(prefs, param):
    r = route(binding("a", 0.01), binding("b", 0.02))
    with pytest.raises(InvalidRequest) as info:
        r.plan(prefs)
    assert info.value.status == 400 and info.value.param == param


def test_every_allowed_provider_down_or_mismatched_is_a_503_with_retry_after():
    opened = binding("open", failures=1)
    opened.health.failure()
    mismatched = binding("other-space")
    mismatched.mismatch = True
    r = route(opened, binding("unverified", verified=False), binding("not-ready", ready=False), mismatched,
              binding("ignored"))
    assert [b.state for b in r.bindings] == ["down", "down", "down", "mismatch", "healthy"]
    with pytest.raises(NoProviderAvailable) as info:
        r.plan(Preferences(ignore=("ignored",)))
    assert info.value.status == 503 and info.value.headers["Retry-After"] == "2"
    assert "other-space is mismatch" in info.value.message and "open is down" in info.value.message
    assert names(r.plan(Preferences())) == ["ignored"]


# -- running ---------------------------------------------------------------------------------------------------

@pytest.mark.asyncio
async def test_the_first_candidate_serves_and_its_health_learns():
    r = route(binding("a"), binding("b"))
    routed = await r.run(r.plan(Preferences()), call(3), deadline=soon())
    assert routed.binding.name == "a" and routed.failovers == 0
    assert routed.result.vectors.shape == (3, DIM)
    assert r.bindings[0].provider.calls and r.bindings[0].provider.calls[0][0] == "m"
    assert not r.bindings[1].provider.calls
    assert r.bindings[0].health.p50_latency_ms() is not None and r.bindings[0].health.uptime() == 1.0


@pytest.mark.asyncio
async def test_the_provider_gets_the_time_left_before_the_deadline():
    r = route(binding("a"))
    await r.run(r.plan(Preferences()), call(), deadline=soon(5.0))
    (_, timeout_s), = r.bindings[0].provider.calls
    assert 4.0 < timeout_s <= 5.0


@pytest.mark.asyncio
@pytest.mark.parametrize("error", [ProviderUnavailable("connection refused"), QueueFull("full", retry_after=1.0)])
async def test_a_retryable_failure_moves_to_the_next_candidate(error):
    r = route(binding("a", error=error), binding("b"), binding("c"))
    metrics = Metrics()
    routed = await r.run(r.plan(Preferences()), call(), deadline=soon(), metrics=metrics)
    assert routed.binding.name == "b" and routed.failovers == 1
    assert not r.bindings[2].provider.calls
    # A hard failure counts against the breaker; a 429 (alive, only busy) does not.
    assert r.bindings[0].health.consecutive_failures == (0 if error.status == 429 else 1)
    assert r.bindings[1].health.consecutive_failures == 0
    sample = metrics.registry.get_sample_value
    assert sample("gigarouter_provider_failovers_total", {"model": "m", "provider": "a"}) == 1
    assert sample("gigarouter_provider_requests_total", {"model": "m", "provider": "a", "outcome": "error"}) == 1
    assert sample("gigarouter_provider_requests_total", {"model": "m", "provider": "b", "outcome": "ok"}) == 1


@pytest.mark.asyncio
async def test_a_rejection_is_raised_at_once_and_not_held_against_the_provider():
    rejected = ProviderRejected("input too long for the upstream")
    r = route(binding("a", error=rejected), binding("b"))
    with pytest.raises(ProviderRejected) as info:
        await r.run(r.plan(Preferences()), call(), deadline=soon())
    assert info.value is rejected and info.value.status == 400
    assert not r.bindings[1].provider.calls
    assert r.bindings[0].health.consecutive_failures == 0


@pytest.mark.asyncio
async def test_a_rejection_after_a_failover_is_still_raised_as_is():
    rejected = ProviderRejected("bad input")
    r = route(binding("a", error=ProviderUnavailable("down")), binding("b", error=rejected), binding("c"))
    with pytest.raises(ProviderRejected) as info:
        await r.run(r.plan(Preferences()), call(), deadline=soon())
    assert info.value is rejected and not r.bindings[2].provider.calls


@pytest.mark.asyncio
async def test_a_single_tried_providers_error_is_raised_unchanged():
    full = QueueFull("the queue is full", retry_after=3.0)
    r = route(binding("a", error=full), binding("b"))
    with pytest.raises(QueueFull) as info:
        await r.run(r.plan(Preferences(allow_fallbacks=False)), call(), deadline=soon())
    assert info.value is full and info.value.status == 429 and info.value.headers["Retry-After"] == "3"


@pytest.mark.asyncio
async def test_several_failures_are_one_503_naming_each():
    r = route(binding("a", error=ProviderUnavailable("connect refused", retry_after=5.0)),
              binding("b", error=QueueFull("busy", retry_after=2.0)),
              binding("c", error=ProviderUnavailable("upstream 502", retry_after=3.0)))
    with pytest.raises(ProviderUnavailable) as info:
        await r.run(r.plan(Preferences()), call(), deadline=soon())
    error = info.value
    assert error.status == 503 and error.code == "provider_unavailable"
    for part in ("a: connect refused", "b: busy", "c: upstream 502"):
        assert part in error.message
    assert error.retry_after == 2.0 and error.headers["Retry-After"] == "2"
    assert [b.health.consecutive_failures for b in r.bindings] == [1, 0, 1]   # b's 429 is not held against it


@pytest.mark.asyncio
async def test_a_wrong_width_answer_marks_the_binding_mismatch_and_fails_over():
    r = route(binding("wide", dim=DIM * 2), binding("b"))
    routed = await r.run(r.plan(Preferences()), call(), deadline=soon())
    assert routed.binding.name == "b" and routed.failovers == 1
    assert r.bindings[0].mismatch and r.bindings[0].state == "mismatch"
    assert names(r.plan(Preferences())) == ["b"]


@pytest.mark.asyncio
async def test_a_wrong_width_answer_alone_is_a_503_provider_mismatch():
    r = route(binding("wide", dim=DIM + 1))
    with pytest.raises(ProviderUnavailable) as info:
        await r.run(r.plan(Preferences()), call(), deadline=soon())
    assert info.value.code == "provider_mismatch" and r.bindings[0].mismatch


@pytest.mark.asyncio
async def test_the_deadline_stops_failover():
    r = route(binding("slow", error=ProviderUnavailable("timed out"), delay=0.05), binding("b"))
    with pytest.raises(ProviderUnavailable, match="timed out"):
        await r.run(r.plan(Preferences()), call(), deadline=soon(0.02))
    assert not r.bindings[1].provider.calls


@pytest.mark.asyncio
async def test_a_deadline_already_past_tries_nobody():
    r = route(binding("a"))
    with pytest.raises(NoProviderAvailable) as info:
        await r.run(r.plan(Preferences()), call(), deadline=time.monotonic() - 1)
    assert info.value.status == 503 and "Retry-After" in info.value.headers
    assert not r.bindings[0].provider.calls


@pytest.mark.asyncio
async def test_failures_open_the_breaker_and_take_the_provider_out_of_later_plans():
    r = route(binding("a", failures=2, error=ProviderUnavailable("down")), binding("b", 0.02))
    for _ in range(2):
        routed = await r.run(r.plan(Preferences()), call(), deadline=soon())
        assert routed.binding.name == "b"
    assert r.bindings[0].health.is_open and r.bindings[0].state == "down"
    assert names(r.plan(Preferences())) == ["b"]
    assert len(r.bindings[0].provider.calls) == 2


@pytest.mark.asyncio
async def test_a_candidate_that_went_down_meanwhile_is_skipped():
    r = route(binding("a"), binding("b", failures=1), binding("c"))
    plan = r.plan(Preferences())
    r.bindings[0].provider.error = ProviderUnavailable("down")
    r.bindings[0].provider.on_call = r.bindings[1].health.failure     # b's breaker opens while a is tried
    routed = await r.run(plan, call(), deadline=soon())
    assert routed.binding.name == "c" and not r.bindings[1].provider.calls


def test_without_a_tokenizer_the_reservation_is_an_upper_bound():
    r = route(binding("a"))
    prepared = r.prepare(texts=["héllo", "a"], token_ids=None, instruction="q: ")
    assert not prepared.exact_tokens and prepared.items is None
    assert prepared.tokens == (6 + 64 + 3) + (1 + 64 + 3)
    # Token ids are counted, with the same allowance per input for the special tokens the upstream adds.
    assert r.prepare(texts=None, token_ids=[[1, 2, 3], [4]]).tokens == (3 + 64) + (1 + 64)


@pytest.mark.asyncio
async def test_a_local_deployments_failure_moves_on_without_opening_its_breaker():
    # The local engine is this process: full or out of memory means loaded, not broken.
    local = binding("local", 0.001, error=ProviderUnavailable("out of memory"), failures=1)
    local.provider.kind = "local"
    r = route(local, binding("east", 0.01))
    routed = await r.run(r.plan(Preferences()), call(), deadline=soon())
    assert routed.binding.name == "east"
    assert local.health.consecutive_failures == 0 and local.state == "healthy"
