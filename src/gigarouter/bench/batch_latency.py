"""Query latency while a batch job runs, beside the same while direct bulk requests run (docs/benchmarks.md 8).

One 16-token query at a time, three phases on one server: idle; while a batch
job of 32-passage lines runs (POST /v1/files + /v1/batches); while
``bulk_concurrency`` clients send the same 32-passage requests straight to
/v1/embeddings (section 2's load, the peer). The batch is cancelled when its
phase ends. Both loads ride the bulk lane; the batch is also capped at
``batch_concurrency`` lines in flight.

    python -m gigarouter.bench.batch_latency --url http://127.0.0.1:8000 --out result.json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time

from gigarouter.bench.corpus import mixed_corpus, texts_with_tokens
from gigarouter.bench.latency import _probe, query_latency_under_load, summary
from gigarouter.bench.loadgen import Target, build_requests, make_client, resolve_path
from gigarouter.bench.machine import machine_info


def _batch_file(model: str, passages: list[str], *, lines: int, per_line: int) -> bytes:
    rows = []
    for i in range(lines):
        chunk = [passages[(i * per_line + j) % len(passages)] for j in range(per_line)]
        rows.append(json.dumps({"custom_id": f"l{i}", "method": "POST", "url": "/v1/embeddings",
                                "body": {"model": model, "input": chunk, "cache": False}}))
    return ("\n".join(rows) + "\n").encode()


async def query_latency_during_batch(base: str, model: str, *, idle_seconds: float, loaded_seconds: float,
                                     lines: int, per_line: int, bulk_concurrency: int) -> dict:
    from gigarouter.bench.corpus import TokenCounter
    from gigarouter.engine.sources import embedded_model_dir

    counter = TokenCounter.for_model_dir(embedded_model_dir())
    queries = texts_with_tokens(16, 32, counter.count)
    passages = list(mixed_corpus(2048).of_kind("passage"))
    query_requests = build_requests(queries, counter.counts(queries), inputs_per_request=1)
    async with make_client(2) as client:
        target = await resolve_path(client, Target(base, model, "/v1/embeddings"))
        await _probe(client, target, query_requests, seconds=0.5, max_probes=3)
        idle = await _probe(client, target, query_requests, seconds=idle_seconds)
        uploaded = (await client.post(f"{base}/v1/files", data={"purpose": "batch"}, files={
            "file": ("bench.jsonl", _batch_file(model, passages, lines=lines, per_line=per_line))})).json()
        batch = (await client.post(f"{base}/v1/batches", json={
            "input_file_id": uploaded["id"], "endpoint": "/v1/embeddings", "completion_window": "24h"})).json()
        await asyncio.sleep(2.0)            # the batch ramps up
        before = (await client.get(f"{base}/v1/batches/{batch['id']}")).json()["request_counts"]["completed"]
        started = time.perf_counter()
        during = await _probe(client, target, query_requests, seconds=loaded_seconds)
        after = (await client.get(f"{base}/v1/batches/{batch['id']}")).json()["request_counts"]["completed"]
        elapsed = time.perf_counter() - started
        await client.post(f"{base}/v1/batches/{batch['id']}/cancel")
        if after >= lines:
            raise RuntimeError("the batch finished during the measurement: give it more lines")
    direct = await query_latency_under_load(
        Target(base, model, "/v1/embeddings"), queries=query_requests,
        bulk=build_requests(passages, counter.counts(passages), inputs_per_request=per_line),
        bulk_concurrency=bulk_concurrency, idle_seconds=0, loaded_seconds=loaded_seconds)
    idle_s, during_s = summary(idle), summary(during)
    return {"idle": idle_s, "during_batch": during_s, "during_direct_bulk": direct["loaded"],
            "batch_p50_slowdown": during_s["p50_ms"] / idle_s["p50_ms"],
            "direct_bulk_p50_slowdown": direct["loaded"]["p50_ms"] / idle_s["p50_ms"],
            "batch_inputs_per_s": (after - before) * per_line / elapsed,
            "direct_bulk_inputs_per_s": direct["bulk"]["inputs_per_s"], "per_line": per_line,
            "bulk_concurrency": bulk_concurrency}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default="http://127.0.0.1:8000")
    parser.add_argument("--model", default="all-minilm-l6-v2")
    parser.add_argument("--idle-seconds", type=float, default=8.0)
    parser.add_argument("--loaded-seconds", type=float, default=10.0)
    parser.add_argument("--lines", type=int, default=2000)
    parser.add_argument("--per-line", type=int, default=32)
    parser.add_argument("--bulk-concurrency", type=int, default=4)
    parser.add_argument("--out")
    args = parser.parse_args()
    result = asyncio.run(query_latency_during_batch(
        args.url.rstrip("/"), args.model, idle_seconds=args.idle_seconds, loaded_seconds=args.loaded_seconds,
        lines=args.lines, per_line=args.per_line, bulk_concurrency=args.bulk_concurrency))
    result.update(machine=machine_info(), url=args.url)
    print(json.dumps(result, indent=2))
    if args.out:
        with open(args.out, "w") as out:
            json.dump(result, out, indent=2)


if __name__ == "__main__":
    main()
