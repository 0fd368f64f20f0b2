"""Mean / last-token / CLS pooling over packed hidden states.

Hidden states arrive packed, ``[total_tokens, hidden]``, with ``cu_seqlens``
marking sequence boundaries. Accumulation is float32 whatever the model dtype.
"""

from __future__ import annotations

import torch

from gigarouter.pooling.modes import PoolingMode

__all__ = ["PoolingMode", "pool"]


def pool(hidden: torch.Tensor, cu_seqlens: torch.Tensor, pool_starts: torch.Tensor,
         mode: PoolingMode) -> torch.Tensor:
    """Return ``[n, hidden]`` float32.

    hidden: [total_tokens, hidden]; cu_seqlens: [n+1] int64; pool_starts: [n] int64,
    offsets inside each sequence where the mean begins (ignored by LAST and CLS).
    """
    if mode is PoolingMode.LAST:
        return hidden[cu_seqlens[1:] - 1].float()
    if mode is PoolingMode.CLS:
        return hidden[cu_seqlens[:-1]].float()
    # MEAN over [start_i + pool_start_i, end_i): one segment-sum via index_add.
    n = cu_seqlens.numel() - 1
    lengths = cu_seqlens[1:] - cu_seqlens[:-1]
    seq_of_token = torch.repeat_interleave(torch.arange(n, device=hidden.device), lengths)
    pos_in_seq = torch.arange(hidden.shape[0], device=hidden.device) - cu_seqlens[:-1][seq_of_token]
    keep = pos_in_seq >= pool_starts[seq_of_token]
    sums = torch.zeros(n, hidden.shape[1], dtype=torch.float32, device=hidden.device)
    sums.index_add_(0, seq_of_token[keep], hidden[keep].float())
    counts = (lengths - pool_starts).clamp(min=1).to(torch.float32)
    return sums / counts[:, None]
