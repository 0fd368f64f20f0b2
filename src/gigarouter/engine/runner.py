"""``TorchEngine``: a torch model plus its pooling behind the narrow Engine interface.

``embed`` runs on the scheduler's device thread; it is the only place that
moves a packed batch onto the device and a pooled result off it, and the
boundary where torch's out-of-memory becomes ``EngineOutOfMemory``, so nothing
above the engine sees a torch exception.

A pass waits for the device once, when the pooled vectors come back: sizes come
from the host copy of ``cu_seqlens``, index arrays and token ids go over in
pinned, non-blocking copies (``engine/transfer.py``). ``health`` reads the
device thread's heartbeat and never waits for the device (``engine/heartbeat.py``).

The attention path is chosen once, here, when the engine is built
(``select_attention``), and logged. Warm-up proves the token budget on the
longest sequences, runs a batch of mixed lengths and checks it against its
sequences one by one, and on a GPU with an automatic budget measures
throughput against batch size and picks the budget from the knee and the
latency bound (``budget_from_throughput``).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from gigarouter.engine import transfer
from gigarouter.engine.base import PackedBatch, pack
from gigarouter.engine.heartbeat import HealthState, Heartbeat
from gigarouter.engine.models.attention import GRID, AttentionChoice, select_attention
from gigarouter.errors import EngineOutOfMemory, ModelLoadError
from gigarouter.pooling.pooling import PoolingMode, pool

log = logging.getLogger(__name__)

# On CPU, throughput peaks near 1024 tokens per pass (docs/benchmarks.md, budget sweep):
# larger batches fall out of cache and pad attention more, and only add latency.
CPU_TOKEN_BUDGET = 1024
GPU_TOKEN_BUDGET = 32768
# On a GPU the budget is measured at start-up: the smallest budget within KNEE_FRACTION of
# the best throughput, and no batch longer than GPU_MAX_BATCH_SECONDS, which is what a
# query that arrives while bulk work runs may have to wait (docs/design.md, "Budgets").
GPU_MAX_BATCH_SECONDS = 0.25
KNEE_FRACTION = 0.9
GPU_CALIBRATION_BUDGETS = (2048, 4096, 8192, 16384, 32768, 65536, 131072, 262144)

# The cosine a sequence packed with others must keep to itself run alone, by precision: float32
# packs to rounding; bf16 matmuls round GEMM outputs whose blocking may depend on the batch.
MIXED_LENGTHS_FLOOR = {"float32": 0.99999, "bfloat16-mixed": 0.9999}

# A pass this small (a lone query) is per-op overhead and weight reads, not FLOPs: OpenMP's
# fork/join on every op costs more than a second thread saves (MiniLM on Zen 4: 10 tokens 4.6 ms
# on 1 thread, 5.8 ms on 2; from 40 tokens 2 threads win; experiments/cpu/small_inputs.py).
# It also makes such a pass's bits independent of the thread count (the fingerprint probes).
SMALL_PASS_TOKENS = 32

# torch's intra-op thread count for this process, read once at import (on the main thread):
# torch.set_num_threads in one device thread also becomes the default that threads started
# later inherit, so reading it later, e.g. while loading a second model, could see 1.
PROCESS_THREADS = torch.get_num_threads()


@contextmanager
def _torch_threads(n: int) -> Iterator[None]:
    """Run a pass on ``n`` intra-op threads, then put the calling thread's count back.

    ``torch.set_num_threads`` sets the calling thread's count and also the default that every
    thread started later inherits. Left at a small pass's 1, it made the threads a user's
    program starts afterwards (a web worker, a DataLoader) run torch on one core. Setting a
    count costs well under a microsecond; only a region run on a new count pays OpenMP's
    team change, as it did before.
    """
    before = torch.get_num_threads()
    if n == before:
        yield
        return
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


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


def activation_bytes_per_token(*, hidden: int, intermediate: int, dtype_bytes: int) -> int:
    """Device memory one token of a pass needs at its peak (one layer's activations, fp32 pooling)."""
    return (6 * hidden + 3 * intermediate) * dtype_bytes + 4 * hidden


def budget_from_memory(*, free_bytes: int, hidden: int, intermediate: int, dtype_bytes: int,
                       max_seq_len: int, headroom: float = 0.6, ceiling: int = 262_144) -> int:
    """Tokens per forward pass that fit in ``free_bytes`` of device memory.

    Inference keeps only one layer's activations alive at a time. Per token that is
    about the residual stream, q/k/v/o, and the gated MLP's three intermediate
    tensors: ``(6 * hidden + 3 * intermediate) * dtype_bytes``, plus float32 pooling.
    ``headroom`` leaves room for the allocator's fragmentation and attention
    workspaces. The warm-up at start-up checks the answer for real.
    """
    per_token = activation_bytes_per_token(hidden=hidden, intermediate=intermediate, dtype_bytes=dtype_bytes)
    budget = int(free_bytes * headroom) // per_token
    # Round down to a multiple of the longest sequence so a full batch of them fits.
    budget = min(budget, ceiling) // max_seq_len * max_seq_len
    return max(budget, max_seq_len)


@dataclass(frozen=True)
class BudgetPoint:
    """One measured point of the throughput sweep."""

    token_budget: int
    tokens_per_s: float
    batch_seconds: float


def budget_from_throughput(points: Sequence[BudgetPoint], *, memory_budget: int, max_seq_len: int,
                           max_batch_s: float = GPU_MAX_BATCH_SECONDS, knee_fraction: float = KNEE_FRACTION) -> int:
    """Tokens per pass from a measured sweep: the throughput knee, bounded by latency and memory.

    - Only budgets that fit in memory count (``memory_budget``, from ``budget_from_memory``).
    - The knee: the smallest budget whose tokens/s is within ``knee_fraction`` of the best
      measured; past it a bigger batch buys little throughput and costs latency.
    - The latency bound: a query that arrives while a full bulk batch runs waits for it,
      so no batch may take longer than ``max_batch_s``; if even the smallest does, the
      smallest measured.
    Rounded down to whole sequences of ``max_seq_len`` (at least one).
    """
    usable = sorted((p for p in points if p.token_budget <= memory_budget), key=lambda p: p.token_budget)
    if not usable:
        budget = memory_budget
    else:
        best = max(p.tokens_per_s for p in usable)
        knee = min(p.token_budget for p in usable if p.tokens_per_s >= knee_fraction * best)
        fast = [p.token_budget for p in usable if p.batch_seconds <= max_batch_s]
        budget = min(knee, max(fast)) if fast else usable[0].token_budget
    return max(max_seq_len, budget // max_seq_len * max_seq_len)


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
                 token_budget: int, max_seq_len: int, parallel_batches: int = 1,
                 attention: str | AttentionChoice = "auto", calibrate_budget: bool = False,
                 max_batch_s: float = GPU_MAX_BATCH_SECONDS, heartbeat: Heartbeat | None = None,
                 on_budget: Callable[[int], None] | None = None, precision: str | None = None) -> None:
        self.model = model
        #: what the model computes in (engine/precision.py); by default its parameters' dtype
        self.precision = precision or str(next(model.parameters(), torch.empty(0)).dtype).removeprefix("torch.")
        self.pooling = pooling
        self.dim = dim
        self.device = device
        self.token_budget = max(token_budget, max_seq_len)
        self.max_seq_len = max_seq_len
        self.parallel_batches = max(1, parallel_batches) if device.type == "cpu" else 1
        # A batch that has the CPU alone gets every thread; a concurrent batch gets its share.
        self._shared_threads = max(1, PROCESS_THREADS // self.parallel_batches)
        self.device_name = _device_name(device)
        #: on a GPU, measure the budget at warm-up (an automatic budget; an explicit one is kept)
        self.calibrate_budget = calibrate_budget
        self.max_batch_s = max_batch_s
        self.calibration: list[BudgetPoint] = []
        #: told the final token budget once warm-up has settled it (the device's memory plan)
        self._on_budget = on_budget
        self.attention = self._choose_attention(attention)
        probe = (lambda: torch.cuda.mem_get_info(device)) if device.type == "cuda" else None
        self._heartbeat = heartbeat or Heartbeat(probe=probe)

    def _choose_attention(self, attention: str | AttentionChoice) -> AttentionChoice:
        shape = getattr(self.model, "attention_shape", None)
        if isinstance(attention, AttentionChoice):
            choice = attention
        elif shape is None:     # a model without packed attention (test doubles)
            return AttentionChoice(GRID, "the model has no attention layout")
        else:
            dtype = next(self.model.parameters()).dtype
            choice = select_attention(self.device, dtype, max_seq_len=self.max_seq_len, want=attention, **shape())
        self.model.attention_path = choice.path
        return choice

    # -- a forward pass, on a device thread --------------------------------------------------

    def embed(self, batch: PackedBatch, *, concurrent: bool = False) -> np.ndarray:
        if self.device.type != "cpu":
            return self._embed(batch)
        small = batch.num_tokens <= SMALL_PASS_TOKENS
        with _torch_threads(1 if small else self._shared_threads if concurrent else PROCESS_THREADS):
            return self._embed(batch)

    def device_thread_started(self) -> None:
        """The scheduler's device threads start here: at the process's count, whatever a pass on
        another thread had set when this one was spawned (threads inherit torch's last setting)."""
        if self.device.type == "cpu":
            torch.set_num_threads(PROCESS_THREADS)

    def _embed(self, batch: PackedBatch) -> np.ndarray:
        token = self._heartbeat.pass_started()
        try:
            with torch.inference_mode():
                vectors = self._forward(batch).cpu().numpy()    # the one wait for the device
        except torch.OutOfMemoryError:
            vectors = None  # leave the handler first: its traceback still holds the failed pass's tensors
        except BaseException as exc:
            self._heartbeat.pass_ended(token, exc, device_error=_is_device_error(exc, self.device))
            raise
        if vectors is not None:
            self._heartbeat.pass_ended(token)
            return vectors
        error = EngineOutOfMemory(f"the device ran out of memory on a batch of {batch.num_sequences} "
                                  f"sequences ({batch.num_tokens} tokens)")
        self._heartbeat.pass_ended(token, error)
        if self.device.type == "cuda":
            # Hand the failed pass's cached blocks back, so the smaller batch tried next can use them.
            torch.cuda.empty_cache()
        raise error

    def _forward(self, batch: PackedBatch) -> torch.Tensor:
        """Queue one pass; returns the pooled ``[n, hidden]`` float32 on the device, without waiting."""
        ids = transfer.upload({"ids": batch.input_ids}, self.device)["ids"]
        hidden = self.model(ids, batch.cu_seqlens)                            # [T, hidden]
        return pool(hidden, batch.cu_seqlens, batch.pool_starts, self.pooling)   # [n, hidden] float32

    # -- start-up ----------------------------------------------------------------------------

    def warmup(self) -> None:
        """Prove the budget, check a mixed-length batch, and on a GPU measure the budget.

        1. One pass at the full budget of longest sequences, so a device OOM shows now,
           not under load; on a GPU an out-of-memory halves the budget and tries again,
           down to one longest sequence.
        2. A batch of mixed lengths (what real traffic sends: masks, buckets, the varlen
           kernel's boundaries), then short sequences packed against each alone: a path
           that mixes sequences up fails start-up here instead of serving wrong vectors.
        3. With ``calibrate_budget``: the throughput sweep and ``budget_from_throughput``.
        """
        self._warm_full_budget()
        self._check_mixed_lengths()
        if self.calibrate_budget:
            self.calibrate()
        if self._on_budget is not None:
            self._on_budget(self.token_budget)

    def _warm_full_budget(self) -> None:
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

    def _token_ids(self, length: int, seed: int) -> list[int]:
        vocab = getattr(getattr(self.model, "config", None), "vocab_size", 1000)
        rng = np.random.default_rng(seed)
        return rng.integers(3, max(4, min(vocab, 30000)), size=length).tolist()

    def _check_mixed_lengths(self) -> None:
        longest = max(1, min(self.max_seq_len, self.token_budget // 6))
        mixed = [longest, longest // 2 + 1, 33, 17, 5, 1]
        self.embed(pack([self._token_ids(min(n, longest), i) for i, n in enumerate(mixed)]))
        cap = max(1, min(self.max_seq_len, self.token_budget // 4))
        short = [self._token_ids(min(n, cap), 100 + i) for i, n in enumerate((17, 1, 33, 5))]
        together = self.embed(pack(short))
        alone = np.concatenate([self.embed(pack([s])) for s in short])
        cosine = (together * alone).sum(1) / np.maximum(
            np.linalg.norm(together, axis=1) * np.linalg.norm(alone, axis=1), 1e-30)
        floor = MIXED_LENGTHS_FLOOR.get(self.precision, 0.999)
        if not np.all(cosine >= floor):
            raise ModelLoadError(
                f"attention path {self.attention.path!r} on {self.device_name}: a packed batch of lengths "
                f"{[len(x) for x in short]} does not give the vectors of its sequences run alone (min cosine "
                f"{float(cosine.min()):.6f} < {floor}); refusing to serve")

    def calibrate(self, budgets: Sequence[int] = GPU_CALIBRATION_BUDGETS, *, repeats: int = 2,
                  seq_len: int = 512) -> int:
        """Time passes of ``seq_len``-token sequences at growing budgets; set the budget from the knee.

        Budgets above the one warm-up proved (memory) are not tried, and the sweep stops
        once a pass takes more than twice ``max_batch_s``. Returns the chosen budget.
        """
        memory_budget = self.token_budget
        seq_len = min(seq_len, self.max_seq_len)
        points: list[BudgetPoint] = []
        for budget in sorted(b for b in budgets if b <= memory_budget):
            n = max(1, budget // seq_len)
            batch = pack([self._token_ids(seq_len, 1000 + i) for i in range(n)])
            self.embed(batch)                                   # first pass at this shape: not timed
            started = time.perf_counter()
            for _ in range(repeats):
                self.embed(batch)
            seconds = (time.perf_counter() - started) / repeats
            points.append(BudgetPoint(budget, batch.num_tokens / seconds, seconds))
            if seconds > 2 * self.max_batch_s:
                break
        self.calibration = points
        self.token_budget = budget_from_throughput(points, memory_budget=memory_budget,
                                                   max_seq_len=self.max_seq_len, max_batch_s=self.max_batch_s)
        log.info("token budget on %s: %d (memory allows %d; measured %s)", self.device_name, self.token_budget,
                 memory_budget, ", ".join(f"{p.token_budget}: {p.tokens_per_s:.0f} tok/s in "
                                          f"{1000 * p.batch_seconds:.0f} ms" for p in points))
        return self.token_budget

    # -- health, from any thread, at once ----------------------------------------------------

    def health(self) -> bool:
        """Never waits for the device: reads the device thread's heartbeat (safe on the event loop)."""
        return self._heartbeat.state().ok

    def health_state(self) -> HealthState:
        return self._heartbeat.state()


def _device_name(device: torch.device) -> str:
    if device.type != "cuda":
        return str(device)
    try:
        return f"{device} ({torch.cuda.get_device_name(device)})"
    except (RuntimeError, AssertionError):
        return str(device)


# Messages of failures that leave a CUDA context unusable (as opposed to a bad batch).
_DEVICE_ERRORS = ("CUDA error", "CUBLAS_STATUS", "CUDNN_STATUS", "cuDNN error", "device-side assert",
                  "illegal memory access", "unspecified launch failure")


def _is_device_error(exc: BaseException, device: torch.device) -> bool:
    if device.type != "cuda" or not isinstance(exc, RuntimeError):
        return False
    return type(exc).__name__ == "AcceleratorError" or any(s in str(exc) for s in _DEVICE_ERRORS)
