"""The comparison in one run: gigarouter vs infinity-emb served, and vs offline sentence-transformers.

Order of events (each step bounded; about 6 minutes on 2 CPU cores):

1. Offline, no server up: sentence-transformers ``encode``, our ``Embedder``
   and our engine on pre-tokenized inputs, interleaved (``offline.py``).
2. Both servers start (own processes, loopback, different ports) and stay up;
   their idle CPU use is sampled so one cannot tax the other unseen.
3. The load matrix: concurrency 1, 8 and 32 with one input per request, and
   bulk (32 inputs per request). Loads never overlap. Concurrency 1 alternates
   the servers request by request (A, B, B, A, ...), the finest interleaving
   there is; at higher concurrency each server gets its own closed-loop run,
   one after the other, the order alternating from cell to cell and round to
   round, so drift on a shared, noisy machine falls on both alike. Every run
   has a warm-up and a fixed duration.
4. Query latency: one 16-token query at a time, idle (servers alternating
   request by request), then under a saturating bulk load, each server in turn.
5. JSON, PNG plots and a markdown table with absolute numbers and ratios.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from gigarouter.bench import servers as srv
from gigarouter.bench.corpus import TokenCounter, length_summary, mixed_corpus, texts_with_tokens
from gigarouter.bench.latency import query_latency_under_load, summary
from gigarouter.bench.loadgen import Target, build_requests, run_load, run_paired
from gigarouter.bench.machine import cpu_seconds, machine_info, rss_bytes


@dataclass(frozen=True)
class Cell:
    label: str
    concurrency: int
    inputs_per_request: int


DEFAULT_CELLS = (Cell("c=1, 1 input", 1, 1), Cell("c=8, 1 input", 8, 1), Cell("c=32, 1 input", 32, 1),
                 Cell("bulk: c=4, 32 inputs", 4, 32))


@dataclass(frozen=True)
class CompareOptions:
    out_dir: Path
    infinity_bin: Path | None
    duration: float = 10.0
    rounds: int = 2
    corpus_size: int = 2048
    offline_size: int = 256
    offline_repeats: int = 2
    latency_idle: float = 6.0
    latency_loaded: float = 10.0
    cells: tuple[Cell, ...] = DEFAULT_CELLS
    gigarouter_port: int = 18000
    infinity_port: int = 17997
    extra_thread_variant: int | None = None    # also serve gigarouter with this many torch threads
    variants: tuple[tuple[str, Path], ...] = ()  # also serve gigarouter as NAME with this --config file
    openvino_python: Path | None = None     # also serve the OpenVINO peer (bench/openvino_peer.py) with this Python
    openvino_port: int = 17998
    seed: int = 0
    stem: str = "compare"


def run_compare(opts: CompareOptions, *, command: str = "", log=print) -> dict:
    from gigarouter.engine.sources import embedded_model_dir

    t_start = time.perf_counter()
    model_dir = embedded_model_dir()
    counter = TokenCounter.for_model_dir(model_dir)
    corpus = mixed_corpus(opts.corpus_size, seed=opts.seed)
    counts = counter.counts(corpus.texts)
    result: dict = {"kind": "compare", "command": command, "machine": machine_info(),
                    "corpus": {"name": corpus.name, "tokens": length_summary(counts),
                               "query_fraction": corpus.kinds.count("query") / len(corpus)},
                    "settings": {"duration_s": opts.duration, "rounds": opts.rounds,
                                 "cells": [c.__dict__ for c in opts.cells]}}

    n_off = min(opts.offline_size, len(corpus))
    if n_off > 0:
        from gigarouter.bench.offline import offline_throughput

        log("offline baselines (no server running)")
        result["offline"] = offline_throughput(corpus.texts[:n_off], sum(counts[:n_off]), model_dir=model_dir,
                                               repeats=opts.offline_repeats, log=log)

    specs = [srv.gigarouter_spec(opts.gigarouter_port)]
    if opts.infinity_bin:
        specs.append(srv.infinity_spec(opts.infinity_port, infinity_bin=opts.infinity_bin, model_dir=model_dir))
    if opts.openvino_python:
        specs.append(srv.openvino_spec(opts.openvino_port, python=opts.openvino_python, model_dir=model_dir))
    if opts.extra_thread_variant:
        n = opts.extra_thread_variant
        specs.append(srv.gigarouter_spec(opts.gigarouter_port + 1, name=f"gigarouter-{n}thread",
                                         env={"OMP_NUM_THREADS": str(n), "MKL_NUM_THREADS": str(n)}))
    for k, (name, config) in enumerate(opts.variants):
        specs.append(srv.gigarouter_spec(opts.gigarouter_port + 10 + k, name=name, config=config))
    result["server_names"] = [s.name for s in specs]
    log_dir = srv.default_log_dir()
    running: list[srv.RunningServer] = []
    try:
        for spec in specs:
            log(f"starting {spec.name}: {' '.join(spec.argv)}")
        running.extend(srv.start_all(specs, log_dir=log_dir))
        result["servers"] = {s.spec.name: _describe(s) for s in running}
        result["http"] = asyncio.run(_matrix(running, corpus.texts, counts, opts, log))
        result["latency"] = asyncio.run(_query_latency(running, corpus, counter, opts, log))
        for s in running:
            result["servers"][s.spec.name]["rss_mb_after"] = (rss_bytes(s.pid) or 0) / 2**20
    finally:
        for s in running:
            srv.stop(s)
    result["summary"] = summarize(result["http"], result["server_names"], opts.cells)
    result["goals"] = goals(result)
    result["elapsed_s"] = time.perf_counter() - t_start
    return result


def _describe(server: srv.RunningServer) -> dict:
    c0 = cpu_seconds(server.pid)
    time.sleep(2.0)
    c1 = cpu_seconds(server.pid)
    return {"argv": list(server.spec.argv), "env": server.spec.env, "url": server.spec.url,
            "embeddings_path": server.spec.embeddings_path, "startup_s": server.startup_seconds,
            "idle_cpu_percent": 100 * (c1 - c0) / 2.0 if c0 is not None and c1 is not None else None,
            "rss_mb_idle": (rss_bytes(server.pid) or 0) / 2**20}


def _target(s: srv.RunningServer) -> Target:
    return Target(s.spec.url, srv.SERVED_NAME, s.spec.embeddings_path)


async def _matrix(running: list[srv.RunningServer], texts, counts, opts: CompareOptions, log) -> list[dict]:
    """Every cell, every round. Concurrency 1 alternates servers request by request (``run_paired``);
    higher concurrency runs each server's closed loop in turn, the order alternating."""
    requests = {c.inputs_per_request: build_requests(texts, counts, inputs_per_request=c.inputs_per_request)
                for c in opts.cells}
    rows = []

    def record(name: str, rnd: int, cell: Cell, res) -> None:
        row = {"server": name, "round": rnd, "cell": cell.label, **res.to_dict()}
        log(f"  round {rnd} {cell.label:<22} {name:<20} {row['inputs_per_s']:8.1f} inputs/s "
            f"{row['tokens_per_s']:9.0f} tokens/s  p50 {row['latency_ms']['p50']:7.1f} ms "
            f"p99 {row['latency_ms']['p99']:7.1f} ms  errors {row['errors'] or 0}")
        rows.append(row)

    for rnd in range(opts.rounds):
        for k, cell in enumerate(opts.cells):
            reqs = requests[cell.inputs_per_request]
            if cell.concurrency == 1:
                results = await run_paired([_target(s) for s in running], reqs, duration=opts.duration,
                                           server_pids=[s.pid for s in running])
                for s, res in zip(running, results, strict=True):
                    record(s.spec.name, rnd, cell, res)
                continue
            for s in (running if (rnd + k) % 2 == 0 else running[::-1]):
                res = await run_load(_target(s), reqs, concurrency=cell.concurrency, duration=opts.duration,
                                     server_pid=s.pid)
                record(s.spec.name, rnd, cell, res)
    return rows


async def _query_latency(running: list[srv.RunningServer], corpus, counter, opts: CompareOptions, log) -> dict:
    """A 16-token query: idle (servers alternating request by request), then under bulk load, each in turn."""
    queries = texts_with_tokens(16, 32, counter.count, seed=opts.seed)
    query_reqs = build_requests(queries, counter.counts(queries), inputs_per_request=1)
    passages = list(corpus.of_kind("passage"))
    bulk = build_requests(passages, counter.counts(passages), inputs_per_request=32)
    idle = await run_paired([_target(s) for s in running], query_reqs, duration=opts.latency_idle)
    out = {}
    for s, idle_res in zip(running, idle, strict=True):
        log(f"query latency under bulk load: {s.spec.name}")
        res = await query_latency_under_load(_target(s), queries=query_reqs, bulk=bulk, bulk_concurrency=4,
                                             idle_seconds=0, loaded_seconds=opts.latency_loaded)
        res["idle"] = summary([x.latency for x in idle_res.ok])
        res["p50_slowdown"] = (res["loaded"]["p50_ms"] / res["idle"]["p50_ms"]
                               if res["loaded"]["n"] and res["idle"]["n"] else None)
        out[s.spec.name] = res
    return out


def summarize(rows: list[dict], names: list[str], cells) -> list[dict]:
    """Per cell and server: mean over rounds (and min/max), latency percentiles pooled over rounds."""
    out = []
    for cell in cells:
        entry = {"label": cell.label, "concurrency": cell.concurrency,
                 "inputs_per_request": cell.inputs_per_request, "servers": {}}
        for name in names:
            runs = [r for r in rows if r["cell"] == cell.label and r["server"] == name]
            if not runs:
                continue
            ips = [r["inputs_per_s"] for r in runs]
            cpu = [r["server_cpu_ms_per_input"] for r in runs if r["server_cpu_ms_per_input"] is not None]
            errors: dict[str, int] = {}
            for r in runs:
                for k, v in r["errors"].items():
                    errors[k] = errors.get(k, 0) + v
            entry["servers"][name] = {
                "inputs_per_s": float(np.mean(ips)), "inputs_per_s_min": min(ips), "inputs_per_s_max": max(ips),
                "tokens_per_s": float(np.mean([r["tokens_per_s"] for r in runs])),
                "usage_tokens_per_s": float(np.mean([r["usage_tokens_per_s"] for r in runs])),
                "p50_ms": float(np.mean([r["latency_ms"]["p50"] for r in runs])),
                "p99_ms": float(np.max([r["latency_ms"]["p99"] for r in runs])),
                "cpu_ms_per_input": float(np.mean(cpu)) if cpu else None,
                "requests": sum(r["requests"] for r in runs), "errors": errors, "rounds": len(runs)}
        out.append(entry)
    return out


def goals(result: dict) -> dict:
    """The issue's targets: served >= 3x infinity-emb and >= 1.3x offline sentence-transformers."""
    names = result["server_names"]
    if len(names) < 2 or names[1] != "infinity-emb" or not result.get("offline"):
        return {}
    ours, peer = names[0], names[1]
    st = result["offline"]["results"]["sentence-transformers"]["inputs_per_s"]
    best = max(result["summary"], key=lambda c: c["servers"][ours]["inputs_per_s"])
    per_cell = {c["label"]: {"vs_infinity": c["servers"][ours]["inputs_per_s"] / c["servers"][peer]["inputs_per_s"],
                             "vs_st_offline": c["servers"][ours]["inputs_per_s"] / st}
                for c in result["summary"] if peer in c["servers"]}
    best_vs_inf = best["servers"][ours]["inputs_per_s"] / max(c["servers"][peer]["inputs_per_s"]
                                                              for c in result["summary"])
    return {"per_cell": per_cell, "best_cell": best["label"],
            "best_served_vs_best_infinity": best_vs_inf,
            "best_served_vs_st_offline": best["servers"][ours]["inputs_per_s"] / st,
            "target_vs_infinity": 3.0, "target_vs_st_offline": 1.3}


