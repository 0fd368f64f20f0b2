"""Closed-loop HTTP load against any OpenAI-compatible embeddings server.

``concurrency`` workers each send one request, wait for its answer, and send
the next, until ``duration`` seconds have passed or ``max_requests`` have been
sent; requests in flight then finish (bounded by the request timeout). Every
worker draws from one shared, deterministic sequence of requests, so two
servers driven with the same settings see the same inputs in the same order.

Counted per run: successful requests, inputs and tokens; errors by HTTP status
(e.g. ``"429"``) or by exception name (``"ConnectError"``); latency
percentiles of successful requests. Tokens are counted twice: ``tokens`` is
our client-side count with the model's tokenizer (identical for every server,
so ratios compare like with like) and ``usage_tokens`` is what the server
reported in ``usage.prompt_tokens`` (infinity-emb reports characters unless
started with ``--lengths-via-tokenize``).
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

import httpx
import numpy as np
import orjson

PATHS = ("/v1/embeddings", "/embeddings")
#: gigarouter's per-request stage timing headers (x-tokenize-time, ...), in milliseconds; ``hop`` is the
#: Ray runtime's round trip to a replica less the replica's queue and inference time
STAGES = ("tokenize", "queue", "inference", "hop")


@dataclass(frozen=True)
class Target:
    url: str                          # base URL, e.g. http://127.0.0.1:8000
    model: str
    path: str = "auto"                # /v1/embeddings, /embeddings, or auto (probe)
    encoding_format: str = "float"


@dataclass(frozen=True)
class Request:
    texts: tuple[str, ...]
    tokens: int                       # client-side token count of all inputs (0 = not counted)


def build_requests(texts: Sequence[str], tokens: Sequence[int] | None, *, inputs_per_request: int) -> list[Request]:
    """Consecutive ``inputs_per_request``-sized requests over ``texts`` (the last one may be short)."""
    counts = list(tokens) if tokens is not None else [0] * len(texts)
    return [Request(texts=tuple(texts[i:i + inputs_per_request]), tokens=sum(counts[i:i + inputs_per_request]))
            for i in range(0, len(texts), inputs_per_request)]


@dataclass
class Sample:
    latency: float
    status: str                       # "200", "429", ..., or an exception name
    inputs: int
    tokens: int
    usage_tokens: int | None
    stages: dict[str, float] | None = None   # gigarouter's x-<stage>-time headers, in ms


@dataclass
class LoadResult:
    concurrency: int
    inputs_per_request: int
    wall_seconds: float
    samples: list[Sample] = field(repr=False)
    server_cpu_seconds: float | None = None
    client_cpu_seconds: float | None = None

    @property
    def ok(self) -> list[Sample]:
        return [s for s in self.samples if s.status == "200"]

    @property
    def errors(self) -> dict[str, int]:
        return dict(Counter(s.status for s in self.samples if s.status != "200"))

    def to_dict(self) -> dict:
        ok = self.ok
        lat = np.array([s.latency for s in ok]) * 1000 if ok else np.array([np.nan])
        inputs = sum(s.inputs for s in ok)
        tokens = sum(s.tokens for s in ok)
        usage = sum(s.usage_tokens or 0 for s in ok)
        wall = max(self.wall_seconds, 1e-9)
        return {
            "concurrency": self.concurrency, "inputs_per_request": self.inputs_per_request,
            "wall_seconds": self.wall_seconds, "requests": len(self.samples), "ok_requests": len(ok),
            "errors": self.errors, "inputs": inputs, "tokens": tokens, "usage_tokens": usage,
            "inputs_per_s": inputs / wall, "tokens_per_s": tokens / wall, "usage_tokens_per_s": usage / wall,
            "latency_ms": {"p50": float(np.percentile(lat, 50)), "p90": float(np.percentile(lat, 90)),
                           "p99": float(np.percentile(lat, 99)), "mean": float(lat.mean()),
                           "max": float(lat.max())},
            "stages_ms_mean": _stage_means(ok),
            "server_cpu_seconds": self.server_cpu_seconds, "client_cpu_seconds": self.client_cpu_seconds,
            "server_cpu_ms_per_input": (1000 * self.server_cpu_seconds / inputs
                                        if self.server_cpu_seconds is not None and inputs else None),
        }


def _stage_means(samples: Sequence[Sample]) -> dict[str, float] | None:
    """Mean server-side stage times (tokenize, queue, inference) and what is left of the latency."""
    staged = [s for s in samples if s.stages]
    if not staged:
        return None
    names = sorted({k for s in staged for k in s.stages})
    means = {k: float(np.mean([s.stages.get(k, 0.0) for s in staged])) for k in names}
    means["other"] = float(np.mean([1000 * s.latency - sum(s.stages.values()) for s in staged]))
    return means


def _stages(headers: httpx.Headers) -> dict[str, float] | None:
    out = {}
    for stage in STAGES:
        value = headers.get(f"x-{stage}-time")
        if value is not None:
            try:
                out[stage] = float(value)
            except ValueError:
                pass
    return out or None


def make_client(concurrency: int, *, timeout: float = 120.0) -> httpx.AsyncClient:
    limits = httpx.Limits(max_connections=concurrency + 2, max_keepalive_connections=concurrency + 2)
    return httpx.AsyncClient(limits=limits, timeout=httpx.Timeout(timeout), trust_env=False)


async def resolve_path(client: httpx.AsyncClient, target: Target) -> Target:
    """Find which embeddings path the server answers (gigarouter: /v1/embeddings; infinity: /embeddings)."""
    if target.path != "auto":
        return target
    for path in PATHS:
        r = await client.post(target.url + path, json={"model": target.model, "input": ["ping"]})
        if r.status_code not in (404, 405):
            return Target(target.url, target.model, path, target.encoding_format)
    raise RuntimeError(f"{target.url} answers neither {' nor '.join(PATHS)}")


async def send(client: httpx.AsyncClient, target: Target, request: Request) -> Sample:
    body = {"model": target.model, "input": list(request.texts), "encoding_format": target.encoding_format}
    t0 = time.perf_counter()
    try:
        r = await client.post(target.url + target.path, content=orjson.dumps(body),
                              headers={"content-type": "application/json"})
    except httpx.HTTPError as exc:
        return Sample(time.perf_counter() - t0, type(exc).__name__, len(request.texts), request.tokens, None)
    latency = time.perf_counter() - t0
    if r.status_code != 200:
        return Sample(latency, str(r.status_code), len(request.texts), request.tokens, None)
    try:
        payload = orjson.loads(r.content)
        data, usage = payload["data"], payload.get("usage") or {}
    except (orjson.JSONDecodeError, KeyError, TypeError):
        return Sample(latency, "bad_response", len(request.texts), request.tokens, None)
    if len(data) != len(request.texts):
        return Sample(latency, "bad_response", len(request.texts), request.tokens, None)
    return Sample(latency, "200", len(request.texts), request.tokens, usage.get("prompt_tokens"), _stages(r.headers))


async def run_load(target: Target, requests: Sequence[Request], *, concurrency: int, duration: float,
                   max_requests: int | None = None, warmup_requests: int | None = None,
                   client: httpx.AsyncClient | None = None, backoff: float = 0.05,
                   server_pid: int | None = None) -> LoadResult:
    """One closed-loop run; see the module docstring. ``requests`` are cycled in order."""
    from gigarouter.bench.machine import cpu_seconds

    own = client is None
    client = client or make_client(concurrency)
    try:
        target = await resolve_path(client, target)
        feed = itertools.cycle(requests)
        # Warm-up: open every connection for small requests; one or two bulk requests are enough.
        per_request = max((len(r.texts) for r in requests), default=1)
        warm = min(concurrency, max(1, 64 // per_request)) if warmup_requests is None else warmup_requests
        await asyncio.gather(*(send(client, target, next(feed)) for _ in range(warm)))
        samples: list[Sample] = []
        issued = 0
        cpu0 = cpu_seconds(server_pid) if server_pid else None
        client0 = time.process_time()
        start = time.perf_counter()
        deadline = start + duration

        async def worker() -> None:
            nonlocal issued
            while time.perf_counter() < deadline and (max_requests is None or issued < max_requests):
                issued += 1
                sample = await send(client, target, next(feed))
                samples.append(sample)
                if sample.status == "429":      # back off briefly instead of spinning on a full queue
                    await asyncio.sleep(backoff)

        await asyncio.gather(*(worker() for _ in range(concurrency)))
        wall = time.perf_counter() - start
        client_cpu = time.process_time() - client0
        cpu1 = cpu_seconds(server_pid) if server_pid else None
    finally:
        if own:
            await client.aclose()
    inputs_per_request = max((len(r.texts) for r in requests), default=0)
    return LoadResult(concurrency=concurrency, inputs_per_request=inputs_per_request, wall_seconds=wall,
                      samples=samples, client_cpu_seconds=client_cpu,
                      server_cpu_seconds=(cpu1 - cpu0) if cpu0 is not None and cpu1 is not None else None)


async def run_paired(targets: Sequence[Target], requests: Sequence[Request], *, duration: float,
                     max_rounds: int | None = None, server_pids: Sequence[int | None] | None = None
                     ) -> list[LoadResult]:
    """Concurrency 1 against several servers at once, alternating request by request.

    Round i sends request i to every target in turn (the order flips every
    round), so a burst of noise from a neighbour lands on all targets alike.
    Each target's ``wall_seconds`` is the sum of its own request latencies:
    its throughput is what a lone client at concurrency 1 would see.
    """
    from gigarouter.bench.machine import cpu_seconds

    pids = list(server_pids or [None] * len(targets))
    async with make_client(1) as client:
        targets = [await resolve_path(client, t) for t in targets]
        for t in targets:
            await send(client, t, requests[0])
        samples: list[list[Sample]] = [[] for _ in targets]
        cpu0 = [cpu_seconds(p) if p else None for p in pids]
        deadline = time.perf_counter() + duration
        i = 0
        while time.perf_counter() < deadline and (max_rounds is None or i < max_rounds):
            order = range(len(targets)) if i % 2 == 0 else reversed(range(len(targets)))
            for k in order:
                samples[k].append(await send(client, targets[k], requests[i % len(requests)]))
            i += 1
        cpu1 = [cpu_seconds(p) if p else None for p in pids]
    per_request = max((len(r.texts) for r in requests), default=0)
    return [LoadResult(concurrency=1, inputs_per_request=per_request, wall_seconds=sum(x.latency for x in s),
                       samples=s, server_cpu_seconds=(b - a) if a is not None and b is not None else None)
            for s, a, b in zip(samples, cpu0, cpu1, strict=True)]
