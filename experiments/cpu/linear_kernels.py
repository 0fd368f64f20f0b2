"""ATen's linear (MKL sgemm) against oneDNN's packed, fused linear (engine/onednn.py), two ways:

1. GEMM rates at all-MiniLM-L6-v2's shapes (1,024 tokens x 384 -> 384 / 1152 / 1536, 1536 -> 384),
   float32 and bf16, against the square-GEMM peak.
2. The default model end to end through ``Embedder``: 600 texts of the bench corpus, each
   kernel set in its own process (``GIGAROUTER_CPU_LINEAR`` is read at load), the two
   alternating, 3 timed encodes per process.

    python experiments/cpu/linear_kernels.py [--dtype float32|bfloat16-mixed] [--repeats 2]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from functools import partial

import torch
import torch.nn.functional as F

SHAPES = ((384, 384), (384, 1152), (384, 1536), (1536, 384))


def rate(fn, flops: float, n: int = 40) -> float:
    for _ in range(3):
        fn()
    best = float("inf")
    for _ in range(3):
        t = time.perf_counter()
        for _ in range(n):
            fn()
        best = min(best, (time.perf_counter() - t) / n)
    return flops / best / 1e9


def gemm_rates(tokens: int = 1024) -> None:
    torch.manual_seed(0)
    for k, n in SHAPES:
        x, w, b = torch.randn(tokens, k), torch.randn(n, k) * 0.05, torch.randn(n)
        flops = 2 * tokens * k * n
        packed = torch.ops.mkldnn._reorder_linear_weight(w, None)
        xb, wb = x.bfloat16(), w.bfloat16()
        packed_b = torch.ops.mkldnn._reorder_linear_weight(wb, None)
        pointwise = torch.ops.mkldnn._linear_pointwise
        rows = {
            "aten fp32 (MKL)": rate(partial(F.linear, x, w, b), flops),
            "oneDNN fp32 packed": rate(partial(pointwise, x, packed, b, "none", [], ""), flops),
            "aten bf16": rate(partial(F.linear, xb, wb), flops),
            "oneDNN bf16 packed": rate(partial(pointwise, xb, packed_b, None, "none", [], ""), flops),
        }
        print(f"{tokens} x {k} -> {n}: " + ", ".join(f"{name} {v:.0f} GFLOP/s" for name, v in rows.items()))
    a = torch.randn(2048, 2048)
    print(f"square 2048^3: fp32 {rate(lambda: a @ a, 2 * 2048**3, 5):.0f}, "
          f"bf16 {rate(lambda: a.bfloat16() @ a.bfloat16(), 2 * 2048**3, 5):.0f} GFLOP/s")


def child(dtype: str) -> None:
    """One kernel set (from the environment), end to end: inputs/s per encode."""
    import dataclasses

    from gigarouter.bench.corpus import mixed_corpus
    from gigarouter.embedder import Embedder
    from gigarouter.settings import Settings, default_model

    texts = list(mixed_corpus(600).texts)
    with Embedder(dataclasses.replace(default_model(), dtype=dtype), settings=Settings(cache="off")) as e:
        e.encode(texts[:64])
        rates = []
        for _ in range(3):
            t = time.perf_counter()
            e.encode(texts)
            rates.append(len(texts) / (time.perf_counter() - t))
    print(json.dumps({"rates": rates}))


def end_to_end(dtype: str, repeats: int) -> None:
    results: dict[str, list[float]] = {"aten": [], "onednn": []}
    for r in range(repeats):
        for kernels in ("aten", "onednn") if r % 2 == 0 else ("onednn", "aten"):
            out = subprocess.run([sys.executable, __file__, "--child", dtype], capture_output=True, text=True,
                                 check=True, env={**os.environ, "GIGAROUTER_CPU_LINEAR": kernels})
            got = json.loads(out.stdout.strip().splitlines()[-1])
            results[kernels] += got["rates"]
            print(f"  {dtype} {kernels:<7} {', '.join(f'{x:.1f}' for x in got['rates'])} inputs/s")
    aten, ours = statistics.median(results["aten"]), statistics.median(results["onednn"])
    print(f"{dtype}: ATen {aten:.1f}, oneDNN {ours:.1f} inputs/s (median): {ours / aten:.2f}x")


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--dtype", default=None, help="float32 or bfloat16-mixed (default: both)")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child)
    else:
        gemm_rates()
        for dtype in (args.dtype,) if args.dtype else ("float32", "bfloat16-mixed"):
            end_to_end(dtype, args.repeats)
