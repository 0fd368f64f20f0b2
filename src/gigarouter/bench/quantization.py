"""How much retrieval the compact vectors lose: recall@10 of int8, uint8 and binary search against
exact float search, on the embedded default model (all-MiniLM-L6-v2), in process, no downloads.

Two corpora, both deterministic:

- ``python-docs``: real English prose that every CPython ships, the Python Language
  Reference's help topics (``pydoc_data.topics``), cut into paragraphs of 20 words or more
  (1,138 on CPython 3.11). Queries: the first sentence, at most 12 words, of every 5th
  paragraph (each query's own paragraph stays in the corpus, as in a real index).
- ``bench``: the benchmarks' synthetic MS MARCO-like corpus (``bench.corpus.mixed_corpus(2048)``,
  seed 0): its 1,015 passages, searched with its 1,033 queries.

Recall@10: of the 10 documents that float cosine search ranks first (the truth here), the
share that the compact search also puts in its first 10, averaged over the queries. The
query is compact too (both sides stored the same way), except in the rescoring rows.

    python -m gigarouter.bench.quantization --out docs/benchmarks/quantization.json
"""

from __future__ import annotations

import argparse
import json
import platform
import re
import time
from pathlib import Path

import numpy as np

from gigarouter.bench.corpus import mixed_corpus
from gigarouter.pooling.encoding import finish, quantize

K = 10
RESCORE_FACTOR = 4          # binary + rescore: Hamming top 40, re-ranked with the float query


def python_docs() -> tuple[list[str], list[str]]:
    import pydoc_data.topics as topics

    paragraphs = [" ".join(p.split()) for text in topics.topics.values() for p in re.split(r"\n\s*\n", text)]
    paragraphs = [p for p in paragraphs if len(p.split()) >= 20]
    queries = [" ".join(re.split(r"(?<=[.:?])\s", p)[0].split()[:12]) for p in paragraphs[::5]]
    return paragraphs, queries


def bench_corpus() -> tuple[list[str], list[str]]:
    corpus = mixed_corpus(2048, seed=0)
    return list(corpus.of_kind("passage")), list(corpus.of_kind("query"))


def top(scores: np.ndarray, k: int = K) -> np.ndarray:
    """Indices of the k best scores per row, best first (ties broken by index: stable)."""
    return np.argsort(-scores, axis=1, kind="stable")[:, :k]


def recall(found: np.ndarray, truth: np.ndarray) -> float:
    return float(np.mean([len(set(f) & set(t)) / K for f, t in zip(found, truth, strict=True)]))


def hamming_scores(q: np.ndarray, d: np.ndarray) -> np.ndarray:
    """Minus the Hamming distance between packed bit rows (higher is closer)."""
    diff = np.bitwise_xor(q[:, None, :], d[None, :, :])
    return -np.unpackbits(diff, axis=2).sum(axis=2, dtype=np.int32)


def absmax_int8(v: np.ndarray) -> np.ndarray:
    """The alternative calibration not served: each vector scaled by its own largest component."""
    return np.rint(v * (127 / np.abs(v).max(axis=1, keepdims=True))).astype(np.int8)


def evaluate(q: np.ndarray, d: np.ndarray) -> dict[str, float]:
    """q, d: unit float32 vectors. Recall@10 of each compact search against float search."""
    truth = top(q @ d.T)
    qi, di = quantize(q, "int8").astype(np.int32), quantize(d, "int8").astype(np.int32)
    qu, du = quantize(q, "uint8").astype(np.int64), quantize(d, "uint8").astype(np.int64)
    qb, db = quantize(q, "ubinary"), quantize(d, "ubinary")
    hamming = hamming_scores(qb, db)
    shortlist = top(hamming, K * RESCORE_FACTOR)
    signs = np.unpackbits(db, axis=1)[:, :d.shape[1]].astype(np.float32) * 2 - 1     # [docs, dim] of +-1
    rescored = np.take_along_axis(shortlist, top(np.einsum("qd,qkd->qk", q, signs[shortlist])), axis=1)
    qa, da = absmax_int8(q).astype(np.int32), absmax_int8(d).astype(np.int32)
    l2_uint8 = -((qu[:, None, :] - du[None, :, :]) ** 2).sum(axis=2)
    return {
        "int8 (dot product)": recall(top(qi @ di.T), truth),
        "uint8 (L2 distance)": recall(top(l2_uint8), truth),
        "uint8 (raw dot product: a misuse)": recall(top(qu @ du.T), truth),
        "binary (Hamming)": recall(top(hamming), truth),
        f"binary (Hamming top {K * RESCORE_FACTOR}, rescored with the float query)": recall(rescored, truth),
        "int8, per-vector absmax scale (not served; compared)": recall(top(qa @ da.T), truth),
    }


def run() -> dict:
    from gigarouter.bench.machine import git_commit, machine_info
    from gigarouter.embedder import Embedder

    results: dict = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "machine": machine_info(),
                     "commit": git_commit(), "python": platform.python_version(), "model": "all-minilm-l6-v2",
                     "k": K, "corpora": {}}
    with Embedder() as embedder:
        for name, (docs, queries) in {"python-docs": python_docs(), "bench": bench_corpus()}.items():
            raw_d = embedder.encode(docs, normalize=False)
            raw_q = embedder.encode(queries, input_type="query", normalize=False)
            rows = {}
            for dims in (None, 128):
                d, q = (finish(v, dimensions=dims, normalize=True) for v in (raw_d, raw_q))
                rows[f"{dims or raw_d.shape[1]} dims"] = evaluate(q, d)
            results["corpora"][name] = {"documents": len(docs), "queries": len(queries), "recall_at_10": rows}
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    results = run()
    text = json.dumps(results, indent=2)
    if args.out:
        args.out.write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
