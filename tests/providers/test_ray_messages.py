"""What crosses a Serve handle, and the provider's retries after a lost replica (a fake handle; Ray's exceptions)."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from gigarouter import errors
from gigarouter.providers.base import EmbedCall
from gigarouter.providers.ray.replica import Packed, error_from, error_message
from gigarouter.recipes.base import PreparedInput

ITEMS = [PreparedInput([101, 7, 8, 102], 0), PreparedInput([101, 102], 1), PreparedInput([5], 0)]


def test_packed_inputs_come_back_as_they_went():
    packed = Packed.of(ITEMS)
    assert packed.token_ids.dtype == np.int32 and packed.token_ids.tolist() == [101, 7, 8, 102, 101, 102, 5]
    assert packed.lengths.tolist() == [4, 2, 1] and packed.pool_starts.tolist() == [0, 1, 0]
    assert packed.items() == ITEMS


def test_errors_keep_their_class_status_and_retry_after():
    full = error_from(error_message(errors.QueueFull("model 'm' is at capacity", retry_after=3.2)))
    assert isinstance(full, errors.QueueFull) and full.status == 429 and full.headers["Retry-After"] == "4"
    late = error_from(error_message(errors.ProviderUnavailable("too late", code="timeout")))
    assert type(late) is errors.ProviderUnavailable and late.code == "timeout" and late.status == 503
    stopping = error_from(error_message(errors.NotReady("stopping", code="shutting_down")))
    assert isinstance(stopping, errors.NotReady) and stopping.code == "shutting_down"
    odd = error_from({"class": "KeyError", "message": "x"})
    assert type(odd) is errors.ProviderUnavailable and odd.status == 503


class FakeResponse:
    def __init__(self, outcome) -> None:
        self.outcome, self.cancelled = outcome, False

    def __await__(self):
        return self._result().__await__()

    async def _result(self):
        await asyncio.sleep(0)
        if isinstance(self.outcome, BaseException):
            raise self.outcome
        return self.outcome

    def cancel(self) -> None:
        self.cancelled = True


class FakeHandle:
    """``handle.embed.remote(...)`` answers the scripted outcomes in turn."""

    def __init__(self, outcomes: list) -> None:
        self.outcomes, self.calls = list(outcomes), []
        self.embed = self

    def remote(self, packed, interactive, timeout_s):
        self.calls.append((packed, interactive, timeout_s))
        return FakeResponse(self.outcomes.pop(0))


def provider_with(outcomes: list):
    from gigarouter.providers.ray.deployment import RayDeployment
    from gigarouter.providers.ray.provider import RayProvider
    from tests.providers.test_ray_deployment import ray_model

    dep = RayDeployment.for_config(ray_model())
    dep.state, dep.handle = "ready", FakeHandle(outcomes)
    return RayProvider(dep), dep.handle


def answer(replica: str) -> dict:
    return {"vectors": np.ones((3, 4), dtype=np.float32), "timings": {"queue": 0.001, "inference": 0.002},
            "replica": replica, "seconds": 0.004}


CALL = EmbedCall(texts=["a", "b", "c"], token_ids=None, items=ITEMS, tokens=7)


def test_a_request_a_lost_replica_held_is_sent_again_and_answered():
    rex = pytest.importorskip("ray.exceptions", reason="Ray is not installed: pip install 'gigarouter[ray]'")
    provider, handle = provider_with([rex.ActorDiedError(), rex.ActorUnavailableError("gone", b"x" * 16),
                                      answer("r2")])
    result = asyncio.run(provider.embed(CALL, model="mini", timeout_s=10))
    assert result.replica == "r2" and result.vectors.shape == (3, 4)
    assert set(result.timings) == {"queue", "inference", "hop"}
    assert len(handle.calls) == 3 and provider.retries == 2
    assert handle.calls[0][2] > handle.calls[2][2]      # each attempt gets what is left of the deadline


def test_a_replica_shutting_down_passes_the_request_on():
    pytest.importorskip("ray", reason="Ray is not installed: pip install 'gigarouter[ray]'")
    stopping = {"error": error_message(errors.NotReady("stopping", code="shutting_down")), "replica": "r1"}
    provider, _ = provider_with([stopping, answer("r2")])
    assert asyncio.run(provider.embed(CALL, model="mini", timeout_s=10)).replica == "r2"


def test_a_replicas_own_error_is_not_retried():
    pytest.importorskip("ray", reason="Ray is not installed: pip install 'gigarouter[ray]'")
    full = {"error": error_message(errors.QueueFull("at capacity", retry_after=2)), "replica": "r1"}
    provider, handle = provider_with([full, answer("r2")])
    with pytest.raises(errors.QueueFull):
        asyncio.run(provider.embed(CALL, model="mini", timeout_s=10))
    assert len(handle.calls) == 1


def test_lost_replicas_past_the_deadline_are_a_503_and_other_ray_errors_too():
    rex = pytest.importorskip("ray.exceptions", reason="Ray is not installed: pip install 'gigarouter[ray]'")
    provider, _ = provider_with([rex.ActorDiedError()] * 50)
    with pytest.raises(errors.ProviderUnavailable, match="deadline") as lost:
        asyncio.run(provider.embed(CALL, model="mini", timeout_s=0.3))
    assert lost.value.code == "timeout" and errors.is_retryable(lost.value)
    provider, _ = provider_with([rex.RaySystemError("boom")])
    with pytest.raises(errors.ProviderUnavailable, match="Ray failed: RaySystemError"):
        asyncio.run(provider.embed(CALL, model="mini", timeout_s=5))


def test_not_ready_or_not_tokenized_is_a_retryable_503():
    provider, _ = provider_with([])
    provider.deployment.state = "loading"
    with pytest.raises(errors.ProviderUnavailable, match="is loading"):
        asyncio.run(provider.embed(CALL, model="mini", timeout_s=5))
    provider.deployment.state = "ready"
    with pytest.raises(errors.ProviderUnavailable, match="tokenizer"):
        asyncio.run(provider.embed(EmbedCall(texts=["a"], token_ids=None), model="mini", timeout_s=5))
