"""Offline engine throughput: packed batches straight into ``TorchEngine.embed``, no HTTP, no tokenizer.

Batches are planned exactly as the in-process ``Embedder`` plans them (sort by
length, ``plan_batch`` under a token budget) and packed once up front. The
configurations then run round-robin, one whole pass each per round, with a
matmul sample every round, until each has ``min_seconds``: on a shared machine
a noisy minute slows every configuration and the peak alike. Each reports
tokens/s and inputs/s, the padding the attention path computes (none on the
varlen path: it reads packed rows), the useful FLOP rate (``BenchModel.flops``:
no embedding lookup, attention included) and its fraction of the device's
dense matmul rate measured in the same run (CUDA events on a GPU), and on CUDA
the peak activation memory per token. The token-budget sweep ends with the
budget ``budget_from_throughput`` picks from it (the knee, under the latency bound).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from gigarouter.bench.corpus import TokenCounter, length_summary, mixed_corpus, random_sequences
from gigarouter.bench.machine import machine_info, matmul_rate
from gigarouter.bench.shapes import FIXED_LENGTHS, BenchModel, build
from gigarouter.engine.base import PackedBatch, pack
from gigarouter.engine.models.attention import VARLEN, bucket_groups
from gigarouter.engine.runner import BudgetPoint, budget_from_memory, budget_from_throughput
from gigarouter.scheduler.batching import plan_batch

CPU_BUDGETS = (512, 1024, 2048, 4096, 8192, 16384)
# Up to the 262,144 ceiling budget_from_memory allows: the budgets a GPU could actually serve.
GPU_BUDGETS = (2048, 4096, 8192, 16384, 32768, 65536, 131072, 262144)


def plan_batches(lengths: Sequence[int], *, token_budget: int) -> list[list[int]]:
    """Indices per batch, as ``Embedder`` forms them: sorted by length, then the packing rule."""
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    batches = []
    while order:
        chosen = plan_batch([lengths[i] for i in order], token_budget=token_budget, window=len(order))
        batches.append([order[c] for c in chosen])
        picked = set(chosen)
        order = [i for k, i in enumerate(order) if k not in picked]
    return batches


@dataclass
class Workload:
    """One configuration: its batches packed up front, its timings accumulated pass by pass."""

    name: str
    token_budget: int
    lengths: list[int]
    plan: list[list[int]]
    batches: list[PackedBatch]
    pack_seconds: float
    batch_times: list[float] = field(default_factory=list)
    cpu_seconds: float = 0.0            # this process's CPU time over the timed passes (all threads)
    passes: int = 0
    peak_bytes: int = 0

    @property
    def seconds(self) -> float:
        return sum(self.batch_times)


def prepare(sequences: Sequence[Sequence[int]], *, name: str, token_budget: int) -> Workload:
    lengths = [len(s) for s in sequences]
    t0 = time.perf_counter()
    plan = plan_batches(lengths, token_budget=token_budget)
    batches = [pack([sequences[i] for i in idx]) for idx in plan]
    return Workload(name, token_budget, lengths, plan, batches, time.perf_counter() - t0)


def run_pass(bm: BenchModel, w: Workload) -> None:
    """One timed pass over the workload's batches (on CUDA, also its peak memory above the weights)."""
    dev = bm.engine.device
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
        torch.cuda.reset_peak_memory_stats(dev)
        base = torch.cuda.memory_allocated(dev)
    cpu0 = time.process_time()
    for batch in w.batches:
        t = time.perf_counter()
        bm.engine.embed(batch)          # returns numpy: the device is synchronised
        w.batch_times.append(time.perf_counter() - t)
    w.cpu_seconds += time.process_time() - cpu0
    w.passes += 1
    if dev.type == "cuda":
        w.peak_bytes = max(w.peak_bytes, torch.cuda.max_memory_allocated(dev) - base)


def result_row(bm: BenchModel, w: Workload, *, peak_flops: float) -> dict:
    lengths, plan, passes, elapsed = w.lengths, w.plan, w.passes, w.seconds
    tokens, inputs = sum(lengths) * passes, len(lengths) * passes
    varlen = getattr(getattr(bm.engine, "attention", None), "path", None) == VARLEN
    # The varlen kernel reads packed rows: it computes no padding at all.
    computed = tokens if varlen else sum(_grid_cells([lengths[i] for i in idx]) for idx in plan) * passes
    flops = bm.flops(lengths) * passes
    biggest = max(sum(lengths[i] for i in idx) for idx in plan)
    return {
        "name": w.name, "token_budget": w.token_budget, "inputs_per_pass": len(lengths), "passes": passes,
        "lengths": length_summary(lengths), "batches_per_pass": len(plan), "seconds": elapsed,
        "tokens_per_s": tokens / elapsed, "inputs_per_s": inputs / elapsed,
        "tokens_per_cpu_s": tokens / w.cpu_seconds if w.cpu_seconds else None,
        "padding_fraction": 1.0 - tokens / computed if computed else 0.0,
        "batch_ms_p50": 1000 * float(np.median(w.batch_times)), "batch_ms_max": 1000 * max(w.batch_times),
        "pack_ms_per_pass": 1000 * w.pack_seconds,
        "flops_per_token": flops / tokens, "achieved_flops": flops / elapsed,
        "fraction_of_matmul_peak": flops / elapsed / peak_flops,
        "bytes_per_token": w.peak_bytes / biggest if bm.engine.device.type == "cuda" else None,
    }


def measure(bm: BenchModel, sequences: Sequence[Sequence[int]], *, name: str, token_budget: int,
            peak_flops: float, min_seconds: float = 2.0, max_passes: int = 50) -> dict:
    """Whole passes over ``sequences`` until ``min_seconds``; one result row."""
    w = prepare(sequences, name=name, token_budget=token_budget)
    while w.passes < max_passes and (w.passes == 0 or w.seconds < min_seconds):
        run_pass(bm, w)
    return result_row(bm, w, peak_flops=peak_flops)


def measure_interleaved(items: Sequence[tuple[BenchModel, Workload]], *, min_seconds: float,
                        matmul: Callable[[], float] | None = None, max_rounds: int = 50) -> float:
    """Round-robin passes (one per workload per round) until every workload has ``min_seconds``.

    A matmul sample (``matmul()`` returns FLOP/s) is taken every round too; the
    best of them is returned as the device's peak, so the peak and the
    workloads see the same neighbours.
    """
    best = 0.0
    for _ in range(max_rounds):
        if matmul is not None:
            best = max(best, matmul())
        for bm, w in items:
            run_pass(bm, w)
        if all(w.seconds >= min_seconds for _, w in items):
            break
    return best


def _grid_cells(lengths: Sequence[int]) -> int:
    """Token positions the grid attention path lays out for a batch: its length buckets' grids."""
    if len(lengths) == 1:
        return lengths[0]
    return sum(len(g) * max(lengths[i] for i in g) for g in bucket_groups(lengths))


def fixed_sequences(bm: BenchModel, length: int, *, token_budget: int, seed: int) -> list[list[int]]:
    """One full budget's worth of ``length``-token sequences (at least one)."""
    n = max(1, token_budget // length)
    return random_sequences([length] * n, vocab_size=bm.vocab_size, seed=seed)


def mixed_sequences(bm: BenchModel, *, corpus_size: int, seed: int) -> tuple[list[list[int]], str]:
    """The mixed corpus as token ids: the real tokenizer for minilm, its lengths with random ids otherwise."""
    from gigarouter.engine.sources import embedded_model_dir

    corpus = mixed_corpus(corpus_size, seed=seed)
    if bm.shape == "minilm":
        return TokenCounter.for_model_dir(embedded_model_dir()).ids(corpus.texts), corpus.name
    counter = TokenCounter.for_model_dir(embedded_model_dir(), cap=False)
    lengths = [min(n, bm.max_seq_len) for n in counter.counts(corpus.texts)]
    return random_sequences(lengths, vocab_size=bm.vocab_size, seed=seed), corpus.name + " (lengths; random ids)"


def run_engine_bench(shape: str = "minilm", *, device: str = "auto", dtype: str = "auto",
                     corpus_size: int = 256, lengths: Sequence[int] | None = None,
                     budgets: Sequence[int] | None = None, min_seconds: float = 2.0,
                     threads: int | None = None, hf_compare: bool | None = None, seed: int = 0,
                     token_budget: int | None = None, log=print) -> dict:
    """The whole engine report for one model shape (see module docstring)."""
    if threads:
        torch.set_num_threads(threads)
    bm = build(shape, device=device, dtype=dtype, seed=seed, token_budget=token_budget)
    dev = str(bm.engine.device)
    dtype_name = str(bm.dtype).removeprefix("torch.")
    peak = matmul_rate(device=dev, dtype=dtype_name)
    log(f"matmul peak on {dev} ({dtype_name}, {peak['threads']} threads): {peak['best_flops'] / 1e9:.1f} GFLOP/s")
    budget = bm.engine.token_budget
    bm.engine.warmup()
    mixed, corpus_name = mixed_sequences(bm, corpus_size=corpus_size, seed=seed)
    workloads = [prepare(mixed, name="mixed", token_budget=budget)]
    for length in lengths or FIXED_LENGTHS[shape]:
        length = min(length, bm.max_seq_len)
        workloads.append(prepare(fixed_sequences(bm, length, token_budget=budget, seed=seed),
                                 name=f"fixed-{length}", token_budget=budget))
    default_budgets = CPU_BUDGETS
    if bm.engine.device.type == "cuda":    # every budget that fits next to the weights, up to the ceiling
        cfg = bm.model.config
        fits = budget_from_memory(free_bytes=torch.cuda.mem_get_info(bm.engine.device)[0],
                                  hidden=cfg.hidden_size, intermediate=cfg.intermediate_size,
                                  dtype_bytes=torch.finfo(bm.dtype).bits // 8, max_seq_len=1)
        default_budgets = tuple(b for b in GPU_BUDGETS if b <= fits) or GPU_BUDGETS[:1]
    longest = max(len(s) for s in mixed)
    sweep_w = [prepare(mixed, name="mixed", token_budget=max(b, longest)) for b in budgets or default_budgets]
    best = measure_interleaved([(bm, w) for w in workloads + sweep_w], min_seconds=min_seconds,
                               matmul=lambda: matmul_rate(device=dev, dtype=dtype_name, repeats=1,
                                                          sizes=(peak["best_size"],))["best_flops"])
    peak["best_flops"] = max(peak["best_flops"], best)
    runs = [result_row(bm, w, peak_flops=peak["best_flops"]) for w in workloads + sweep_w]
    for row in runs:
        log(f"  {row['name']:<12} budget {row['token_budget']:>6}: {row['tokens_per_s']:>10.0f} tokens/s "
            f"{row['inputs_per_s']:>8.1f} inputs/s  {100 * row['fraction_of_matmul_peak']:5.1f}% of matmul peak "
            f"({row['passes']} passes)")
    sweep = runs[len(workloads):]
    runs = runs[:len(workloads)]
    result = {
        "kind": "engine", "shape": shape, "device": dev, "dtype": dtype_name, "threads": torch.get_num_threads(),
        "machine": machine_info(device=dev), "matmul": peak, "matmul_params": bm.matmul_params,
        "default_token_budget": budget, "attention_path": bm.engine.attention.path,
        "attention_reason": bm.engine.attention.reason, "corpus": corpus_name, "runs": runs,
        "budget_sweep": [{"token_budget": r["token_budget"], "tokens_per_s": r["tokens_per_s"],
                          "batch_ms_p50": r["batch_ms_p50"], "batch_ms_max": r["batch_ms_max"],
                          "padding_fraction": r["padding_fraction"], "bytes_per_token": r["bytes_per_token"]}
                         for r in sweep],
        # What the start-up calibration would pick from this sweep (runner.budget_from_throughput),
        # judged by the slowest batch of each budget.
        "knee_budget": budget_from_throughput(
            [BudgetPoint(r["token_budget"], r["tokens_per_s"], r["batch_ms_max"] / 1000) for r in sweep],
            memory_budget=max(r["token_budget"] for r in sweep), max_seq_len=1) if sweep else None,
    }
    if hf_compare is None:
        hf_compare = shape.startswith("mistral")
    if hf_compare:
        from gigarouter.bench.hf_ref import compare_with_transformers

        result["transformers"] = compare_with_transformers(bm, mixed, lengths=lengths or FIXED_LENGTHS[shape],
                                                           token_budget=budget, min_seconds=min_seconds,
                                                           seed=seed, log=log)
    return result
