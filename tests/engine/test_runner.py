"""TorchEngine: packing in, pooled vectors out; budgets chosen from memory and checked by warm-up."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import torch
from torch import nn

from gigarouter.engine.base import pack
from gigarouter.engine.runner import PROCESS_THREADS, TorchEngine, budget_from_memory, default_parallel_batches
from gigarouter.errors import EngineOutOfMemory
from gigarouter.pooling.pooling import PoolingMode


class Echo(nn.Module):
    """hidden = one-hot-ish features of the token id, so pooling is checkable by hand."""

    def __init__(self, fail_over_tokens: int | None = None) -> None:
        super().__init__()
        self.fail_over_tokens = fail_over_tokens
        self.calls: list[int] = []

    def forward(self, ids: torch.Tensor, cu: torch.Tensor) -> torch.Tensor:
        self.calls.append(ids.numel())
        if self.fail_over_tokens is not None and ids.numel() > self.fail_over_tokens:
            raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
        return torch.stack([ids.float(), ids.float() ** 2], dim=1)


def engine(model: nn.Module, pooling=PoolingMode.MEAN, budget=64, max_len=8) -> TorchEngine:
    return TorchEngine(model, pooling=pooling, dim=2, device=torch.device("cpu"), token_budget=budget,
                       max_seq_len=max_len)


def test_embed_pools_each_sequence_over_its_span():
    out = engine(Echo()).embed(pack([[1, 2, 3], [4, 6]], pool_starts=[1, 0]))
    np.testing.assert_allclose(out, [[2.5, 6.5], [5.0, 26.0]])
    last = engine(Echo(), PoolingMode.LAST).embed(pack([[1, 2, 3], [4, 6]]))
    np.testing.assert_allclose(last, [[3, 9], [6, 36]])


def test_warmup_halves_the_budget_until_it_fits():
    model = Echo(fail_over_tokens=20)
    e = engine(model, budget=64, max_len=8)
    e.warmup()
    assert e.token_budget == 16
    assert model.calls == [64, 32, 16]


def test_torch_out_of_memory_becomes_engine_out_of_memory(monkeypatch):
    model = Echo()
    e = engine(model)

    def forward(ids, cu):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB (simulated)")

    monkeypatch.setattr(model, "forward", forward)
    with pytest.raises(EngineOutOfMemory) as err:
        e.embed(pack([[1, 2, 3], [4, 5]]))
    assert not isinstance(err.value, torch.OutOfMemoryError)
    assert err.value.status == 503 and err.value.code == "device_out_of_memory"
    assert "5 tokens" in err.value.message and "GiB" not in err.value.message   # no torch internals
    monkeypatch.undo()
    np.testing.assert_allclose(e.embed(pack([[1, 2, 3]])), [[2.0, 14 / 3]])   # the engine still works after


def test_warmup_gives_up_with_engine_out_of_memory_when_one_sequence_does_not_fit():
    e = engine(Echo(fail_over_tokens=4), budget=64, max_len=8)
    with pytest.raises(EngineOutOfMemory):
        e.warmup()
    assert e.token_budget == 8


def test_budget_from_memory_scales_with_free_memory_and_rounds_to_whole_sequences():
    mistral = dict(hidden=4096, intermediate=14336, dtype_bytes=2, max_seq_len=512)
    small = budget_from_memory(free_bytes=8 * 2**30, **mistral)
    large = budget_from_memory(free_bytes=60 * 2**30, **mistral)
    assert small % 512 == 0 and large % 512 == 0
    assert 0 < small < large <= 262_144
    # per token: (6*4096 + 3*14336) * 2 bytes + 4*4096 bytes of float32 pooling = 151,552
    assert large == int(60 * 2**30 * 0.6) // 151_552 // 512 * 512
    assert budget_from_memory(free_bytes=1, **mistral) == 512


class ThreadsSeen(Echo):
    def forward(self, ids: torch.Tensor, cu: torch.Tensor) -> torch.Tensor:
        self.calls.append(torch.get_num_threads())
        return super().forward(ids, cu)


@pytest.mark.skipif(PROCESS_THREADS < 2, reason="needs at least 2 torch threads to tell a share from all")
def test_a_concurrent_batch_runs_on_its_share_of_the_cores_and_a_lone_one_on_all():
    cores = PROCESS_THREADS
    model = ThreadsSeen()
    e = TorchEngine(model, pooling=PoolingMode.MEAN, dim=2, device=torch.device("cpu"), token_budget=64,
                    max_seq_len=8, parallel_batches=2)
    with ThreadPoolExecutor(1) as device_thread:
        device_thread.submit(e.embed, pack([[1, 2]]), concurrent=True).result()
        device_thread.submit(e.embed, pack([[1, 2]])).result()
    assert model.calls[0] == max(1, cores // 2) and model.calls[2] == cores   # Echo logs ids too
    assert torch.get_num_threads() == cores        # the caller's own setting is untouched
    # A thread started afterwards inherits torch's last setting (1), yet a model loaded
    # there must still get one batch per core.
    with ThreadPoolExecutor(1) as later_thread:
        assert later_thread.submit(default_parallel_batches, torch.device("cpu")).result() == cores


def test_parallel_batches_on_the_real_model_give_the_vectors_of_serial_ones(minilm_recipe):
    from gigarouter.providers.local.loading import load_model
    from gigarouter.settings import Settings, default_model

    _recipe, real = load_model(default_model(), Settings(cpu_parallel_batches=2), progress=False)
    assert real.parallel_batches == 2
    texts = ["a short query", "a longer passage about llamas, alpacas and other camelids",
             "one more", "and a fourth text of middling length"]
    items = minilm_recipe.prepare_texts(texts, input_type="document", instruction=None, truncate="end")
    batches = [pack([it.token_ids for it in items[:2]]), pack([it.token_ids for it in items[2:]])]
    serial = [real.embed(b) for b in batches]
    with ThreadPoolExecutor(2) as pool:
        parallel = list(pool.map(lambda b: real.embed(b, concurrent=True), batches * 3))
    for i, got in enumerate(parallel):
        np.testing.assert_allclose(got, serial[i % 2], rtol=0, atol=1e-5)
