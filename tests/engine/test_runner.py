"""TorchEngine: packing in, pooled vectors out; budgets chosen from memory and checked by warm-up."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from gigarouter.engine.base import pack
from gigarouter.engine.runner import TorchEngine, budget_from_memory
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


def test_budget_from_memory_scales_with_free_memory_and_rounds_to_whole_sequences():
    mistral = dict(hidden=4096, intermediate=14336, dtype_bytes=2, max_seq_len=512)
    small = budget_from_memory(free_bytes=8 * 2**30, **mistral)
    large = budget_from_memory(free_bytes=60 * 2**30, **mistral)
    assert small % 512 == 0 and large % 512 == 0
    assert 0 < small < large <= 262_144
    # per token: (6*4096 + 3*14336) * 2 bytes + 4*4096 bytes of float32 pooling = 151,552
    assert large == int(60 * 2**30 * 0.6) // 151_552 // 512 * 512
    assert budget_from_memory(free_bytes=1, **mistral) == 512
