"""Latency of a single short query, with the server idle and while a bulk load saturates it.

This is what the interactive lane is for: a 16-token query should not wait
behind a queue of bulk documents. One probe sends one query at a time (each
after the previous answer); the bulk load is the closed-loop generator with
many inputs per request. Both run in one event loop, so on a small machine the
client's own CPU use is the same in both phases.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence

import numpy as np

from gigarouter.bench.loadgen import Request, Target, make_client, resolve_path, run_load, send


async def _probe(client, target: Target, queries: Sequence[Request], *, seconds: float,
                 max_probes: int | None = None) -> list[float]:
    latencies, errors, i = [], 0, 0
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline and (max_probes is None or i < max_probes):
        sample = await send(client, target, queries[i % len(queries)])
        i += 1
        if sample.status == "200":
            latencies.append(sample.latency)
        else:
            errors += 1
    return latencies


def summary(latencies: Sequence[float]) -> dict:
    if not latencies:
        return {"n": 0, "p50_ms": None, "p90_ms": None, "p99_ms": None}
    ms = np.asarray(latencies) * 1000
    return {"n": int(ms.size), "p50_ms": float(np.percentile(ms, 50)), "p90_ms": float(np.percentile(ms, 90)),
            "p99_ms": float(np.percentile(ms, 99))}


async def query_latency_under_load(target: Target, *, queries: Sequence[Request], bulk: Sequence[Request],
                                   bulk_concurrency: int = 4, idle_seconds: float = 5.0,
                                   loaded_seconds: float = 10.0, ramp_seconds: float = 2.0,
                                   max_probes: int | None = None) -> dict:
    """p50/p99 of one query at a time: idle, then under ``bulk_concurrency`` bulk workers.

    ``idle_seconds=0`` skips the idle phase (a comparison measures it for all
    servers at once, alternating, with ``loadgen.run_paired``).
    """
    async with make_client(bulk_concurrency + 1) as client:
        target = await resolve_path(client, target)
        await _probe(client, target, queries, seconds=0.5, max_probes=3)   # warm the connection and path
        idle = await _probe(client, target, queries, seconds=idle_seconds, max_probes=max_probes) \
            if idle_seconds > 0 else []
        load = asyncio.create_task(run_load(target, bulk, concurrency=bulk_concurrency,
                                            duration=ramp_seconds + loaded_seconds, warmup_requests=0,
                                            client=client))
        await asyncio.sleep(ramp_seconds)
        loaded = await _probe(client, target, queries, seconds=loaded_seconds, max_probes=max_probes)
        bulk_result = (await load).to_dict()
    idle_s, loaded_s = summary(idle), summary(loaded)
    slowdown = (loaded_s["p50_ms"] / idle_s["p50_ms"]) if idle and loaded else None
    return {"query_tokens": queries[0].tokens if queries else None, "bulk_concurrency": bulk_concurrency,
            "bulk_inputs_per_request": bulk_result["inputs_per_request"], "idle": idle_s, "loaded": loaded_s,
            "p50_slowdown": slowdown, "bulk": {k: bulk_result[k] for k in
                                               ("inputs_per_s", "tokens_per_s", "errors", "ok_requests")}}
