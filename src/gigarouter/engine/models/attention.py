"""Attention over packed (padding-free) sequences.

The model keeps activations packed, ``[total_tokens, ...]``; only attention
needs to know where sequences begin and end. ``AttentionLayout`` is built once
per forward pass from ``cu_seqlens`` and reused by every layer.

CPU / portable path: sequences are sorted by length and cut into buckets of
similar length; each bucket is gathered into its own ``[m, longest]`` grid,
run through ``scaled_dot_product_attention`` with a key mask (plus causal /
sliding window) where a sequence is shorter than the bucket's longest, and
scattered back. One grid for the whole batch would pad every sequence to the
batch's longest; buckets keep attention's work near the sum of each
sequence's own square (docs/benchmarks.md, section 4). A single sequence
skips the grid entirely.

CUDA path (fp16/bf16): PyTorch's varlen flash-attention kernel reads the packed
tensors directly with ``cu_seqlens``, so no grid, no mask and no padding FLOPs.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import torch
import torch.nn.functional as F

# A sequence joins a bucket while it is at least this fraction of the bucket's longest:
# padding stays under ~35% of a bucket's attention work, and a typical mixed batch needs
# only a handful of grids (each SDPA call has a fixed cost).
BUCKET_MIN_FRACTION = 0.8


@dataclass(frozen=True)
class Bucket:
    """Sequences of similar length that share one attention grid."""

    count: int
    longest: int
    gather: torch.Tensor         # [count * longest] packed row of each grid cell (0 where padding)
    keep: torch.Tensor           # [valid cells] grid cells that hold a real token
    scatter: torch.Tensor        # [valid cells] packed row each kept cell goes back to
    mask: torch.Tensor | None    # [count, 1, longest, longest] bool, None = no mask needed


@dataclass(frozen=True)
class AttentionLayout:
    num_sequences: int
    max_len: int
    pos_in_seq: torch.Tensor     # [T] position of each token inside its sequence
    causal: bool
    cu_seqlens: torch.Tensor     # [n+1] int32: sequence i is rows cu[i]:cu[i+1]
    window: int | None = None    # sliding window (query i sees keys j with i - j < window)

    @classmethod
    def build(cls, cu_seqlens: torch.Tensor, *, causal: bool, window: int | None = None) -> AttentionLayout:
        lengths = cu_seqlens[1:] - cu_seqlens[:-1]
        n = lengths.numel()
        device = cu_seqlens.device
        seq_of_token = torch.repeat_interleave(torch.arange(n, device=device), lengths)
        pos_in_seq = torch.arange(int(cu_seqlens[-1]), device=device) - cu_seqlens[:-1][seq_of_token]
        return cls(n, int(lengths.max()), pos_in_seq, causal, cu_seqlens.to(torch.int32), window)

    @property
    def window_bites(self) -> bool:
        return self.window is not None and self.max_len > self.window

    @cached_property
    def buckets(self) -> list[Bucket]:
        """The grids of the portable path; built on first use and shared by every layer."""
        cu = self.cu_seqlens.tolist()
        lengths = [cu[i + 1] - cu[i] for i in range(self.num_sequences)]
        groups: list[list[int]] = []
        for i in sorted(range(self.num_sequences), key=lambda i: -lengths[i]):
            if groups and lengths[i] >= BUCKET_MIN_FRACTION * lengths[groups[-1][0]]:
                groups[-1].append(i)
            else:
                groups.append([i])
        return [self._bucket([cu[i] for i in g], [lengths[i] for i in g]) for g in groups]

    def _bucket(self, starts: list[int], lengths: list[int]) -> Bucket:
        device = self.cu_seqlens.device
        count, longest = len(lengths), lengths[0]
        pos = torch.arange(longest, device=device)
        valid = pos[None, :] < torch.tensor(lengths, device=device)[:, None]     # [m, L]
        rows = torch.tensor(starts, device=device)[:, None] + pos[None, :]       # packed row per cell
        keep = valid.flatten().nonzero().squeeze(1)
        window_bites = self.window is not None and longest > self.window
        mask = None
        if window_bites or not bool(valid.all()):
            mask = valid[:, None, None, :].expand(count, 1, longest, longest)
            if self.causal:
                mask = mask & (pos[None, :] <= pos[:, None])
            if window_bites:
                mask = mask & (pos[:, None] - pos[None, :] < self.window)
            mask = mask.contiguous()
        return Bucket(count, longest, gather=torch.where(valid, rows, 0).flatten(), keep=keep,
                      scatter=rows.flatten()[keep], mask=mask)


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
    if layout.num_sequences == 1 and not layout.window_bites:
        out = F.scaled_dot_product_attention(
            q.transpose(0, 1)[None], k.transpose(0, 1)[None], v.transpose(0, 1)[None],
            is_causal=layout.causal, enable_gqa=gqa)
        return out[0].transpose(0, 1)
    out = q.new_empty(q.shape[0], q.shape[1], v.shape[2])
    for b in layout.buckets:
        o = F.scaled_dot_product_attention(_grid(q, b), _grid(k, b), _grid(v, b), attn_mask=b.mask,
                                           is_causal=layout.causal and b.mask is None, enable_gqa=gqa)
        out[b.scatter] = o.transpose(1, 2).reshape(b.count * b.longest, *out.shape[1:])[b.keep]
    return out


def _grid(x: torch.Tensor, bucket: Bucket) -> torch.Tensor:
    """One bucket's sequences as a padded grid: [T, H, D] -> [count, H, longest, D]."""
    return x[bucket.gather].view(bucket.count, bucket.longest, *x.shape[1:]).transpose(1, 2)


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
