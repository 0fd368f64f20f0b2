"""``TorchEngine``: a torch model plus its pooling behind the narrow Engine interface.

``embed`` runs on the scheduler's device thread; it is the only place that
moves a packed batch onto the device and a pooled result off it, and the
boundary where torch's out-of-memory becomes ``EngineOutOfMemory``, so nothing
above the engine sees a torch exception.
"""

from __future__ import annotations

import threading

import numpy as np
import torch
from torch import nn

from gigarouter.engine.base import PackedBatch, pack
from gigarouter.errors import EngineOutOfMemory
from gigarouter.pooling.pooling import PoolingMode, pool

# On CPU, throughput peaks near 1024 tokens per pass (docs/benchmarks.md, budget sweep):
# larger batches fall out of cache and pad attention more, and only add latency.
CPU_TOKEN_BUDGET = 1024
GPU_TOKEN_BUDGET = 32768

# torch's intra-op thread count for this process, read once at import (on the main thread):
# torch.set_num_threads in one device thread also becomes the default that threads started
# later inherit, so reading it later, e.g. while loading a second model, could see 1.
PROCESS_THREADS = torch.get_num_threads()


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    if name == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[name]


def default_token_budget(device: torch.device) -> int:
    return GPU_TOKEN_BUDGET if device.type == "cuda" else CPU_TOKEN_BUDGET


def budget_from_memory(*, free_bytes: int, hidden: int, intermediate: int, dtype_bytes: int,
                       max_seq_len: int, headroom: float = 0.6, ceiling: int = 262_144) -> int:
    """Tokens per forward pass that fit in ``free_bytes`` of device memory.

    Inference keeps only one layer's activations alive at a time. Per token that is
    about the residual stream, q/k/v/o, and the gated MLP's three intermediate
    tensors: ``(6 * hidden + 3 * intermediate) * dtype_bytes``, plus float32 pooling.
    ``headroom`` leaves room for the allocator's fragmentation and attention
    workspaces. The warm-up at start-up checks the answer for real.
    """
    per_token = (6 * hidden + 3 * intermediate) * dtype_bytes + 4 * hidden
    budget = int(free_bytes * headroom) // per_token
    # Round down to a multiple of the longest sequence so a full batch of them fits.
    budget = min(budget, ceiling) // max_seq_len * max_seq_len
    return max(budget, max_seq_len)


def default_parallel_batches(device: torch.device) -> int:
    """CPU: one batch per intra-op thread (core); GPU: one batch at a time.

    On a CPU shared with the HTTP side (and on a busy machine), one single-threaded
    batch per core loses less to other work than one batch spread over every core:
    every multi-threaded op waits at a barrier for its slowest thread, so any core
    taken away stalls all of them. docs/benchmarks.md, section 4, measures it.
    """
    return max(1, PROCESS_THREADS) if device.type == "cpu" else 1


class TorchEngine:
    def __init__(self, model: nn.Module, *, pooling: PoolingMode, dim: int, device: torch.device,
                 token_budget: int, max_seq_len: int, parallel_batches: int = 1) -> None:
        self.model = model
        self.pooling = pooling
        self.dim = dim
        self.device = device
        self.token_budget = max(token_budget, max_seq_len)
        self.max_seq_len = max_seq_len
        self.parallel_batches = max(1, parallel_batches) if device.type == "cpu" else 1
        # A batch that has the CPU alone gets every thread; a concurrent batch gets its share.
        self._shared_threads = max(1, PROCESS_THREADS // self.parallel_batches)
        self._thread_state = threading.local()
        self.device_name = str(device) if device.type != "cuda" else f"{device} ({torch.cuda.get_device_name(device)})"

    def embed(self, batch: PackedBatch, *, concurrent: bool = False) -> np.ndarray:
        if self.device.type == "cpu":
            self._use_threads(self._shared_threads if concurrent else PROCESS_THREADS)
        try:
            with torch.inference_mode():
                ids = torch.from_numpy(batch.input_ids).to(self.device, non_blocking=True)
                cu = torch.from_numpy(batch.cu_seqlens).to(self.device, non_blocking=True)
                starts = torch.from_numpy(batch.pool_starts).to(self.device, non_blocking=True)
                hidden = self.model(ids, cu)                          # [T, hidden]
                pooled = pool(hidden, cu, starts, self.pooling)       # [n, hidden] float32
                return pooled.cpu().numpy()
        except torch.OutOfMemoryError:
            pass    # leave the handler first: its traceback still holds the failed pass's tensors
        if self.device.type == "cuda":
            # Hand the failed pass's cached blocks back, so the smaller batch tried next can use them.
            torch.cuda.empty_cache()
        raise EngineOutOfMemory(f"the device ran out of memory on a batch of {batch.num_sequences} "
                                f"sequences ({batch.num_tokens} tokens)")

    def _use_threads(self, n: int) -> None:
        # torch's intra-op thread count (OpenMP and MKL) is per calling thread, so each
        # device thread sets its own; skip the call when it is already right.
        if getattr(self._thread_state, "threads", None) != n:
            torch.set_num_threads(n)
            self._thread_state.threads = n

    def warmup(self) -> None:
        """One pass at the full budget (longest sequences), so a device OOM shows now, not under load.

        On a GPU an out-of-memory halves the budget and tries again, down to one
        longest sequence; the budget that passed is the one the scheduler uses.
        """
        while True:
            n = max(1, self.token_budget // self.max_seq_len)
            try:
                # Token id 1 exists in every vocabulary we serve; values do not matter for cost.
                self.embed(pack([[1] * self.max_seq_len] * n))
                return
            except EngineOutOfMemory:    # embed has already emptied the CUDA cache
                if n == 1:
                    raise
                self.token_budget = max(self.max_seq_len, self.token_budget // 2)

    def health(self) -> bool:
        try:
            if self.device.type == "cuda":
                torch.cuda.synchronize(self.device)
            return True
        except RuntimeError:
            return False
