"""The one narrow interface between the scheduler and any backend.

Everything above this line (scheduler, recipes, API) knows nothing of torch:
it hands the engine a ``PackedBatch`` (sequences laid back to back, no
padding) and receives one float32 vector per sequence. Pooling (which
positions, mean or last token) is fixed when the engine is built from the
recipe; ``pool_starts`` says, per sequence, where the pooled span begins so
that recipes can keep an instruction out of the mean.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np


@dataclass(frozen=True)
class PackedBatch:
    input_ids: np.ndarray    # [total_tokens] int64, sequences back to back
    cu_seqlens: np.ndarray   # [n + 1] int64; sequence i is input_ids[cu[i]:cu[i+1]]
    pool_starts: np.ndarray  # [n] int64; pooled span of sequence i is [pool_starts[i], len_i)

    @property
    def num_sequences(self) -> int:
        return len(self.cu_seqlens) - 1

    @property
    def num_tokens(self) -> int:
        return int(self.cu_seqlens[-1])

    @property
    def lengths(self) -> np.ndarray:
        return np.diff(self.cu_seqlens)


def pack(sequences: Sequence[Sequence[int]], pool_starts: Sequence[int] | None = None) -> PackedBatch:
    """Lay token sequences back to back. Each sequence must be non-empty."""
    lengths = np.fromiter((len(s) for s in sequences), dtype=np.int64, count=len(sequences))
    if len(lengths) == 0 or lengths.min() < 1:
        raise ValueError("pack() needs at least one sequence, none empty")
    cu = np.zeros(len(lengths) + 1, dtype=np.int64)
    np.cumsum(lengths, out=cu[1:])
    ids = np.fromiter((t for s in sequences for t in s), dtype=np.int64, count=int(cu[-1]))
    starts = np.zeros(len(lengths), dtype=np.int64) if pool_starts is None else np.asarray(pool_starts, dtype=np.int64)
    if np.any(starts < 0) or np.any(starts >= lengths):
        raise ValueError("every pool start must lie inside its sequence")
    return PackedBatch(input_ids=ids, cu_seqlens=cu, pool_starts=starts)


class Engine(Protocol):
    """What the scheduler needs from a backend."""

    #: width of the vectors ``embed`` returns
    dim: int
    #: tokens per forward pass the engine was warmed up for
    token_budget: int
    #: human-readable device, e.g. "cpu" or "cuda:0 (NVIDIA H100)"
    device_name: str
    #: what the model computes in: float32, bfloat16, float16 or bfloat16-mixed (engine/precision.py)
    precision: str
    #: how many batches may run at once, each on its share of the device (CPU: one per core)
    parallel_batches: int

    def embed(self, batch: PackedBatch, *, concurrent: bool = False) -> np.ndarray:
        """Return ``[batch.num_sequences, dim]`` float32, not normalised.

        ``concurrent``: other batches run at the same time, so use one share of the
        device; otherwise this batch has all of it. Called from up to
        ``parallel_batches`` threads at once.
        """
        ...

    def warmup(self) -> None:
        """Run a forward pass at the full token budget, so OOM shows before serving (and settle
        ``token_budget``: a GPU engine may measure it here)."""
        ...

    def health(self) -> bool:
        """True while the device answers. Called on the event loop (``/ready``): it must answer
        at once, never by waiting for the device (``engine/heartbeat.py``)."""
        ...
