"""Attention over packed (padding-free) sequences.

The model keeps activations packed, ``[total_tokens, ...]``; only attention
needs to know where sequences begin and end. ``AttentionLayout`` is built once
per forward pass from ``cu_seqlens`` and reused by every layer.

CPU / portable path: scatter the packed tokens into a ``[n, max_len]`` grid,
run ``scaled_dot_product_attention`` with a key mask (plus causal / sliding
window), gather back. The scheduler groups sequences of similar length, so the
grid wastes little. A single sequence skips the grid entirely.

CUDA path (fp16/bf16): PyTorch's varlen flash-attention kernel reads the packed
tensors directly with ``cu_seqlens``, so no grid, no mask and no padding FLOPs.
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
    cu_seqlens: torch.Tensor | None = None   # [n+1] int32, for the varlen kernel
    window: int | None = None                # sliding window (keys with i - j < window)

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
        cu32 = cu_seqlens.to(torch.int32)
        if all_full and not window_bites:
            return cls(n, max_len, seq_of_token, pos_in_seq, None, causal, cu32, window)
        pos = torch.arange(max_len, device=device)
        key_ok = pos[None, :] < lengths[:, None]                      # [n, L]
        mask = key_ok[:, None, None, :].expand(n, 1, max_len, max_len)  # [n, 1, Lq, Lk]
        if causal:
            mask = mask & (pos[None, :] <= pos[:, None])
        if window_bites:
            # Mistral's sliding window: query i sees keys j with i - j < window.
            mask = mask & (pos[:, None] - pos[None, :] < window)
        return cls(n, max_len, seq_of_token, pos_in_seq, mask.contiguous(), causal, cu32, window)

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
    if _varlen_ok(q):
        try:
            return _attend_varlen(q, k, v, layout, gqa=gqa)
        except torch.OutOfMemoryError:
            raise
        except (RuntimeError, NotImplementedError):
            _disable_varlen()   # a GPU or build without the kernel: the grid path below always works
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


def _varlen_ok(q: torch.Tensor) -> bool:
    return q.is_cuda and q.dtype in (torch.float16, torch.bfloat16) and _varlen_attn is not None


def _attend_varlen(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, layout: AttentionLayout, *,
                   gqa: bool) -> torch.Tensor:
    # window_size=(left, right): query i sees keys [i - left, i + right]; -1 = unbounded.
    left = layout.window - 1 if layout.window is not None else -1
    right = 0 if layout.causal else -1
    return _varlen_attn(q, k, v, layout.cu_seqlens, layout.cu_seqlens, layout.max_len, layout.max_len,
                        window_size=(left, right), enable_gqa=gqa)


def _disable_varlen() -> None:
    global _varlen_attn
    _varlen_attn = None


try:  # PyTorch >= 2.10 ships a varlen flash-attention op; older builds use the grid path.
    from torch.nn.attention.varlen import varlen_attn as _varlen_attn
except ImportError:  # pragma: no cover - depends on the torch build
    _varlen_attn = None
