"""The first GPU run: one command that checks, end to end, what a CPU cannot.

    PYTHONPATH=src python3 -m gigarouter.bench.gpu_first_run --out first-gpu-run.json
    PYTHONPATH=src python3 -m gigarouter.bench.gpu_first_run --tiny --device cpu     # the same code, anywhere

On one H100/H200 it takes a few minutes (under 10). It builds Mistral-7B-shaped
models with random weights directly on the device (no download, no checkpoint
on disk) and reports, in order:

1. attention: the path ``select_attention`` chose at start-up, why, and which
   path every pass afterwards actually ran (``attention.PATH_CALLS``); the
   intended path is varlen on CUDA, grid on CPU;
2. fidelity: bf16 against fp32 on the same weights, causal + last token (e5,
   Linq, SFR) and bidirectional + mean (LLM2Vec), sequences of 1 to 4096 tokens
   packed in one batch; the packed batch against its sequences one by one, and
   the chosen path against the grid path;
3. determinism and syncs: the same batch twice gives the same bits, and a pass
   (forward and pooling) runs under ``torch.cuda.set_sync_debug_mode("error")``,
   i.e. never waits for the device before the vectors are read back;
4. the token budget: what free memory allows (the old default) and what the
   start-up calibration picks (throughput knee, 250 ms bound), with its sweep;
5. readiness during a bulk batch: while one batch at the old memory budget runs
   on the device thread, the event loop calls ``engine.health()`` (what
   ``/ready`` calls) every 20 ms: its latency, the loop's own lag, and, once,
   what the old health check (``torch.cuda.synchronize`` on the loop) cost;
6. throughput: tokens/s at 512-token documents, ours and Hugging Face
   transformers' ``MistralModel`` (sdpa, same weights, same batches), each as a
   fraction of the bf16 matmul rate measured with CUDA events in the same run;
7. query latency: a 16-token query at a time through the scheduler, idle and
   while 4 bulk clients keep 32 x 512-token documents each in flight.

The JSON (``--out``) has every number; a table is printed last. The exit status
is 1 when a check fails (wrong attention path, fidelity or determinism below its
bar, a sync inside a pass, a slow health call), after the JSON is written.

It imports only what the GPU image has (torch, numpy, transformers, tokenizers,
prometheus_client): not the web stack, not the settings module.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import platform
import time
from collections import Counter
from pathlib import Path

import numpy as np
import torch

from gigarouter.bench import gpu_fidelity
from gigarouter.bench.engine import measure_interleaved, prepare, result_row
from gigarouter.bench.machine import matmul_rate
from gigarouter.bench.shapes import BenchModel
from gigarouter.engine.base import pack
from gigarouter.engine.models import attention
from gigarouter.engine.models.mistral import MistralConfig, MistralModel
from gigarouter.engine.runner import TorchEngine, budget_from_memory
from gigarouter.pooling.pooling import PoolingMode

# The bars a run must clear (bf16 on a 32-layer random-weight model; fp32 is the reference).
BARS = {"bf16_vs_fp32_min_cosine": 0.99, "batch_vs_one_by_one_min_cosine": 0.999,
        "chosen_vs_grid_min_cosine": 0.99, "health_call_max_ms": 10.0}


class Shape:
    """The sizes of one run: Mistral-7B's, or a 2-layer model of the same family (``--tiny``)."""

    def __init__(self, tiny: bool) -> None:
        self.raw = gpu_fidelity.TINY if tiny else gpu_fidelity.MISTRAL_7B
        self.max_len = 32 if tiny else 4096
        self.lengths = (1, 7, 32) if tiny else gpu_fidelity.LENGTHS
        self.doc_len = 16 if tiny else 512
        self.query_len = 4 if tiny else 16
        self.calibration_budgets = (64, 128, 256) if tiny else None   # None: runner.GPU_CALIBRATION_BUDGETS
        self.memory_ceiling = 256 if tiny else 262_144


def random_weights(cfg: MistralConfig, device: torch.device, *, seed: int = 0) -> dict[str, torch.Tensor]:
    """bf16 weights in our parameter names: std 0.02 matrices, norms near 1 (as gpu_fidelity writes them)."""
    with torch.device("meta"):
        shapes = {name: p.shape for name, p in MistralModel(cfg).named_parameters()}
    g = torch.Generator(device=device).manual_seed(seed)
    out = {}
    for name, shape in shapes.items():
        t = torch.randn(shape, generator=g, device=device, dtype=torch.float32)
        out[name] = (t * 0.02 if len(shape) > 1 else 1.0 + t * 0.1).to(torch.bfloat16)
    return out


def model_on(cfg: MistralConfig, weights: dict[str, torch.Tensor], *, causal: bool) -> MistralModel:
    """A model sharing ``weights`` (no copy): e5 and LLM2Vec differ only in the causal switch."""
    with torch.device("meta"):
        model = MistralModel(cfg.with_causal(causal))
    model.load_state_dict(weights, assign=True)
    return model.eval().requires_grad_(False)


def env_info(device: torch.device) -> dict:
    kernel = attention._VARLEN
    info = {"torch": torch.__version__, "python": platform.python_version(), "device": str(device),
            "varlen_attn": None if kernel is None else {"window_size": kernel.window, "enable_gqa": kernel.gqa}}
    try:
        import transformers
        info["transformers"] = transformers.__version__
    except ImportError:
        info["transformers"] = None
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info.update(gpu=props.name, gpu_memory_bytes=props.total_memory, capability=f"{props.major}.{props.minor}",
                    multiprocessors=props.multi_processor_count)
    return info


# -- 2. fidelity -----------------------------------------------------------------------------

def fidelity(cfg: MistralConfig, weights: dict, device: torch.device, shape: Shape, path: str) -> list[dict]:
    seqs = gpu_fidelity.sequences(cfg.vocab_size, shape.lengths)
    full = {k: v.float() for k, v in weights.items()}       # the fp32 reference: the same weights, upcast
    rows = []
    for recipe, causal, pooling in (("e5", True, PoolingMode.LAST), ("llm2vec", False, PoolingMode.MEAN)):
        low = model_on(cfg, weights, causal=causal)
        low.attention_path = path
        runs = gpu_fidelity.low_precision_runs(low, pooling, seqs, device)
        high = model_on(cfg, full, causal=causal)      # fp32: the grid path (the varlen kernel is fp16/bf16)
        reference = gpu_fidelity.embed(high, pooling, seqs, device)
        rows.append(gpu_fidelity.runs_row(recipe, pooling, seqs, runs, reference, expect_path=path))
        del low, high
    del full
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return rows


# -- 3. determinism and syncs ----------------------------------------------------------------

def determinism(engines: dict[str, TorchEngine], shape: Shape) -> dict:
    batch = pack([engines["e5"]._token_ids(n, 7 + i) for i, n in enumerate((shape.max_len // 2, 17, 3, 1))])
    out = {}
    for name, engine in engines.items():
        runs = [engine.embed(batch) for _ in range(3)]
        out[name] = all(np.array_equal(runs[0].view(np.int32), r.view(np.int32)) for r in runs[1:])
    return out


def sync_check(engine: TorchEngine, shape: Shape) -> dict:
    """A pass under set_sync_debug_mode("error"): any op that waits for the device raises."""
    if engine.device.type != "cuda":
        return {"checked": False, "reason": "CUDA only"}
    batch = pack([engine._token_ids(n, 3 + i) for i, n in enumerate((shape.max_len, 300, 17, 1))])
    engine.embed(batch)                                  # warm: caches, kernels
    torch.cuda.synchronize(engine.device)
    error = None
    torch.cuda.set_sync_debug_mode("error")
    try:
        with torch.inference_mode():
            pooled = engine._forward(batch)
    except RuntimeError as exc:
        error, pooled = f"{type(exc).__name__}: {exc}", None
    finally:
        torch.cuda.set_sync_debug_mode(0)
    if pooled is not None:
        pooled.cpu()
    return {"checked": True, "ok": error is None, "error": error}


# -- 5. readiness while a bulk batch runs -------------------------------------------------------

async def _ready_during_bulk(engine: TorchEngine, budget: int, shape: Shape) -> dict:
    from gigarouter.recipes.base import PreparedInput
    from gigarouter.scheduler.queue import Scheduler

    sched = Scheduler(engine, model="first-run", token_budget=budget, max_queued_tokens=4 * budget)
    sched.start()
    docs = [PreparedInput(engine._token_ids(shape.doc_len, i), 0) for i in range(max(1, budget // shape.doc_len))]
    started = time.perf_counter()
    job = await sched.submit(docs, interactive=False)
    health_ms, lag_ms, old_health_ms = [], [], None
    while not job.future.done():
        t0 = time.perf_counter()
        healthy = engine.health()
        health_ms.append((time.perf_counter() - t0) * 1000)
        if not healthy:
            break
        t0 = time.perf_counter()
        await asyncio.sleep(0.02)
        lag_ms.append((time.perf_counter() - t0 - 0.02) * 1000)
        if old_health_ms is None and engine.device.type == "cuda" and len(health_ms) == 10:
            t0 = time.perf_counter()
            torch.cuda.synchronize(engine.device)        # what /ready did before: it blocks the loop
            old_health_ms = (time.perf_counter() - t0) * 1000
    await job.future
    batch_s = time.perf_counter() - started
    await sched.stop()
    return {"bulk_tokens": sum(len(d.token_ids) for d in docs), "bulk_seconds": batch_s,
            "health_calls": len(health_ms), "health_ms_p50": _pct(health_ms, 50),
            "health_ms_max": max(health_ms, default=0.0),
            "loop_lag_ms_p50": _pct(lag_ms, 50), "loop_lag_ms_max": max(lag_ms, default=0.0),
            "old_health_synchronize_ms": old_health_ms}


# -- 6. throughput against transformers --------------------------------------------------------

def throughput(engine: TorchEngine, shape: Shape, *, budget: int, min_seconds: float) -> dict:
    from gigarouter.bench.corpus import random_sequences
    from gigarouter.bench.hf_ref import _agreement, _PaddedRunner, _Twin, transformers_twin

    model = engine.model
    cfg = model.config
    bm = BenchModel(shape="mistral-7b", engine=engine, model=model, vocab_size=cfg.vocab_size,
                    max_seq_len=shape.max_len, layers=cfg.num_hidden_layers,
                    attn_width=cfg.num_attention_heads * cfg.head_dim, causal=cfg.causal,
                    window=model.attention_window, dtype=next(model.parameters()).dtype)
    n = max(1, budget // shape.doc_len)
    seqs = random_sequences([shape.doc_len] * (4 * n), vocab_size=cfg.vocab_size, seed=3)
    dev, dtype = str(engine.device), str(bm.dtype).removeprefix("torch.")
    peak = matmul_rate(device=dev, dtype=dtype, sizes=(1024,) if engine.device.type == "cpu" else None)
    runner = _PaddedRunner(transformers_twin(bm), engine.device)
    twin = _Twin(bm, runner)
    ours, theirs = (prepare(seqs, name=f"fixed-{shape.doc_len}", token_budget=budget) for _ in range(2))
    best = measure_interleaved([(bm, ours), (twin, theirs)], min_seconds=min_seconds,
                               matmul=lambda: matmul_rate(device=dev, dtype=dtype, repeats=1,
                                                          sizes=(peak["best_size"],))["best_flops"])
    peak_flops = max(peak["best_flops"], best)
    rows = {name: result_row(b, w, peak_flops=peak_flops) for name, b, w in (("ours", bm, ours),
                                                                            ("transformers", twin, theirs))}
    keep = ("tokens_per_s", "fraction_of_matmul_peak", "achieved_flops", "flops_per_token", "padding_fraction",
            "batch_ms_p50", "passes", "bytes_per_token")
    return {"doc_len": shape.doc_len, "token_budget": budget, "matmul": peak | {"best_flops": peak_flops},
            **{name: {k: row[k] for k in keep} for name, row in rows.items()},
            "ratio": rows["ours"]["tokens_per_s"] / rows["transformers"]["tokens_per_s"],
            "last_token_agreement": _agreement(bm, runner, seqs, token_budget=budget)}


# -- 7. a query at a time under saturated bulk --------------------------------------------------

async def _query_latency(engine: TorchEngine, budget: int, shape: Shape, *, idle_s: float, loaded_s: float,
                         bulk_clients: int = 4, docs_per_request: int = 32) -> dict:
    from gigarouter.recipes.base import PreparedInput
    from gigarouter.scheduler.queue import Scheduler

    sched = Scheduler(engine, model="first-run", token_budget=budget, max_queued_tokens=1 << 30)
    sched.start()
    queries = [PreparedInput(engine._token_ids(shape.query_len, 500 + i), 0) for i in range(32)]
    docs = [PreparedInput(engine._token_ids(shape.doc_len, 900 + i), 0) for i in range(docs_per_request)]

    async def probe(seconds: float) -> list[float]:
        out, i, deadline = [], 0, time.perf_counter() + seconds
        while time.perf_counter() < deadline:
            t0 = time.perf_counter()
            job = await sched.submit([queries[i % len(queries)]], interactive=True)
            await job.future
            out.append((time.perf_counter() - t0) * 1000)
            i += 1
        return out

    stop, bulk_tokens = asyncio.Event(), [0]

    async def bulk_client() -> None:
        while not stop.is_set():
            job = await sched.submit(docs, interactive=False)
            await job.future
            bulk_tokens[0] += docs_per_request * shape.doc_len

    idle = await probe(idle_s)
    clients = [asyncio.create_task(bulk_client()) for _ in range(bulk_clients)]
    await asyncio.sleep(min(2.0, loaded_s / 4))                     # let the bulk lane fill
    counted_from, tokens_from = time.perf_counter(), bulk_tokens[0]
    loaded = await probe(loaded_s)
    # A bulk request may outlast a short probe (tiny shapes on a busy CPU): count until one ends.
    give_up = time.perf_counter() + 60
    while bulk_tokens[0] == tokens_from and time.perf_counter() < give_up:
        await asyncio.sleep(0.01)
    bulk_rate = (bulk_tokens[0] - tokens_from) / (time.perf_counter() - counted_from)
    stop.set()
    await asyncio.gather(*clients)
    await sched.stop()
    return {"query_tokens": shape.query_len, "bulk_clients": bulk_clients, "docs_per_request": docs_per_request,
            "idle": _summary(idle), "loaded": _summary(loaded), "bulk_tokens_per_s_meanwhile": bulk_rate}


def _pct(values, q) -> float | None:
    return float(np.percentile(values, q)) if values else None


def _summary(ms: list[float]) -> dict:
    return {"n": len(ms), "p50_ms": _pct(ms, 50), "p99_ms": _pct(ms, 99)}


# -- the run -----------------------------------------------------------------------------------

def run(*, tiny: bool, device: torch.device, seconds: float, attention_want: str = "auto", log=print) -> dict:
    shape = Shape(tiny)
    cfg = MistralConfig.from_hf(shape.raw)
    intended = attention.VARLEN if device.type == "cuda" else attention.GRID
    report: dict = {"env": env_info(device), "config": shape.raw, "intended_attention_path": intended, "bars": BARS,
                    "errors": {}}
    phases: dict[str, float] = {}
    t_all = time.perf_counter()

    def phase(name: str, fn, *args, **kwargs):
        """Run one part; an exception is recorded (a failure) and the run goes on with the next part."""
        phases[name] = time.perf_counter()
        log(f"[{phases[name] - t_all:6.1f} s] {name}")
        try:
            return fn(*args, **kwargs)
        except Exception as exc:
            report["errors"][name] = f"{type(exc).__name__}: {exc}"
            log(f"    {name} failed: {report['errors'][name]}")
            return None

    weights = phase("weights", random_weights, cfg, device)
    choice = phase("attention path", attention.select_attention, device, torch.bfloat16, max_seq_len=shape.max_len,
                   want=attention_want, **model_on(cfg, weights, causal=True).attention_shape())
    choice = choice or attention.AttentionChoice(attention.GRID, "selection failed")
    report["attention"] = {"path": choice.path, "reason": choice.reason}
    report["fidelity"] = phase("fidelity", fidelity, cfg, weights, device, shape, choice.path) or []

    def engines_for(memory_budget: int) -> dict[str, TorchEngine]:
        return {name: TorchEngine(model_on(cfg, weights, causal=causal), pooling=pooling, dim=cfg.hidden_size,
                                  device=device, token_budget=memory_budget, max_seq_len=shape.max_len,
                                  attention=choice)
                for name, causal, pooling in (("e5", True, PoolingMode.LAST), ("llm2vec", False, PoolingMode.MEAN))}

    free = torch.cuda.mem_get_info(device)[0] if device.type == "cuda" else None
    memory_budget = shape.memory_ceiling if free is None else budget_from_memory(
        free_bytes=free, hidden=cfg.hidden_size, intermediate=cfg.intermediate_size, dtype_bytes=2,
        max_seq_len=shape.max_len)
    engines = engines_for(memory_budget)
    engine = engines["e5"]
    before = Counter(attention.PATH_CALLS)
    phase("warm-up (full budget, mixed lengths, packed vs alone)", engine.warmup)
    memory_budget = engine.token_budget                   # what warm-up proved (halved on OOM)
    kwargs = {"budgets": shape.calibration_budgets} if shape.calibration_budgets else {}
    chosen = phase("calibration", engine.calibrate, seq_len=shape.doc_len, **kwargs) or memory_budget
    report["budget"] = {"memory_budget": memory_budget, "chosen": chosen, "max_batch_s": engine.max_batch_s,
                        "sweep": [vars(p) for p in engine.calibration]}
    report["determinism_same_bits"] = phase("determinism", determinism, engines, shape) or {}
    report["sync_check"] = phase("syncs", sync_check, engine, shape) or {"checked": False}
    report["ready_during_bulk"] = phase("ready during a bulk batch", lambda: asyncio.run(
        _ready_during_bulk(engine, memory_budget, shape)))
    report["throughput"] = phase("throughput against transformers", throughput, engine, shape, budget=chosen,
                                 min_seconds=seconds)
    report["query_latency"] = phase("query latency under bulk", lambda: asyncio.run(
        _query_latency(engine, chosen, shape, idle_s=seconds, loaded_s=2 * seconds)))
    report["engine_attention_calls"] = dict(attention.PATH_CALLS - before)
    phases["end"] = time.perf_counter()
    names = list(phases)
    report["phase_seconds"] = {a: phases[b] - phases[a] for a, b in zip(names, names[1:], strict=False)}
    report["total_seconds"] = time.perf_counter() - t_all
    report["failures"] = failures(report)
    return report


def failures(report: dict) -> list[str]:
    out = [f"{name}: {error}" for name, error in report["errors"].items()]
    intended = report["intended_attention_path"]
    if report["attention"]["path"] != intended:
        out.append(f"attention path {report['attention']['path']!r} chosen, not {intended!r}: "
                   f"{report['attention']['reason']}")
    ran = set(report["engine_attention_calls"])
    if ran != {intended}:
        out.append(f"passes ran {report['engine_attention_calls']}, not only {intended!r}")
    for row in report["fidelity"]:
        for key, bar in (("bf16_vs_fp32_cosine", "bf16_vs_fp32_min_cosine"),
                         ("batch_vs_one_by_one_cosine", "batch_vs_one_by_one_min_cosine"),
                         ("varlen_vs_grid_cosine", "chosen_vs_grid_min_cosine")):
            if min(row[key]) < BARS[bar]:
                out.append(f"{row['recipe']}: {key} min {min(row[key]):.6f} < {BARS[bar]}")
        if not row["path_ok"]:
            out.append(f"{row['recipe']}: fidelity batch ran {row['attention_calls']}")
    for name, same in report["determinism_same_bits"].items():
        if not same:
            out.append(f"{name}: the same batch gave different bits")
    sync = report["sync_check"]
    if sync.get("checked") and not sync["ok"]:
        out.append(f"a pass waits for the device: {sync['error']}")
    ready = report["ready_during_bulk"]
    if ready and ready["health_ms_max"] > BARS["health_call_max_ms"]:
        out.append(f"engine.health() took {ready['health_ms_max']:.1f} ms during a bulk batch")
    return out


def table(report: dict) -> str:
    lines = [f"device {report['env'].get('gpu', report['env']['device'])}, torch {report['env']['torch']}, "
             f"transformers {report['env']['transformers']}, {report['total_seconds']:.0f} s",
             f"attention path        {report['attention']['path']} (intended {report['intended_attention_path']}); "
             f"passes ran {report['engine_attention_calls']}"]
    for row in report["fidelity"]:
        lines.append(f"fidelity {row['recipe']:<8}     bf16 vs fp32 min cos {min(row['bf16_vs_fp32_cosine']):.6f}, "
                     f"batch vs alone {min(row['batch_vs_one_by_one_cosine']):.6f}, "
                     f"vs grid {min(row['varlen_vs_grid_cosine']):.6f}")
    lines.append(f"same bits on repeat   {report['determinism_same_bits']}; pass without device waits: "
                 f"{report['sync_check'].get('ok', 'n/a (CPU)')}")
    b = report["budget"]
    lines.append(f"token budget          {b['chosen']} (memory alone: {b['memory_budget']})")
    if (r := report["ready_during_bulk"]) is not None:
        lines.append(f"health during bulk    max {r['health_ms_max']:.3f} ms over {r['health_calls']} calls in a "
                     f"{r['bulk_seconds']:.1f} s batch of {r['bulk_tokens']} tokens; loop lag max "
                     f"{r['loop_lag_ms_max']:.1f} ms; old synchronize on the loop: "
                     f"{_ms(r['old_health_synchronize_ms'])}")
    if (t := report["throughput"]) is not None:
        lines.append(f"{t['doc_len']}-token docs       ours {t['ours']['tokens_per_s']:.0f} tokens/s "
                     f"({100 * t['ours']['fraction_of_matmul_peak']:.1f}% of matmul peak), transformers "
                     f"{t['transformers']['tokens_per_s']:.0f} "
                     f"({100 * t['transformers']['fraction_of_matmul_peak']:.1f}%), ratio {t['ratio']:.2f}x; "
                     f"peak {t['matmul']['best_flops'] / 1e12:.1f} TFLOP/s")
    if (q := report["query_latency"]) is not None:
        lines.append(f"query p50             idle {_ms(q['idle']['p50_ms'])}, under bulk {_ms(q['loaded']['p50_ms'])} "
                     f"(p99 {_ms(q['loaded']['p99_ms'])}), bulk {q['bulk_tokens_per_s_meanwhile']:.0f} tokens/s "
                     f"meanwhile")
    lines.append("FAILED: " + "; ".join(report["failures"]) if report["failures"] else "all checks passed")
    return "\n".join(lines)


def _ms(v) -> str:
    return "n/a" if v is None else f"{v:.1f} ms"


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tiny", action="store_true", help="a 2-layer model of the same family (any device)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--seconds", type=float, default=None,
                        help="timed seconds per throughput configuration and idle query phase (default 5; tiny 0.3)")
    parser.add_argument("--attention", default="auto", choices=("auto", *attention.PATHS))
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    seconds = args.seconds if args.seconds is not None else (0.3 if args.tiny else 5.0)
    report = run(tiny=args.tiny, device=torch.device(args.device), seconds=seconds, attention_want=args.attention,
                 log=lambda m: print(m, flush=True))
    if args.out:
        args.out.write_text(json.dumps(report, indent=2, default=str))
    print(table(report), flush=True)
    if report["failures"]:
        raise SystemExit(1)
    return report


if __name__ == "__main__":
    main()
