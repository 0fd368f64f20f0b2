"""Packed attention: every path equals attention run on each sequence alone."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from gigarouter.engine.models.attention import BUCKET_MIN_FRACTION, AttentionLayout, attend


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
