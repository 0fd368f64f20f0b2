"""Packed attention: every path equals attention run on each sequence alone; the path is chosen once."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from gigarouter.engine.models.attention import (
    BUCKET_MIN_FRACTION,
    GRID,
    VARLEN,
    AttentionLayout,
    AttentionUnavailable,
    VarlenKernel,
    attend,
    probe_varlen,
    select_attention,
)


def one_by_one(q, k, v, lengths, *, causal, window):
    """Reference: each sequence on its own, with an explicit mask (causal and/or window)."""
    outs, start = [], 0
    for n in lengths:
        qs, ks, vs = (x[start:start + n].transpose(0, 1) for x in (q, k, v))     # [H, n, D]
        if ks.shape[0] != qs.shape[0]:
            ks = ks.repeat_interleave(qs.shape[0] // ks.shape[0], 0)
            vs = vs.repeat_interleave(qs.shape[0] // vs.shape[0], 0)
        i = torch.arange(n)
        ok = torch.ones(n, n, dtype=torch.bool)
        if causal:
            ok &= i[None, :] <= i[:, None]
        if window is not None:
            ok &= i[:, None] - i[None, :] < window
        outs.append(F.scaled_dot_product_attention(qs, ks, vs, attn_mask=ok).transpose(0, 1))
        start += n
    return torch.cat(outs)


@pytest.mark.parametrize("causal,window,kv_heads", [(False, None, 4), (True, None, 2), (True, 5, 2), (False, 5, 4)])
@pytest.mark.parametrize("lengths", [[9], [3, 17, 1, 16, 8, 9, 2, 17], [6, 6, 6], [40, 1]])
def test_packed_attention_equals_each_sequence_alone(lengths, causal, window, kv_heads):
    torch.manual_seed(len(lengths))
    total, heads, dim = sum(lengths), 4, 8
    q = torch.randn(total, heads, dim)
    k, v = torch.randn(total, kv_heads, dim), torch.randn(total, kv_heads, dim)
    cu = torch.tensor([0, *torch.tensor(lengths).cumsum(0).tolist()])
    layout = AttentionLayout.build(cu, causal=causal, window=window)
    got = attend(q, k, v, layout)
    torch.testing.assert_close(got, one_by_one(q, k, v, lengths, causal=causal, window=window),
                               rtol=1e-5, atol=1e-5)


def test_buckets_group_similar_lengths_and_cover_every_token_once():
    lengths = [100, 3, 81, 95, 4, 50, 3, 79]
    cu = torch.tensor([0, *torch.tensor(lengths).cumsum(0).tolist()])
    buckets = AttentionLayout.build(cu, causal=False).buckets
    assert [b.count for b in buckets] == [3, 1, 1, 1, 2]         # {100, 95, 81} {79} {50} {4} {3, 3}
    for b in buckets:
        assert b.count * b.longest <= b.keep.numel() / BUCKET_MIN_FRACTION
    scattered = torch.cat([b.scatter for b in buckets]).sort().values
    assert torch.equal(scattered, torch.arange(sum(lengths)))


# -- the varlen kernel across torch versions, and choosing the path once -----------------------

def reference_varlen(q, k, v, cu_q, cu_k, max_q, max_k, *, causal, window):
    """What a correct varlen kernel returns, from the per-sequence reference (fp32 inside)."""
    lengths = (cu_q[1:] - cu_q[:-1]).tolist()
    if k.shape[1] != q.shape[1]:
        k = k.repeat_interleave(q.shape[1] // k.shape[1], 1)
        v = v.repeat_interleave(q.shape[1] // v.shape[1], 1)
    return one_by_one(q.float(), k.float(), v.float(), lengths, causal=causal, window=window).to(q.dtype)


def torch_2_10(query, key, value, cu_seq_q, cu_seq_k, max_q, max_k, is_causal=False, return_aux=None):
    assert key.shape[1] == query.shape[1], "2.10 has no grouped-query heads"
    return reference_varlen(query, key, value, cu_seq_q, cu_seq_k, max_q, max_k, causal=is_causal, window=None)


def torch_2_11(query, key, value, cu_seq_q, cu_seq_k, max_q, max_k, *, return_aux=None, scale=None,
               window_size=(-1, -1)):
    assert key.shape[1] == query.shape[1], "no enable_gqa yet"
    left, right = window_size
    return reference_varlen(query, key, value, cu_seq_q, cu_seq_k, max_q, max_k, causal=right == 0,
                            window=None if left < 0 else left + 1)


def torch_2_12(query, key, value, cu_seq_q, cu_seq_k, max_q, max_k, *, return_aux=None, scale=None,
               window_size=(-1, -1), enable_gqa=False, seqused_k=None, block_table=None, num_splits=None):
    assert enable_gqa == (key.shape[1] != query.shape[1])
    left, right = window_size
    return reference_varlen(query, key, value, cu_seq_q, cu_seq_k, max_q, max_k, causal=right == 0,
                            window=None if left < 0 else left + 1)


def packed(lengths, heads=4, kv_heads=2, dim=8, dtype=torch.bfloat16, seed=0):
    g = torch.Generator().manual_seed(seed)
    total = sum(lengths)
    return [torch.randn(total, h, dim, generator=g).to(dtype) for h in (heads, kv_heads, kv_heads)]


def both_flags(query, key, value, cu_seq_q, cu_seq_k, max_q, max_k, is_causal=False, *, window_size=(-1, -1)):
    """A signature with both is_causal and window_size: both must agree."""
    assert is_causal == (window_size[1] == 0)
    return torch_2_11(query, key, value, cu_seq_q, cu_seq_k, max_q, max_k, window_size=window_size)


@pytest.mark.parametrize("fn", [torch_2_10, torch_2_11, torch_2_12, both_flags],
                         ids=["2.10", "2.11", "2.12+", "is_causal+window"])
@pytest.mark.parametrize("causal,window", [(True, None), (False, None), (True, 5)])
def test_varlen_kernel_speaks_each_torch_signature(fn, causal, window):
    kernel = VarlenKernel.wrap(fn)
    assert kernel.gqa == (fn is torch_2_12) and kernel.window == (fn is not torch_2_10)
    assert kernel.is_causal == (fn in (torch_2_10, both_flags))
    lengths = [9, 3, 1, 12]
    q, k, v = packed(lengths)
    cu = np.concatenate([[0], np.cumsum(lengths)])
    layout = AttentionLayout.build(cu, causal=causal, window=window, path=VARLEN)
    if window is not None and not kernel.window:
        with pytest.raises(RuntimeError, match="no sliding window"):
            kernel(q, k, v, layout)
        return
    got = kernel(q, k, v, layout)
    want = one_by_one(q.float(), k.float(), v.float(), lengths, causal=causal, window=window)
    torch.testing.assert_close(got.float(), want, rtol=2e-2, atol=2e-2)


def test_an_unknown_signature_or_no_kernel_is_not_a_kernel():
    assert VarlenKernel.wrap(None) is None
    assert VarlenKernel.wrap(lambda q, k, v, cu, max_len: q) is None


def test_the_path_is_grid_on_cpu_and_asking_for_varlen_there_fails_loudly():
    args = dict(heads=4, kv_heads=2, head_dim=8, causal=True, window=None, max_seq_len=512)
    choice = select_attention(torch.device("cpu"), torch.float32, **args)
    assert choice.path == GRID and "cpu" in choice.reason
    with pytest.raises(AttentionUnavailable, match="varlen"):
        select_attention(torch.device("cpu"), torch.bfloat16, want="varlen", **args)
    assert select_attention(torch.device("cpu"), torch.bfloat16, want="grid", **args).path == GRID


def test_the_start_up_probe_takes_a_right_kernel_and_refuses_a_wrong_or_broken_one(caplog):
    args = dict(heads=4, kv_heads=2, head_dim=8, causal=True, window=4096, max_seq_len=4096)
    cpu = torch.device("cpu")
    right = select_attention(cpu, torch.bfloat16, kernel=VarlenKernel.wrap(torch_2_12), **args)
    assert right.path == VARLEN

    def ignores_boundaries(query, key, value, cu_seq_q, cu_seq_k, max_q, max_k, *, window_size=(-1, -1),
                           enable_gqa=False):     # one sequence over the whole batch: what a bad cu does
        whole = torch.tensor([0, query.shape[0]], dtype=torch.int32)
        return torch_2_12(query, key, value, whole, whole, max_q, max_k, window_size=window_size,
                          enable_gqa=enable_gqa)

    def raises(*a, window_size=(-1, -1), enable_gqa=False):
        raise RuntimeError("FlashAttention only supports Ampere GPUs or newer.")

    wrong = probe_varlen(VarlenKernel.wrap(ignores_boundaries), cpu, torch.bfloat16, heads=4, kv_heads=2, head_dim=8,
                         causal=True, window=None)
    assert "disagrees" in wrong
    with caplog.at_level("INFO"):
        broken = select_attention(cpu, torch.bfloat16, kernel=VarlenKernel.wrap(raises), **args)
    assert broken.path == GRID and "Ampere" in broken.reason and "attention path on cpu: grid" in caplog.text
    with pytest.raises(AttentionUnavailable, match="Ampere"):
        select_attention(cpu, torch.bfloat16, kernel=VarlenKernel.wrap(raises), want="varlen", **args)
    # A window longer sequences reach needs a kernel that takes one.
    assert select_attention(cpu, torch.bfloat16, kernel=VarlenKernel.wrap(torch_2_10), **{
        **args, "kv_heads": 4, "window": 256}).path == GRID


def test_a_layout_built_from_a_device_tensor_equals_one_from_the_host_copy():
    lengths = [5, 1, 9]
    cu = np.concatenate([[0], np.cumsum(lengths)])
    a = AttentionLayout.build(cu, causal=True)
    b = AttentionLayout.build(torch.from_numpy(cu), causal=True)
    assert a.max_len == b.max_len == 9 and a.num_tokens == 15
    assert torch.equal(a.pos_in_seq, b.pos_in_seq) and torch.equal(a.cu_seqlens, b.cu_seqlens)
    assert a.pos_in_seq.tolist() == [0, 1, 2, 3, 4, 0, 0, 1, 2, 3, 4, 5, 6, 7, 8]
