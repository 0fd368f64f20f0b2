"""``gigarouter bench cache``: the per-input cache on a workload where a share of the inputs repeat.

The workload is the MS MARCO-like mix (``bench/corpus.py``, each text once)
with exactly ``repeat_fraction`` of the positions replaced by an input seen
earlier in the stream (uniformly among those), so a perfect cache answers that
share and computes the rest. Two shapes are driven closed-loop: single-input
requests (queries, 8 at a time) and 16-input batches (4 at a time); each shape
has its own texts, so one shape's entries never serve the other.

The same run starts three gigarouter servers on the embedded model, the same
but for the cache: ``cache = "off"``, ``"memory"`` and ``"redis"`` (a key prefix
of the run's own, deleted afterwards). Each round starts them fresh (cold
caches) and sends every shape's stream exactly once to each, one server at a
time, the order alternating between rounds; the hit ratio is read from each
server's ``/metrics``. The summary is the mean over rounds and the ratio to
``off`` of the same round.
"""

from __future__ import annotations

import asyncio
import re
import tempfile
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import numpy as np

from gigarouter.bench.corpus import TokenCounter, mixed_corpus
from gigarouter.bench.loadgen import Request, Target, build_requests, run_load
from gigarouter.bench.machine import machine_info

CONFIGS = ("off", "memory", "redis")
#: (inputs per request, concurrency)
SHAPES = ((1, 8), (16, 4))
MODEL = "all-minilm-l6-v2"


@dataclass(frozen=True)
class CacheBenchOptions:
    inputs: int = 2048                      # inputs per shape's stream
    repeat_fraction: float = 0.3
    rounds: int = 2
    redis_url: str = "redis://127.0.0.1:6379/0"
    configs: tuple[str, ...] = CONFIGS
    shapes: tuple[tuple[int, int], ...] = SHAPES
    port: int = 18400
    log_dir: Path = field(default_factory=lambda: Path(tempfile.gettempdir()) / "gigarouter-bench-cache")
    seed: int = 0


def repeating_inputs(fresh: Sequence[str], n: int, repeat_fraction: float, *, seed: int = 0) -> list[str]:
    """``n`` inputs: exactly ``round(n * repeat_fraction)`` of them repeat an earlier one, the rest are new."""
    rng = np.random.default_rng(seed)
    repeats = int(round(n * repeat_fraction))
    chosen = set(rng.choice(np.arange(1, n), size=repeats, replace=False).tolist()) if repeats else set()
    if n - repeats > len(fresh):
        raise ValueError(f"{n - repeats} new inputs needed, {len(fresh)} available")
    new = iter(fresh)
    out: list[str] = []
    for i in range(n):
        out.append(out[int(rng.integers(len(out)))] if i in chosen else next(new))
    return out


def _unique(texts: Sequence[str]) -> list[str]:
    return list(dict.fromkeys(texts))


def workloads(opts: CacheBenchOptions, counter: TokenCounter) -> list[dict]:
    """One stream per shape, over disjoint texts."""
    need = int(opts.inputs * (1 - opts.repeat_fraction)) + 1
    pool = _unique(mixed_corpus(max(4096, 3 * need * len(opts.shapes)), seed=opts.seed).texts)
    out = []
    for s, (per_request, concurrency) in enumerate(opts.shapes):
        fresh = pool[s * need:(s + 1) * need]
        texts = repeating_inputs(fresh, opts.inputs, opts.repeat_fraction, seed=opts.seed + s)
        out.append({"inputs_per_request": per_request, "concurrency": concurrency,
                    "requests": build_requests(texts, counter.counts(texts), inputs_per_request=per_request),
                    "distinct_inputs": len(set(texts)), "inputs": len(texts)})
    return out


def _config(config: str, data_dir: Path, redis_url: str, prefix: str) -> str:
    lines = [f'data_dir = "{data_dir}"', f'cache = "{config}"']
    if config == "redis":
        lines += [f'cache_url = "{redis_url}"', f'cache_prefix = "{prefix}"']
    return "\n".join(lines) + "\n"


def _cache_counts(url: str) -> dict[str, float]:
    text = httpx.get(f"{url}/metrics", timeout=10, trust_env=False).text
    counts = {}
    for name in ("hits", "misses", "hit_tokens"):
        match = re.search(rf'^gigarouter_cache_{name}_total{{model="{MODEL}"}} ([0-9.e+]+)$', text, re.M)
        counts[name] = float(match.group(1)) if match else 0.0
    return counts


def _delete_prefix(redis_url: str, prefix: str) -> int:
    import redis

    client = redis.Redis.from_url(redis_url)
    try:
        deleted = 0
        for key in client.scan_iter(match=f"{prefix}:*", count=1000):
            deleted += client.delete(key)
        return deleted
    finally:
        client.close()


def _check_redis(redis_url: str) -> None:
    import redis

    client = redis.Redis.from_url(redis_url, socket_connect_timeout=3)
    try:
        client.ping()
    except redis.RedisError as exc:
        raise RuntimeError(f"Redis at {redis_url} is not reachable ({exc}); pass --redis-url or "
                           "--configs off,memory") from None
    finally:
        client.close()


async def _warm(url: str, concurrency: int, tag: str) -> None:
    """Open the connections and warm the model with inputs that are in no workload."""
    warm = [Request(texts=(f"warm-up {tag} {i}",), tokens=0) for i in range(2 * concurrency)]
    await run_load(Target(url, MODEL, "/v1/embeddings"), warm, concurrency=concurrency, duration=60,
                   max_requests=len(warm), warmup_requests=0)


def run_cache_bench(opts: CacheBenchOptions, *, command: str, log: Callable[[str], None]) -> dict:
    from gigarouter.bench import servers
    from gigarouter.engine.sources import embedded_model_dir

    if "redis" in opts.configs:
        _check_redis(opts.redis_url)
    counter = TokenCounter.for_model_dir(embedded_model_dir())
    streams = workloads(opts, counter)
    result = {"kind": "cache", "command": command, "machine": machine_info(), "model": MODEL,
              "repeat_fraction": opts.repeat_fraction, "inputs_per_stream": opts.inputs,
              "configs": list(opts.configs), "rounds": opts.rounds,
              "streams": [{k: v for k, v in s.items() if k != "requests"} for s in streams], "runs": []}
    work = Path(tempfile.mkdtemp(prefix="gigarouter-bench-cache-"))
    for rnd in range(opts.rounds):
        prefix = f"gigarouter-bench-cache-{uuid.uuid4().hex[:10]}"
        specs = []
        for i, config in enumerate(opts.configs):
            path = work / f"round{rnd}-{config}.toml"
            path.write_text(_config(config, work / f"data-{rnd}-{config}", opts.redis_url, prefix))
            specs.append(servers.gigarouter_spec(opts.port + i, name=f"cache-{config}", config=path))
        log(f"round {rnd + 1}/{opts.rounds}: starting {', '.join(s.name for s in specs)}")
        running = servers.start_all(specs, log_dir=opts.log_dir)
        try:
            by_config = dict(zip(opts.configs, running, strict=False))
            order = list(opts.configs) if rnd % 2 == 0 else list(reversed(opts.configs))
            for s, stream in enumerate(streams):
                for config in order:
                    server = by_config[config]
                    url = server.spec.url
                    asyncio.run(_warm(url, stream["concurrency"], f"{rnd}-{s}"))
                    before = _cache_counts(url)
                    load = asyncio.run(run_load(Target(url, MODEL, "/v1/embeddings"), stream["requests"],
                                                concurrency=stream["concurrency"], duration=600,
                                                max_requests=len(stream["requests"]), warmup_requests=0,
                                                server_pid=server.pid))
                    after = _cache_counts(url)
                    row = load.to_dict()
                    hits, misses = after["hits"] - before["hits"], after["misses"] - before["misses"]
                    row.update(config=config, round=rnd, stream=s,
                               cache_hits=hits, cache_misses=misses,
                               hit_ratio=hits / (hits + misses) if hits + misses else 0.0)
                    result["runs"].append(row)
                    log(f"  {stream['inputs_per_request']:>2} inputs x c={stream['concurrency']} {config:>6}: "
                        f"{row['inputs_per_s']:7.1f} inputs/s, p50 {row['latency_ms']['p50']:6.1f} ms, "
                        f"p99 {row['latency_ms']['p99']:6.1f} ms, hits {100 * row['hit_ratio']:.1f}%, "
                        f"errors {row['errors']}")
        finally:
            for server in running:
                servers.stop(server)
            if "redis" in opts.configs:
                _delete_prefix(opts.redis_url, prefix)
    result["summary"] = summarize(result)
    return result


def summarize(result: dict) -> list[dict]:
    """Per stream and configuration: means over rounds, and ratios to "off" within each round."""
    rows = []
    runs = result["runs"]
    for s, stream in enumerate(result["streams"]):
        for config in result["configs"]:
            mine = [r for r in runs if r["stream"] == s and r["config"] == config]
            if not mine:
                continue
            base = {r["round"]: r for r in runs if r["stream"] == s and r["config"] == "off"}
            ratio = lambda f, mine=mine, base=base: (  # noqa: E731
                float(np.mean([f(r) / f(base[r["round"]]) for r in mine])) if base else None)
            rows.append({
                "stream": s, "inputs_per_request": stream["inputs_per_request"],
                "concurrency": stream["concurrency"], "config": config,
                "inputs_per_s": float(np.mean([r["inputs_per_s"] for r in mine])),
                "p50_ms": float(np.mean([r["latency_ms"]["p50"] for r in mine])),
                "p99_ms": float(np.mean([r["latency_ms"]["p99"] for r in mine])),
                "hit_ratio": float(np.mean([r["hit_ratio"] for r in mine])),
                # Server CPU time per input: what the work cost, less swayed than wall time by a busy machine.
                "cpu_ms_per_input": _mean([r.get("server_cpu_ms_per_input") for r in mine]),
                "cpu_vs_off": ratio(lambda r: r.get("server_cpu_ms_per_input")) if all(
                    r.get("server_cpu_ms_per_input") for r in [*mine, *base.values()]) else None,
                "errors": sum(sum(r["errors"].values()) for r in mine),
                "throughput_vs_off": ratio(lambda r: r["inputs_per_s"]),
                "p50_vs_off": ratio(lambda r: r["latency_ms"]["p50"]),
                "p99_vs_off": ratio(lambda r: r["latency_ms"]["p99"]),
            })
    return rows


def _mean(values: list) -> float | None:
    return float(np.mean(values)) if values and all(v is not None for v in values) else None


def markdown(result: dict) -> str:
    from gigarouter.bench import report

    return report.table(
        ["inputs/request", "concurrency", "cache", "inputs/s", "x off", "p50 ms", "x off", "p99 ms", "x off",
         "server CPU ms/input", "x off", "answered from cache", "errors"],
        [(r["inputs_per_request"], r["concurrency"], r["config"], r["inputs_per_s"], _x(r["throughput_vs_off"]),
          r["p50_ms"], _x(r["p50_vs_off"]), r["p99_ms"], _x(r["p99_vs_off"]),
          None if r.get("cpu_ms_per_input") is None else round(r["cpu_ms_per_input"], 2), _x(r.get("cpu_vs_off")),
          f"{100 * r['hit_ratio']:.1f}%", r["errors"]) for r in result["summary"]])


def _x(ratio: float | None) -> str:
    return "-" if ratio is None else f"{ratio:.2f}x"
