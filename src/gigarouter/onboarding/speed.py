"""Speed on this device: tokens/s on the bench mix and one query's latency, through the target.

The bench mix is ``bench.corpus.mixed_corpus`` (MS MARCO-like: short queries and passages), with
a fresh seed per run so a server's embedding cache cannot answer it from an earlier run (the seed
is recorded). Queries go as queries, passages as documents, each kind in one call, so the
scheduler sees the whole load at once. Latency is one short query at a time, after the load, as an
interactive client sends it: the median and the slowest of ``latency_samples``.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from gigarouter.bench.corpus import mixed_corpus
from gigarouter.onboarding.targets import Target

DEFAULT_SAMPLE = 512
DEFAULT_LATENCY_SAMPLES = 20


def run_speed(target: Target, *, sample: int = DEFAULT_SAMPLE, latency_samples: int = DEFAULT_LATENCY_SAMPLES,
              seed: int | None = None, progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    seed = random.randrange(1 << 30) if seed is None else seed
    corpus = mixed_corpus(sample, seed=seed)
    queries, passages = list(corpus.of_kind("query")), list(corpus.of_kind("passage"))
    target.embed(queries[:4] + passages[:4], input_type="document", instruction=None)     # warm-up
    if progress:
        progress(f"speed: {len(corpus)} texts of the bench mix")
    started = time.perf_counter()
    tokens = target.embed(queries, input_type="query", instruction=None).tokens if queries else 0
    tokens += target.embed(passages, input_type="document", instruction=None).tokens if passages else 0
    seconds = time.perf_counter() - started
    latencies = []
    for i in range(latency_samples):
        start = time.perf_counter()
        target.embed([f"{queries[i % len(queries)] if queries else 'query'} {i}"], input_type="query",
                     instruction=None)
        latencies.append((time.perf_counter() - start) * 1000)
    if progress:
        progress("speed: done")
    return {"passed": tokens > 0 and seconds > 0, "tokens_per_second": tokens / seconds if seconds else 0.0,
            "tokens": tokens, "texts": len(corpus), "seconds": seconds, "corpus": corpus.name,
            "query_latency_ms_p50": float(np.median(latencies)) if latencies else None,
            "query_latency_ms_max": float(max(latencies)) if latencies else None,
            "latency_samples": len(latencies)}
