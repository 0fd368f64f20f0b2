"""Host work per forward pass, measured on CPU: what a GPU waits on when batches are small.

On a GPU the host queues a pass's kernels and runs ahead of them; it only
matters when queuing takes longer than the kernels run (a lone query: a 7B
model reads its 14.5 GB of weights in ~3 ms on an H100). Three numbers, none
needing a GPU:

- ``ops``: aten ops per pass, counted by a dispatch mode on the meta device at
  the real shape (each non-view op is one kernel launch, a few microseconds of
  host time each in eager PyTorch);
- ``planning_ms``: the host-side planning of a pass (``AttentionLayout.build``
  and pooling's rows and chunks, numpy on the host), timed;
- ``profile``: cProfile over real passes of a small model on this CPU, the
  share of the pass spent in that planning and in the one upload per array
  group (the rest is the model's ops).

    python -m gigarouter.bench.host_overhead [--out host-overhead.json]
"""

from __future__ import annotations

import argparse
import cProfile
import json
import pstats
import time
from collections import Counter

import numpy as np
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from gigarouter.bench import gpu_fidelity
from gigarouter.engine.base import pack
from gigarouter.engine.models.attention import GRID, VARLEN, AttentionLayout
from gigarouter.engine.models.mistral import MistralConfig, MistralModel
from gigarouter.engine.runner import TorchEngine
from gigarouter.pooling.pooling import PoolingMode, mean_chunks, pool

BATCHES = {"one 16-token query": [16], "16 x 512-token documents": [512] * 16,
           "28 mixed (1-300 tokens)": [300, 200, 100, 50, 17, 5, 1] * 4}


class _OpCounter(TorchDispatchMode):
    def __init__(self) -> None:
        super().__init__()
        self.ops: Counter[str] = Counter()
        self.views = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops[str(func.overloadpacket.__name__)] += 1
        self.views += bool(getattr(func, "is_view", False))
        return func(*args, **(kwargs or {}))


def ops_per_pass(lengths: list[int], path: str, *, layers: int | None = None) -> dict:
    cfg = MistralConfig.from_hf({**gpu_fidelity.MISTRAL_7B, **({"num_hidden_layers": layers} if layers else {})})
    with torch.device("meta"):
        model = MistralModel(cfg).to(torch.bfloat16).eval()
    model.attention_path = path
    cu = np.concatenate([[0], np.cumsum(lengths)])
    ids = torch.empty(int(cu[-1]), dtype=torch.long, device="meta")
    with torch.inference_mode(), _OpCounter() as counter:
        pool(model(ids, cu), cu, np.zeros(len(lengths), dtype=np.int64), PoolingMode.MEAN)
    total = sum(counter.ops.values())
    return {"ops": total, "launching_ops": total - counter.views, "layers": cfg.num_hidden_layers,
            "top": dict(counter.ops.most_common(8))}


def planning_ms(lengths: list[int], path: str, repeats: int = 20) -> float:
    cu = np.concatenate([[0], np.cumsum(lengths)])
    started = time.perf_counter()
    for _ in range(repeats):
        AttentionLayout.build(cu, causal=True, window=4096, path=path, device="meta")
        mean_chunks(cu)
    return (time.perf_counter() - started) / repeats * 1000


def profile_small_model(passes: int = 20) -> dict:
    """cProfile over real CPU passes of a 2-layer model: where the host time of a pass goes."""
    from gigarouter.bench.gpu_first_run import model_on, random_weights

    cfg = MistralConfig.from_hf(gpu_fidelity.TINY)
    weights = {k: v.float() for k, v in random_weights(cfg, torch.device("cpu")).items()}
    engine = TorchEngine(model_on(cfg, weights, causal=True), pooling=PoolingMode.MEAN, dim=cfg.hidden_size,
                         device=torch.device("cpu"),
                         token_budget=1024, max_seq_len=300)
    batch = pack([engine._token_ids(n, i) for i, n in enumerate(BATCHES["28 mixed (1-300 tokens)"][:7])])
    engine.embed(batch)
    prof = cProfile.Profile()
    prof.enable()
    for _ in range(passes):
        engine.embed(batch)
    prof.disable()
    stats = pstats.Stats(prof)
    cumulative = {f"{func[0].rsplit('/', 1)[-1]}:{func[2]}": row[3] for func, row in stats.stats.items()}

    def cum(name: str) -> float:
        return sum(v for k, v in cumulative.items() if k.endswith(name))

    whole = cum("runner.py:embed")
    return {"passes": passes, "ms_per_pass": 1000 * whole / passes,
            "layout_build_share": cum("attention.py:build") / whole,
            "upload_share": cum("transfer.py:upload") / whole,
            "pooling_share": cum("pooling.py:pool") / whole}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out")
    args = parser.parse_args(argv)
    rows = []
    for name, lengths in BATCHES.items():
        for path in (VARLEN, GRID):
            row = {"batch": name, "tokens": sum(lengths), "path": path, **ops_per_pass(lengths, path),
                   "planning_ms": planning_ms(lengths, path)}
            rows.append(row)
            print(f"{name:<26} {path:<6}: {row['launching_ops']:>5} kernel launches per pass "
                  f"({row['ops']} ops), host planning {row['planning_ms']:.2f} ms", flush=True)
    prof = profile_small_model()
    print(f"2-layer model on this CPU: {prof['ms_per_pass']:.1f} ms per pass; "
          f"layout {100 * prof['layout_build_share']:.1f}%, "
          f"uploads {100 * prof['upload_share']:.1f}%, pooling {100 * prof['pooling_share']:.1f}%")
    report = {"shape": "mistral-7b (meta device)", "rows": rows, "small_model_profile": prof,
              "torch": torch.__version__}
    if args.out:
        with open(args.out, "w") as f:
            json.dump(report, f, indent=2)
    return report


if __name__ == "__main__":
    main()
