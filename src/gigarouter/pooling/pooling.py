"""Mean / last-token / CLS pooling over packed hidden states.

Hidden states arrive packed, ``[total_tokens, hidden]``, with ``cu_seqlens``
marking sequence boundaries. Accumulation is float32 whatever the model dtype.

Which rows to read is worked out on the host from the host copy of
``cu_seqlens`` and reaches the device in one non-blocking copy: no boolean
indexing, no ``repeat_interleave`` of unknown size, nothing that waits for the
device.

The mean is bit-reproducible: the same batch gives the same bits every time
(the vector cache relies on it). Segment sums are a dense product with a 0/1
weight matrix, ``W[i, t] = 1`` where token ``t`` is in sequence ``i``'s pooled
span, in float32: a GEMM sums in a fixed order, where ``index_add_`` on CUDA
sums with float atomics whose order changes from run to run. The matrix is
built per chunk of neighbouring sequences, so it stays small (at most
``CHUNK_ELEMENTS`` weights) however many sequences a batch holds; sequences are
contiguous in the packed rows, so a chunk only ever multiplies its own rows.
"""

from __future__ import annotations

import numpy as np
import torch

from gigarouter.engine import transfer
from gigarouter.engine.transfer import host_ints
from gigarouter.pooling.modes import PoolingMode

__all__ = ["PoolingMode", "pool", "mean_chunks"]

#: most 0/1 weights one chunk's matrix may hold (16 MiB of float32)
CHUNK_ELEMENTS = 1 << 22


def pool(hidden: torch.Tensor, cu_seqlens, pool_starts, mode: PoolingMode) -> torch.Tensor:
    """Return ``[n, hidden]`` float32.

    hidden: [total_tokens, hidden] on the device; cu_seqlens: [n+1] and pool_starts: [n],
    host copies (numpy, lists or CPU tensors; a device tensor costs one copy back), where
    pool_starts are the offsets inside each sequence where the mean begins (ignored by
    LAST and CLS).
    """
    cu = host_ints(cu_seqlens)
    device = hidden.device
    if mode is PoolingMode.LAST or mode is PoolingMode.CLS:
        rows = cu[1:] - 1 if mode is PoolingMode.LAST else cu[:-1]
        return hidden.index_select(0, transfer.upload({"rows": rows}, device)["rows"]).float()
    begin = cu[:-1] + host_ints(pool_starts)
    end = cu[1:]
    dev = transfer.upload({"begin": begin, "end": end, "count": np.maximum(end - begin, 1)}, device)
    sums = []
    for first, last in mean_chunks(cu):
        a, b = int(cu[first]), int(cu[last])
        t = torch.arange(a, b, device=device)
        begins = dev["begin"].narrow(0, first, last - first).unsqueeze(1)
        ends = dev["end"].narrow(0, first, last - first).unsqueeze(1)
        weights = ((t.unsqueeze(0) >= begins) & (t.unsqueeze(0) < ends)).to(torch.float32)   # [chunk n, chunk T]
        sums.append(weights @ hidden.narrow(0, a, b - a).float())
    total = sums[0] if len(sums) == 1 else torch.cat(sums)
    return total / dev["count"].to(torch.float32).unsqueeze(1)


def mean_chunks(cu: np.ndarray, max_elements: int | None = None) -> list[tuple[int, int]]:
    """Runs of neighbouring sequences ``[first, last)`` whose weight matrix fits ``max_elements``.

    A sequence longer than the limit gets a chunk of its own.
    """
    max_elements = max_elements or CHUNK_ELEMENTS
    chunks, first = [], 0
    n = len(cu) - 1
    for i in range(1, n):      # would sequence i still fit the chunk that starts at `first`?
        if (i + 1 - first) * int(cu[i + 1] - cu[first]) > max_elements:
            chunks.append((first, i))
            first = i
    chunks.append((first, n))
    return chunks
