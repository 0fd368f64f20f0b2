"""Attention over packed (padding-free) sequences.

The model keeps activations packed, ``[total_tokens, ...]``; only attention
needs to know where sequences begin and end. ``AttentionLayout`` is built once
per forward pass from ``cu_seqlens`` and reused by every layer.

CPU / portable path: scatter the packed tokens into a ``[n, max_len]`` grid,
run ``scaled_dot_product_attention`` with a key mask (plus causal / sliding
window), gather back. The scheduler groups sequences of similar length, so the
grid wastes little. A single sequence skips the grid entirely. Backends with a
true varlen kernel can replace ``attend`` without touching the models.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class AttentionLayout:
    num_sequences: int
    max_len: int
    seq_of_token: torch.Tensor   # [T] which sequence each packed token belongs to
    pos_in_seq: torch.Tensor     # [T] position of each token inside its sequence
    mask: torch.Tensor | None    # [n, 1, L, L] bool (True = may attend), None = no mask needed
    causal: bool                 # only meaningful when mask is None

    @classmethod
    def build(cls, cu_seqlens: torch.Tensor, *, causal: bool, window: int | None = None) -> "AttentionLayout":
        lengths = cu_seqlens[1:] - cu_seqlens[:-1]
        n = lengths.numel()
        max_len = int(lengths.max())
        device = cu_seqlens.device
        seq_of_token = torch.repeat_interleave(torch.arange(n, device=device), lengths)
        pos_in_seq = torch.arange(int(cu_seqlens[-1]), device=device) - cu_seqlens[:-1][seq_of_token]
        window_bites = window is not None and max_len > window
        all_full = bool((lengths == max_len).all())
        if all_full and not window_bites:
            return cls(n, max_len, seq_of_token, pos_in_seq, None, causal)
        pos = torch.arange(max_len, device=device)
        key_ok = pos[None, :] < lengths[:, None]                      # [n, L]
        mask = key_ok[:, None, None, :].expand(n, 1, max_len, max_len)  # [n, 1, Lq, Lk]
        if causal:
            mask = mask & (pos[None, :] <= pos[:, None])
        if window_bites:
            # Mistral's sliding window: query i sees keys j with i - j < window.
            mask = mask & (pos[:, None] - pos[None, :] < window)
        return cls(n, max_len, seq_of_token, pos_in_seq, mask.contiguous(), causal)

    def to_grid(self, x: torch.Tensor) -> torch.Tensor:
        """x: [T, H, D] -> [n, H, L, D] (zeros where a sequence is shorter than L)."""
        grid = x.new_zeros(self.num_sequences, self.max_len, *x.shape[1:])
        grid[self.seq_of_token, self.pos_in_seq] = x
        return grid.transpose(1, 2)

    def from_grid(self, grid: torch.Tensor) -> torch.Tensor:
        """grid: [n, H, L, D] -> [T, H, D]."""
        return grid.transpose(1, 2)[self.seq_of_token, self.pos_in_seq]


def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, layout: AttentionLayout) -> torch.Tensor:
    """q: [T, Hq, D], k/v: [T, Hkv, D] (grouped-query when Hkv < Hq) -> [T, Hq, D]."""
    gqa = k.shape[1] != q.shape[1]
    if layout.num_sequences == 1 and layout.mask is None:
        out = F.scaled_dot_product_attention(
            q.transpose(0, 1)[None], k.transpose(0, 1)[None], v.transpose(0, 1)[None],
            is_causal=layout.causal, enable_gqa=gqa)
        return out[0].transpose(0, 1)
    qg, kg, vg = layout.to_grid(q), layout.to_grid(k), layout.to_grid(v)
    out = F.scaled_dot_product_attention(
        qg, kg, vg, attn_mask=layout.mask,
        is_causal=layout.causal and layout.mask is None, enable_gqa=gqa)
    return layout.from_grid(out)
