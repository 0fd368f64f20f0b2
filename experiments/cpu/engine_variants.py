"""Engine A/B on server-like batches: attention over length buckets (what ships) against
alternatives that were tried and not kept.

    python experiments/cpu/engine_variants.py            # both cores
    OMP_NUM_THREADS=1 python experiments/cpu/engine_variants.py

Variants, all on the default model (all-MiniLM-L6-v2, fp32):
- ``buckets``: the shipped attention (one grid per length bucket), batches costed n x longest;
- ``one-grid``: every sequence of a batch padded to the batch's longest (before 941317c);
- ``buckets+sum-cost``: batches costed by the sum of their lengths instead of n x longest;
- ``buckets+fused-qkv``: q, k and v from one matmul with the three weights concatenated.
"""

from __future__ import annotations

import os

import numpy as np
import torch
import torch.nn.functional as F
from _common import header, interleaved, server_like_batches, tokens_per_second

import gigarouter.engine.models.bert as bert
from gigarouter.embedder import Embedder
from gigarouter.engine.models import attention

torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", torch.get_num_threads())))


def attend_one_grid(q, k, v, layout):
    """Reference: one [n, longest] grid per batch with a key mask (bidirectional only)."""
    cu = layout.cu_seqlens.tolist()
    n, longest = layout.num_sequences, layout.max_len
    lengths = torch.tensor([cu[i + 1] - cu[i] for i in range(n)])
    seq = torch.repeat_interleave(torch.arange(n), lengths)
    grid_q, grid_k, grid_v = (x.new_zeros(n, longest, *x.shape[1:]) for x in (q, k, v))
    for grid, x in ((grid_q, q), (grid_k, k), (grid_v, v)):
        grid[seq, layout.pos_in_seq] = x
    mask = (torch.arange(longest)[None, :] < lengths[:, None])[:, None, None, :]
    out = F.scaled_dot_product_attention(grid_q.transpose(1, 2), grid_k.transpose(1, 2), grid_v.transpose(1, 2),
                                         attn_mask=mask)
    return out.transpose(1, 2)[seq, layout.pos_in_seq]


def plan_sum_of_lengths(lengths, budget):
    """Oldest first, then nearest lengths, while the sum of lengths fits the budget."""
    anchor = lengths[0]
    chosen, total = [0], anchor
    for i in sorted(range(1, len(lengths)), key=lambda i: (abs(lengths[i] - anchor), i)):
        if total + lengths[i] <= budget:
            chosen.append(i)
            total += lengths[i]
    return chosen


def fused_qkv_forward(self, x, layout):
    s, t = self.self, x.shape[0]
    qkv = F.linear(x, s.fused_w, s.fused_b).view(t, 3, s.heads, s.head_dim)
    ctx = bert.attend(qkv[:, 0], qkv[:, 1], qkv[:, 2], layout).reshape(t, -1)
    return self.output.LayerNorm(self.output.dense(ctx) + x)


def main() -> None:
    embedder = Embedder()
    model = embedder.engine.model
    for layer in model.encoder.layer:
        s = layer.attention.self
        s.fused_w = torch.cat([s.query.weight, s.key.weight, s.value.weight])
        s.fused_b = torch.cat([s.query.bias, s.key.bias, s.value.bias])
    shipped_attend, shipped_forward = bert.attend, bert.BertAttention.forward
    batches = {"n x longest": server_like_batches(embedder),
               "sum of lengths": server_like_batches(embedder, planner=plan_sum_of_lengths)}

    def variant(attend, forward, plan):
        tokens = sum(b.num_tokens for b in batches[plan])

        def run() -> float:
            bert.attend, bert.BertAttention.forward = attend, forward
            try:
                return tokens_per_second(lambda: [embedder.engine.embed(b) for b in batches[plan]], tokens)
            finally:
                bert.attend, bert.BertAttention.forward = shipped_attend, shipped_forward
        return run

    runs = {"buckets": variant(attention.attend, shipped_forward, "n x longest"),
            "one-grid": variant(attend_one_grid, shipped_forward, "n x longest"),
            "buckets+sum-cost": variant(attention.attend, shipped_forward, "sum of lengths"),
            "buckets+fused-qkv": variant(attention.attend, fused_qkv_forward, "n x longest")}
    rates = interleaved(runs)
    print(f"# {header()}; {torch.get_num_threads()} torch thread(s)")
    for plan, bs in batches.items():
        print(f"# batches costed by {plan}: {len(bs)} batches, mean {np.mean([b.num_tokens for b in bs]):.0f} tokens")
    for name, rate in rates.items():
        print(f"{name:20s} {rate:9,.0f} tokens/s   {rate / rates['buckets']:.2f}x buckets")
    bert.attend = attend_one_grid
    grid = [embedder.engine.embed(b) for b in batches["n x longest"]]
    bert.attend = shipped_attend
    ours = [embedder.engine.embed(b) for b in batches["n x longest"]]
    worst = max(float(np.abs(a - b).max()) for a, b in zip(grid, ours, strict=True))
    print(f"max abs difference buckets vs one-grid: {worst:.1e}")


if __name__ == "__main__":
    main()
