"""Where should a Ray model's inputs be tokenized: in the gateway (send token ids) or in the replica (send texts)?

Measured for two request shapes of the benchmark corpus (one query; 32 mixed texts), on
the default model's tokenizer, one request at a time, the variants interleaved round by round:

- ``tokenize``: the gateway's ``recipe.prepare_texts`` (what it spends for an exact count
  before the request runs, which the reservation needs, wherever the model then runs);
- ``hop ids`` / ``hop texts``: the round trip through a Serve handle to a replica that answers
  zeros of the model's width, given the packed token ids or the texts;
- ``hop texts+tokenize``: the same, the replica tokenizing the texts first;
- the bytes each payload pickles to, and the gateway process's CPU per request for each path;
- the tokenizer alone over the corpus, in tokens per CPU-second and per wall-clock second.

    PYTHONPATH=src python experiments/ray/tokenize_where.py [--rounds 7] [--calls 60]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import pickle
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "cpu"))

from _common import header

from gigarouter.bench.corpus import mixed_corpus
from gigarouter.engine.sources import embedded_model_dir
from gigarouter.providers.ray import cluster
from gigarouter.providers.ray.replica import Packed
from gigarouter.recipes.sbert import SbertRecipe

OPTIONS = {"input_type": "document", "instruction": None, "truncate": "end"}
DIM = 384


class Probe:
    """A replica that does everything but the model: unpacks or tokenizes, answers zeros."""

    def __init__(self) -> None:
        from gigarouter.engine.sources import embedded_model_dir
        from gigarouter.recipes.sbert import SbertRecipe

        self.recipe = SbertRecipe.from_checkpoint(embedded_model_dir())

    async def ids(self, packed: Packed) -> np.ndarray:
        return np.zeros((len(packed.items()), DIM), dtype=np.float32)

    async def texts(self, texts: list[str]) -> np.ndarray:
        return np.zeros((len(texts), DIM), dtype=np.float32)

    async def tokenize(self, texts: list[str]) -> np.ndarray:
        items = self.recipe.prepare_texts(texts, **OPTIONS)
        return np.zeros((len(items), DIM), dtype=np.float32)


async def measure(handle, recipe, shapes: dict[str, list[list[str]]], *, rounds: int, calls: int) -> dict:
    out: dict = {}
    for shape, requests in shapes.items():
        parts = {"tokenize": [], "pack": [], "hop": []}

        async def gateway_ids(texts, parts=parts):   # what gigarouter does
            t0 = time.perf_counter()
            items = recipe.prepare_texts(texts, **OPTIONS)
            t1 = time.perf_counter()
            packed = Packed.of(items)
            t2 = time.perf_counter()
            await handle.ids.remote(packed)
            parts["tokenize"].append(t1 - t0)
            parts["pack"].append(t2 - t1)
            parts["hop"].append(time.perf_counter() - t2)

        async def count_then_replica(texts):         # exact billing, tokenized twice
            recipe.prepare_texts(texts, **OPTIONS)
            await handle.tokenize.remote(texts)

        async def replica_only(texts):               # billed from an upper bound, tokenized once, remotely
            await handle.tokenize.remote(texts)

        async def texts_hop(texts):                  # the bare hop with texts, nothing done with them
            await handle.texts.remote(texts)

        runs = {"gateway tokenizes, sends ids": gateway_ids,
                "gateway counts, replica tokenizes": count_then_replica,
                "replica tokenizes, gateway bills a bound": replica_only,
                "bare hop with texts": texts_hop}
        names = list(runs)
        wall: dict[str, list[float]] = {v: [] for v in names}
        cpu: dict[str, list[float]] = {v: [] for v in names}
        for fn in runs.values():                    # warm-up
            for texts in requests[:5]:
                await fn(texts)
        for times in parts.values():
            times.clear()
        for r in range(rounds):
            for name in names if r % 2 == 0 else names[::-1]:
                c0, t0 = time.process_time(), time.perf_counter()
                for i in range(calls):
                    await runs[name](requests[i % len(requests)])
                wall[name].append((time.perf_counter() - t0) / calls)
                cpu[name].append((time.process_time() - c0) / calls)
        sample = requests[0]
        items = recipe.prepare_texts(sample, **OPTIONS)
        out[shape] = {
            "inputs": len(sample), "tokens": sum(len(i.token_ids) for i in items),
            "utf8_bytes": sum(len(t.encode()) for t in sample),
            "pickled_bytes": {"packed ids": len(pickle.dumps(Packed.of(items), protocol=5)),
                              "texts": len(pickle.dumps(list(sample), protocol=5))},
            "gateway_path_ms_median": {k: 1000 * statistics.median(v) for k, v in parts.items()},
            "request_ms_median": {k: 1000 * statistics.median(v) for k, v in wall.items()},
            "gateway_cpu_ms_per_request": {k: 1000 * statistics.median(v) for k, v in cpu.items()},
        }
    return out


def tokenizer_rate(recipe, texts: list[str], rounds: int = 3) -> dict:
    """The whole corpus, 32 texts per call: tokens per CPU-second (the tokenizer's threads included; steady on a
    shared machine) and per wall-clock second (what this process got), median of ``rounds``."""
    cpu, wall = [], []
    tokens = 0
    for _ in range(rounds):
        c0, t0, tokens = time.process_time(), time.perf_counter(), 0
        for i in range(0, len(texts), 32):
            tokens += sum(len(item.token_ids) for item in recipe.prepare_texts(texts[i:i + 32], **OPTIONS))
        cpu.append(time.process_time() - c0)
        wall.append(time.perf_counter() - t0)
    return {"tokens": tokens, "requests": -(-len(texts) // 32),
            "tokens_per_cpu_second": tokens / statistics.median(cpu),
            "tokens_per_wall_second": tokens / statistics.median(wall),
            "cpu_ms_per_request": 1000 * statistics.median(cpu) / -(-len(texts) // 32)}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--calls", type=int, default=60)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    corpus = list(mixed_corpus(2048).texts)
    recipe = SbertRecipe.from_checkpoint(embedded_model_dir())
    rate = tokenizer_rate(recipe, corpus)            # before Ray starts, and again after it stopped
    shapes = {"1 query": [[t] for t in corpus if len(t.split()) <= 12][:200],
              "32 mixed texts": [corpus[i:i + 32] for i in range(0, 2048, 32)]}
    cluster.acquire(None)
    try:
        _, serve = cluster.import_ray()
        app = serve.deployment(Probe).options(ray_actor_options={"num_cpus": 1}, max_ongoing_requests=64,
                                              logging_config={"log_level": "WARNING",
                                                              "enable_access_log": False}).bind()
        handle = serve.run(app, name="tokenize-where", route_prefix=None)
        result = asyncio.run(measure(handle, recipe, shapes, rounds=args.rounds, calls=args.calls))
    finally:
        cluster.release()
    result = {"machine": header(), "load_average": os.getloadavg(), "tokenizer": [rate, tokenizer_rate(recipe, corpus)],
              "rounds": args.rounds, "calls_per_round": args.calls, "shapes": result}
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
