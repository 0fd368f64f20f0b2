"""The CUDA code paths, run on a fake CUDA device (FakeTensorMode) at the shapes a GPU serves.

No GPU in CI, yet the varlen flash call, the grid path as CUDA runs it, the
models and pooling all execute here with bf16 tensors that say ``cuda``: a
wrong argument, dtype, device or shape raises, and so does anything that would
make a pass wait for the device (fake tensors have no values to read).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from gigarouter.engine.base import pack
from gigarouter.engine.models import attention
from gigarouter.engine.models.attention import GRID, VARLEN, AttentionChoice, AttentionLayout, attend
from gigarouter.engine.models.bert import BertConfig, BertModel
from gigarouter.engine.models.mistral import MistralConfig, MistralModel
from gigarouter.engine.runner import TorchEngine
from gigarouter.pooling.pooling import PoolingMode, pool
from tests.engine.fake_cuda import CUDA, OpRecorder, fake_cuda

pytestmark = pytest.mark.skipif(attention._VARLEN is None, reason="this torch has no varlen_attn")

# Mistral-7B's attention: 32 query heads, 8 K/V heads of 128, a 4096-token sliding window.
HEADS, KV_HEADS, HEAD_DIM, WINDOW = 32, 8, 128, 4096
MISTRAL_7B_2_LAYERS = MistralConfig(vocab_size=32000, hidden_size=4096, intermediate_size=14336, num_hidden_layers=2,
                                    num_attention_heads=HEADS, num_key_value_heads=KV_HEADS, head_dim=HEAD_DIM,
                                    sliding_window=WINDOW)
MINILM = BertConfig(vocab_size=30522, hidden_size=384, num_hidden_layers=2, num_attention_heads=12,
                    intermediate_size=1536)


def cu_of(lengths) -> np.ndarray:
    return np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)


def qkv(total: int, dtype=torch.bfloat16):
    return (torch.empty(total, HEADS, HEAD_DIM, dtype=dtype, device=CUDA),
            torch.empty(total, KV_HEADS, HEAD_DIM, dtype=dtype, device=CUDA),
            torch.empty(total, KV_HEADS, HEAD_DIM, dtype=dtype, device=CUDA))


def varlen_call(recorder: OpRecorder) -> tuple:
    calls = recorder.named("_varlen_attn")
    assert len(calls) == 1, [n for n, _, _ in recorder.calls]
    return calls[0][0]


@pytest.mark.parametrize("lengths,causal,window,want_window", [
    ([4096, 512, 512, 511, 17, 1], True, WINDOW, [-1, 0]),         # causal, window never reached
    ([5000, 100, 3], True, WINDOW, [WINDOW - 1, 0]),               # a sequence longer than the window
    ([512, 300, 1], False, None, [-1, -1]),                         # bidirectional (LLM2Vec)
])
def test_varlen_flash_gets_int32_cu_seqlens_host_sizes_window_and_grouped_heads(monkeypatch, lengths, causal, window,
                                                                                want_window):
    with fake_cuda(monkeypatch):
        cu = cu_of(lengths)
        q, k, v = qkv(int(cu[-1]))
        layout = AttentionLayout.build(cu, causal=causal, window=window, path=VARLEN, device=CUDA)
        with OpRecorder() as rec:
            out = attend(q, k, v, layout)
    assert out.shape == q.shape and out.dtype == torch.bfloat16 and out.device == CUDA
    args = varlen_call(rec)
    query, key, value, cu_q, cu_k, max_q, max_k = args[:7]
    assert query.shape == (cu[-1], HEADS, HEAD_DIM) and key.shape == value.shape == (cu[-1], KV_HEADS, HEAD_DIM)
    assert cu_q.dtype == cu_k.dtype == torch.int32 and cu_q.device == CUDA and cu_q.shape == (len(lengths) + 1,)
    assert type(max_q) is int and max_q == max_k == max(lengths)       # a host int, not a tensor read back
    assert list(args[9]) == want_window                                  # window_size (left, right)
    assert args[10] is True                                              # grouped-query heads in the kernel
    assert not rec.named("_to_copy") or all(a[0].device == CUDA for a, _ in rec.named("_to_copy"))


def test_varlen_refuses_what_the_flash_kernel_cannot_take(monkeypatch):
    with fake_cuda(monkeypatch):
        cu = cu_of([10, 20])
        layout = AttentionLayout.build(cu, causal=True, path=VARLEN, device=CUDA)
        q, k, v = qkv(30, dtype=torch.float32)
        with pytest.raises(TypeError, match="fp16 or all bf16"):
            attend(q, k, v, layout)
        q, k, v = qkv(29)
        with pytest.raises(ValueError, match="rows"):
            attend(q, k, v, layout)


def test_grid_path_on_cuda_repeats_kv_heads_instead_of_enable_gqa(monkeypatch):
    seen = []
    real_sdpa = F.scaled_dot_product_attention

    def spy(q, k, v, **kwargs):
        seen.append((q.shape, k.shape, v.shape, kwargs))
        return real_sdpa(q, k, v, **kwargs)

    monkeypatch.setattr(attention.F, "scaled_dot_product_attention", spy)
    lengths = [512, 500, 460, 100, 3, 1]
    with fake_cuda(monkeypatch):
        cu = cu_of(lengths)
        q, k, v = qkv(int(cu[-1]))
        out = attend(q, k, v, AttentionLayout.build(cu, causal=True, window=WINDOW, path=GRID, device=CUDA))
        single = attend(*qkv(300), AttentionLayout.build(cu_of([300]), causal=True, path=GRID, device=CUDA))
    assert out.shape == q.shape and out.device == CUDA and single.shape == (300, HEADS, HEAD_DIM)
    assert len(seen) == 4 + 1          # buckets {512, 500, 460} {100} {3} {1}, then the lone sequence
    for q_shape, k_shape, v_shape, kwargs in seen:
        assert q_shape[1] == k_shape[1] == v_shape[1] == HEADS
        assert not kwargs.get("enable_gqa")
    masked = [kw["attn_mask"] for *_, kw in seen if kw.get("attn_mask") is not None]
    assert [tuple(m.shape) for m in masked] == [(3, 1, 512, 512)]     # only the bucket of unequal lengths


def test_fake_cuda_catches_a_pass_that_would_wait_for_the_device(monkeypatch):
    """The harness itself: reading a value back (what ``int(cu[-1])`` did) raises on a fake device."""
    with fake_cuda(monkeypatch):
        cu = torch.tensor([0, 3, 7], device=CUDA)
        # Fake tensors raise a RuntimeError subclass (DataDependentOutputException and the like).
        with pytest.raises(RuntimeError):
            int(cu[-1].item())
        with pytest.raises(RuntimeError):
            torch.repeat_interleave(torch.arange(2, device=CUDA), cu.diff())


def fake_model(cls, cfg, path):
    with torch.device("meta"):
        model = cls(cfg)
    # As the loader does: every weight assigned in place (here a fake bf16 tensor on "cuda").
    model.load_state_dict({name: torch.empty(p.shape, dtype=torch.bfloat16, device=CUDA)
                           for name, p in model.named_parameters()}, assign=True)
    model.eval().requires_grad_(False)
    model.attention_path = path
    return model


@pytest.mark.parametrize("path", [VARLEN, GRID])
@pytest.mark.parametrize("causal,mode", [(True, PoolingMode.LAST), (False, PoolingMode.MEAN)])
def test_mistral_7b_width_forward_and_pooling_on_fake_cuda(monkeypatch, path, causal, mode):
    lengths = [1024, 512, 512, 300, 17, 1]
    with fake_cuda(monkeypatch), torch.inference_mode():
        model = fake_model(MistralModel, MISTRAL_7B_2_LAYERS.with_causal(causal), path)
        cu = cu_of(lengths)
        ids = torch.randint(0, 32000, (int(cu[-1]),), device=CUDA)
        with OpRecorder() as rec:
            hidden = model(ids, cu)
            pooled = pool(hidden, cu, np.array([0, 5, 0, 0, 3, 0]), mode)
    assert hidden.shape == (cu[-1], 4096) and hidden.dtype == torch.bfloat16 and hidden.device == CUDA
    assert pooled.shape == (len(lengths), 4096) and pooled.dtype == torch.float32 and pooled.device == CUDA
    assert len(rec.named("_varlen_attn")) == (2 if path == VARLEN else 0)
    assert not rec.named("index_add_") and not rec.named("nonzero")


@pytest.mark.parametrize("path", [VARLEN, GRID])
def test_minilm_width_bert_forward_and_mean_pooling_on_fake_cuda(monkeypatch, path):
    lengths = [256, 200, 31, 1]
    with fake_cuda(monkeypatch), torch.inference_mode():
        model = fake_model(BertModel, MINILM, path)
        cu = cu_of(lengths)
        hidden = model(torch.randint(0, 30522, (int(cu[-1]),), device=CUDA), cu)
        pooled = pool(hidden, cu, np.zeros(4, dtype=np.int64), PoolingMode.MEAN)
    assert hidden.shape == (cu[-1], 384) and pooled.shape == (4, 384) and pooled.dtype == torch.float32


def test_mean_pooling_of_a_large_batch_on_fake_cuda_uses_bounded_matrices(monkeypatch):
    lengths = [1] * 3000 + [512] * 24                 # many tiny sequences, then a budget's worth of documents
    with fake_cuda(monkeypatch):
        cu = cu_of(lengths)
        hidden = torch.empty(int(cu[-1]), 4096, dtype=torch.bfloat16, device=CUDA)
        with OpRecorder() as rec:
            pooled = pool(hidden, cu, np.zeros(len(lengths), dtype=np.int64), PoolingMode.MEAN)
    assert pooled.shape == (len(lengths), 4096) and pooled.dtype == torch.float32
    products = [a for a, _ in rec.named("mm")]
    assert len(products) > 1 and all(w.numel() <= (1 << 22) for w, _ in products)
    assert sum(w.shape[0] for w, _ in products) == len(lengths)


@pytest.mark.parametrize("mode", [PoolingMode.LAST, PoolingMode.MEAN])
def test_an_engine_pass_on_fake_cuda_runs_from_a_packed_batch_to_pooled_vectors(monkeypatch, mode):
    """TorchEngine's pass as the device thread runs it: token ids uploaded, host cu_seqlens, varlen, pooling."""
    batch = pack([[5] * n for n in (4096, 512, 17, 1)], pool_starts=[3, 0, 0, 0])
    with fake_cuda(monkeypatch), torch.inference_mode():
        model = fake_model(MistralModel, MISTRAL_7B_2_LAYERS, GRID)
        e = TorchEngine(model, pooling=mode, dim=4096, device=CUDA, token_budget=16384, max_seq_len=4096,
                        attention=AttentionChoice(VARLEN, "chosen by the test"))
        with OpRecorder() as rec:
            out = e._forward(batch)
    assert model.attention_path == VARLEN and e.parallel_batches == 1
    assert out.shape == (4, 4096) and out.dtype == torch.float32 and out.device == CUDA
    assert len(rec.named("_varlen_attn")) == 2
    assert rec.named("embedding")[0][0][1].device == CUDA          # the token ids, on the device
