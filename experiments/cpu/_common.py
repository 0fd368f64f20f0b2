"""Shared set-up for the CPU experiments: the default model and server-like batches of the mixed corpus."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence

from gigarouter.bench.corpus import mixed_corpus
from gigarouter.bench.machine import machine_info
from gigarouter.embedder import Embedder
from gigarouter.engine.base import PackedBatch, pack
from gigarouter.scheduler.batching import plan_batch

Planner = Callable[[Sequence[int], int], list[int]]


def plan_n_x_longest(lengths: Sequence[int], budget: int) -> list[int]:
    """The scheduler's rule (cost = n x longest)."""
    return plan_batch(lengths, token_budget=budget, window=512)


def server_like_batches(embedder: Embedder, *, texts: int = 768, arrivals: int = 128, budget: int = 1024,
                        planner: Planner = plan_n_x_longest) -> list[PackedBatch]:
    """The mixed corpus arriving ``arrivals`` texts at a time (4 bulk requests of 32), planned as the server does."""
    corpus = list(mixed_corpus(texts).texts)
    items = embedder.recipe.prepare_texts(corpus, input_type="document", instruction=None, truncate="end")
    seqs = [it.token_ids for it in items]
    batches = []
    for start in range(0, len(seqs), arrivals):
        rest = seqs[start:start + arrivals]
        while rest:
            chosen = set(planner([len(s) for s in rest], budget))
            batches.append(pack([rest[i] for i in sorted(chosen)]))
            rest = [s for i, s in enumerate(rest) if i not in chosen]
    return batches


def sorted_batches(token_ids: Sequence[Sequence[int]], budget: int = 1024) -> list[PackedBatch]:
    """Offline batches: every sequence, shortest first, cut wherever the next would pass ``budget`` tokens."""
    out, current, tokens = [], [], 0
    for ids in sorted((list(t) for t in token_ids), key=len):
        if current and tokens + len(ids) > budget:
            out.append(pack(current))
            current, tokens = [], 0
        current.append(ids)
        tokens += len(ids)
    return [*out, pack(current)]


def interleaved(runs: dict[str, Callable[[], float]], *, rounds: int = 6) -> dict[str, float]:
    """Median of each run's rate, the runs alternating order round by round (one warm-up each)."""
    for fn in runs.values():
        fn()
    rates: dict[str, list[float]] = {name: [] for name in runs}
    names = list(runs)
    for r in range(rounds):
        for name in names if r % 2 == 0 else names[::-1]:
            rates[name].append(runs[name]())
    return {name: statistics.median(v) for name, v in rates.items()}


def tokens_per_second(fn: Callable[[], object], tokens: int) -> float:
    t0 = time.perf_counter()
    fn()
    return tokens / (time.perf_counter() - t0)


def ms_per_call(fn: Callable[[], object], reps: int = 200) -> float:
    for _ in range(10):
        fn()
    t0 = time.perf_counter()
    for _ in range(reps):
        fn()
    return (time.perf_counter() - t0) / reps * 1000


def header() -> str:
    m = machine_info()
    return f"{m['cpu']}, {m['cpu_cores']} cores, {m['date']}, torch {m['torch']}, commit {m['gigarouter_commit']}"
