"""Offline engine throughput: packed batches straight into ``TorchEngine.embed``, no HTTP, no tokenizer.

Batches are planned exactly as the in-process ``Embedder`` plans them (sort by
length, ``plan_batch`` under a token budget), packed once up front, then run
whole passes until ``min_seconds`` have gone by. Each configuration reports
tokens/s and inputs/s, the padding the portable attention path computes, the
useful FLOP rate (``BenchModel.flops``) and its fraction of the device's
dense matmul rate measured in the same run, and on CUDA the peak activation
memory per token.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import numpy as np
import torch

from gigarouter.bench.corpus import TokenCounter, length_summary, mixed_corpus, random_sequences
from gigarouter.bench.machine import machine_info, matmul_rate
from gigarouter.bench.shapes import FIXED_LENGTHS, BenchModel, build
from gigarouter.engine.base import PackedBatch, pack
from gigarouter.scheduler.batching import batch_cost, plan_batch

CPU_BUDGETS = (512, 1024, 2048, 4096, 8192, 16384)
GPU_BUDGETS = (4096, 8192, 16384, 32768, 65536)


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


def measure(bm: BenchModel, sequences: Sequence[Sequence[int]], *, name: str, token_budget: int,
            peak_flops: float, min_seconds: float = 2.0, max_passes: int = 50) -> dict:
    """Run whole passes over ``sequences`` until ``min_seconds``; one result row."""
    lengths = [len(s) for s in sequences]
    t0 = time.perf_counter()
    plan = plan_batches(lengths, token_budget=token_budget)
    batches: list[PackedBatch] = [pack([sequences[i] for i in idx]) for idx in plan]
    pack_seconds = time.perf_counter() - t0
    cuda = bm.engine.device.type == "cuda"
    if cuda:
        torch.cuda.synchronize(bm.engine.device)
        torch.cuda.reset_peak_memory_stats(bm.engine.device)
        base_mem = torch.cuda.memory_allocated(bm.engine.device)
    batch_times: list[float] = []
    passes, elapsed = 0, 0.0
    while passes < max_passes and (passes == 0 or elapsed < min_seconds):
        for batch in batches:
            t = time.perf_counter()
            bm.engine.embed(batch)
            batch_times.append(time.perf_counter() - t)
        passes += 1
        elapsed = sum(batch_times)
    tokens, inputs = sum(lengths) * passes, len(lengths) * passes
    computed = sum(_grid_cells([lengths[i] for i in idx]) for idx in plan) * passes
    flops = bm.flops(lengths) * passes
    row = {
        "name": name, "token_budget": token_budget, "inputs_per_pass": len(lengths), "passes": passes,
        "lengths": length_summary(lengths), "batches_per_pass": len(plan), "seconds": elapsed,
        "tokens_per_s": tokens / elapsed, "inputs_per_s": inputs / elapsed,
        "padding_fraction": 1.0 - tokens / computed if computed else 0.0,
        "batch_ms_p50": 1000 * float(np.median(batch_times)), "batch_ms_max": 1000 * max(batch_times),
        "pack_ms_per_pass": 1000 * pack_seconds,
        "flops_per_token": flops / tokens, "achieved_flops": flops / elapsed,
        "fraction_of_matmul_peak": flops / elapsed / peak_flops,
        "bytes_per_token": None,
    }
    if cuda:
        peak = torch.cuda.max_memory_allocated(bm.engine.device) - base_mem
        row["bytes_per_token"] = peak / max(max(sum(lengths[i] for i in idx) for idx in plan), 1)
    return row


def _grid_cells(lengths: Sequence[int]) -> int:
    """Token positions the portable attention path lays out for a batch (one sequence: no grid)."""
    return lengths[0] if len(lengths) == 1 else batch_cost(lengths)


def fixed_sequences(bm: BenchModel, length: int, *, token_budget: int, seed: int) -> list[list[int]]:
    """One full budget's worth of ``length``-token sequences (at least one)."""
    n = max(1, token_budget // length)
    return random_sequences([length] * n, vocab_size=bm.vocab_size, seed=seed)


def mixed_sequences(bm: BenchModel, *, corpus_size: int, seed: int) -> tuple[list[list[int]], str]:
    """The mixed corpus as token ids: the real tokenizer for minilm, its lengths with random ids otherwise."""
    from gigarouter.engine.factory import embedded_model_dir

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
    runs = []

    def run(seqs, name, token_budget):
        row = measure(bm, seqs, name=name, token_budget=token_budget, peak_flops=peak["best_flops"],
                      min_seconds=min_seconds)
        log(f"  {name:<22} budget {token_budget:>6}: {row['tokens_per_s']:>10.0f} tokens/s "
            f"{row['inputs_per_s']:>8.1f} inputs/s  {100 * row['fraction_of_matmul_peak']:5.1f}% of matmul peak")
        runs.append(row)
        return row

    run(mixed, "mixed", budget)
    for length in lengths or FIXED_LENGTHS[shape]:
        length = min(length, bm.max_seq_len)
        run(fixed_sequences(bm, length, token_budget=budget, seed=seed), f"fixed-{length}", budget)
    sweep = []
    default_budgets = GPU_BUDGETS if bm.engine.device.type == "cuda" else CPU_BUDGETS
    for b in budgets or default_budgets:
        sweep.append(run(mixed, "mixed", max(b, max(len(s) for s in mixed))))
    result = {
        "kind": "engine", "shape": shape, "device": dev, "dtype": dtype_name, "threads": torch.get_num_threads(),
        "machine": machine_info(device=dev), "matmul": peak, "matmul_params": bm.matmul_params,
        "default_token_budget": budget, "corpus": corpus_name, "runs": runs,
        "budget_sweep": [{"token_budget": r["token_budget"], "tokens_per_s": r["tokens_per_s"],
                          "batch_ms_p50": r["batch_ms_p50"], "batch_ms_max": r["batch_ms_max"],
                          "padding_fraction": r["padding_fraction"], "bytes_per_token": r["bytes_per_token"]}
                         for r in sweep],
    }
    if hf_compare is None:
        hf_compare = shape.startswith("mistral")
    if hf_compare:
        from gigarouter.bench.hf_ref import compare_with_transformers

        result["transformers"] = compare_with_transformers(bm, mixed, lengths=lengths or FIXED_LENGTHS[shape],
                                                           token_budget=budget, min_seconds=min_seconds,
                                                           seed=seed, log=log)
    return result
