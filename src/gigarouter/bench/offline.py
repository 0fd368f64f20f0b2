"""Offline baselines on a list of texts: sentence-transformers ``encode`` and our in-process ``Embedder``.

Both are timed end to end, texts in and normalised vectors out (tokenization
included), after one warm-up call, with repetitions interleaved
(ST, ours, ST, ours, ...) so a noisy neighbour slows both alike. Our engine is
also timed on the already-tokenized inputs, which isolates the forward pass.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np


def _timed(fn: Callable[[], object]) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def offline_throughput(texts: Sequence[str], tokens: int, *, model_dir: Path, repeats: int = 2,
                       st_batch_size: int = 32, log=print) -> dict:
    """inputs/s and tokens/s of each baseline; ``tokens`` is the client-side count of ``texts``."""
    from sentence_transformers import SentenceTransformer

    from gigarouter.embedder import Embedder

    texts = list(texts)
    st = SentenceTransformer(str(model_dir), device="cpu")
    ours = Embedder()
    items = ours.recipe.prepare_texts(texts, input_type="document", instruction=None, truncate="end")

    def st_encode():
        return st.encode(texts, batch_size=st_batch_size, normalize_embeddings=True, convert_to_numpy=True)

    def ours_encode():
        return ours.encode(texts)

    def ours_engine_only():
        # The Embedder's own batching on pre-tokenized items: forward passes, packing, pooling.
        return ours._run(items, None)

    warm = texts[:64]
    st.encode(warm, batch_size=st_batch_size)
    ours.encode(warm)
    agree = _agreement(texts[:64], st=st, ours=ours)
    times: dict[str, list[float]] = {"sentence-transformers": [], "gigarouter-embedder": [],
                                     "gigarouter-engine-pretokenized": []}
    for r in range(repeats):
        runs = [("sentence-transformers", st_encode), ("gigarouter-embedder", ours_encode),
                ("gigarouter-engine-pretokenized", ours_engine_only)]
        for name, fn in (runs if r % 2 == 0 else runs[::-1]):
            times[name].append(_timed(fn))
            log(f"  offline {name:<32} {len(texts) / times[name][-1]:8.1f} inputs/s")
    out = {}
    for name, ts in times.items():
        best = min(ts)
        out[name] = {"seconds": ts, "inputs_per_s": len(texts) / best, "tokens_per_s": tokens / best,
                     "inputs_per_s_median": len(texts) / float(np.median(ts))}
    return {"inputs": len(texts), "tokens": tokens, "repeats": repeats, "st_batch_size": st_batch_size,
            "our_token_budget": ours.engine.token_budget, "results": out, "agreement": agree}


def _agreement(texts: Sequence[str], *, st, ours) -> dict:
    """Cosine between the two implementations' vectors for ``texts`` (a sanity check, not a benchmark)."""
    a = st.encode(list(texts), normalize_embeddings=True, convert_to_numpy=True)
    b = ours.encode(list(texts))
    cos = (a * b).sum(1)
    return {"texts": len(a), "min_cosine": float(cos.min()), "mean_cosine": float(cos.mean())}
