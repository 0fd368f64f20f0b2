"""The load generator against a real in-process server: counts add up, errors are counted, no timing claims."""

from __future__ import annotations

import asyncio
import threading

import httpx

from gigarouter.bench.corpus import TokenCounter, mixed_corpus
from gigarouter.bench.latency import query_latency_under_load
from gigarouter.bench.loadgen import Target, build_requests, resolve_path, run_load, run_paired
from gigarouter.engine.sources import embedded_model_dir
from gigarouter.settings import Settings
from tests.conftest import FakeEngine, fake_loader, live_server

MODEL = "all-minilm-l6-v2"


def _requests(n: int, per_request: int, seed: int = 0):
    corpus = mixed_corpus(n, seed=seed)
    counter = TokenCounter.for_model_dir(embedded_model_dir())
    return build_requests(corpus.texts, counter.counts(corpus.texts), inputs_per_request=per_request)


def _server_counter(base: str, name: str) -> float:
    text = httpx.get(f"{base}/metrics").text
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith(name) and not line.startswith("#"))


def test_build_requests_chunks_in_order_and_sums_tokens():
    reqs = build_requests(["a", "b", "c", "d", "e"], [1, 2, 3, 4, 5], inputs_per_request=2)
    assert [r.texts for r in reqs] == [("a", "b"), ("c", "d"), ("e",)]
    assert [r.tokens for r in reqs] == [3, 7, 5]


def test_counts_are_self_consistent_against_a_real_server():
    requests = _requests(64, 4)
    with live_server(loader=fake_loader(FakeEngine())) as base:
        before = _server_counter(base, "gigarouter_tokens_total")
        result = asyncio.run(run_load(Target(base, MODEL, "/v1/embeddings"), requests, concurrency=3,
                                      duration=30, max_requests=20, warmup_requests=0))
        served = _server_counter(base, "gigarouter_tokens_total") - before
    d = result.to_dict()
    assert d["requests"] == d["ok_requests"] == 20 and d["errors"] == {}
    sent = [requests[i % len(requests)] for i in range(20)]       # the feed is deterministic
    assert d["inputs"] == sum(len(r.texts) for r in sent) == 80
    assert d["tokens"] == sum(r.tokens for r in sent)
    assert d["usage_tokens"] == d["tokens"] == served             # client count == usage == server counter
    assert d["inputs_per_s"] * d["wall_seconds"] == d["inputs"]
    assert d["latency_ms"]["p50"] <= d["latency_ms"]["p99"] <= d["latency_ms"]["max"]
    assert set(d["stages_ms_mean"]) >= {"tokenize", "queue", "inference", "other"}


def test_429s_are_counted_as_errors_and_match_the_server():
    gate = threading.Event()
    engine = FakeEngine(gate=gate)
    requests = _requests(64, 8)
    # A small queue bound: with the device held, the second waiting request is refused.
    settings = Settings(max_queued_tokens=1)
    with live_server(settings, loader=fake_loader(engine)) as base:
        timer = threading.Timer(1.0, gate.set)
        timer.start()
        result = asyncio.run(run_load(Target(base, MODEL, "/v1/embeddings"), requests, concurrency=4,
                                      duration=30, max_requests=40, warmup_requests=0))
        timer.join()
        rejected = _server_counter(base, "gigarouter_rejected_requests_total")
    d = result.to_dict()
    assert d["requests"] == 40
    assert d["errors"].get("429", 0) > 0
    assert d["errors"]["429"] == rejected
    assert d["ok_requests"] + sum(d["errors"].values()) == d["requests"]
    ok = [s for s in result.samples if s.status == "200"]
    assert d["inputs"] == sum(s.inputs for s in ok) and d["usage_tokens"] == d["tokens"]


def test_transport_errors_are_counted_not_raised():
    requests = _requests(8, 1)
    result = asyncio.run(run_load(Target("http://127.0.0.1:9", MODEL, "/v1/embeddings"), requests,
                                  concurrency=2, duration=5, max_requests=4, warmup_requests=0, backoff=0))
    d = result.to_dict()
    assert d["ok_requests"] == 0 and d["inputs"] == 0
    assert sum(d["errors"].values()) == d["requests"] == 4
    assert "ConnectError" in d["errors"]


def test_path_is_probed_and_query_latency_runs_both_phases():
    counter = TokenCounter.for_model_dir(embedded_model_dir())
    with live_server(loader=fake_loader(FakeEngine())) as base:
        async def probe():
            async with httpx.AsyncClient() as client:
                return await resolve_path(client, Target(base, MODEL))
        assert asyncio.run(probe()).path == "/v1/embeddings"
        queries = build_requests(["what is a llama"], counter.counts(["what is a llama"]), inputs_per_request=1)
        result = asyncio.run(query_latency_under_load(Target(base, MODEL), queries=queries, bulk=_requests(64, 32),
                                                      bulk_concurrency=2, idle_seconds=0.3, loaded_seconds=0.5,
                                                      ramp_seconds=0.1, max_probes=5))
    assert 0 < result["idle"]["n"] <= 5 and 0 < result["loaded"]["n"] <= 5
    assert result["bulk"]["ok_requests"] > 0 and result["bulk"]["errors"] == {}
    assert result["query_tokens"] == counter.count("what is a llama")


def test_paired_run_alternates_servers_and_counts_each_alone():
    requests = _requests(16, 2)
    with live_server(loader=fake_loader(FakeEngine())) as a, live_server(loader=fake_loader(FakeEngine())) as b:
        results = asyncio.run(run_paired([Target(a, MODEL), Target(b, MODEL)], requests, duration=30, max_rounds=6))
    assert [len(r.samples) for r in results] == [6, 6]
    for r in results:
        d = r.to_dict()
        assert d["ok_requests"] == 6 and d["inputs"] == sum(len(requests[i].texts) for i in range(6))
        assert d["wall_seconds"] == sum(s.latency for s in r.samples)
        assert d["usage_tokens"] == d["tokens"]
