"""``gigarouter bench ...``: engine throughput, HTTP load, query latency and the full comparison.

Each command prints a markdown table and can write its JSON (and PNG plots)
under docs/benchmarks/; docs/benchmarks.md explains every column.
"""

from __future__ import annotations

import asyncio
import shlex
import sys
import tempfile
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

app = typer.Typer(help="Benchmarks: engine throughput, HTTP load, query latency, comparison with peers.",
                  no_args_is_help=True, add_completion=False, pretty_exceptions_show_locals=False,
                  rich_markup_mode=None)
console = Console(stderr=True)

OutOption = Annotated[Path | None, typer.Option("--out", "-o", help="Write the JSON result here.")]


def _ints(text: str | None) -> list[int] | None:
    if not text:
        return None
    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise typer.BadParameter(f"expected comma-separated integers, got {text!r}") from None


def _command() -> str:
    """The command line as typed, for the record in every result file."""
    args = sys.argv[1:]
    if args[:1] == ["bench"]:
        args = args[1:]
    return "gigarouter bench " + " ".join(shlex.quote(a) for a in args)


def _log(message: str) -> None:
    console.print(message, markup=False, highlight=False, soft_wrap=True)


@app.command()
def engine(
    model_shape: Annotated[str, typer.Option(help="minilm (the real default model), mistral-7b, mistral-tiny, "
                                                  "bert-tiny (random weights).")] = "minilm",
    device: Annotated[str, typer.Option(help="auto, cpu, cuda or cuda:N.")] = "auto",
    dtype: Annotated[str, typer.Option(help="auto (bf16 on GPU, fp32 on CPU), float32, bfloat16, float16.")] = "auto",
    lengths: Annotated[str | None, typer.Option(help="Fixed lengths, e.g. 16,128,256 (default per shape).")] = None,
    budgets: Annotated[str | None, typer.Option(help="Token budgets to sweep, e.g. 1024,4096,8192.")] = None,
    corpus_size: Annotated[int, typer.Option(help="Texts in the mixed corpus.")] = 256,
    min_seconds: Annotated[float, typer.Option(help="Minimum timed seconds per configuration.")] = 2.0,
    threads: Annotated[int | None, typer.Option(help="torch intra-op threads (default: torch's).")] = None,
    hf_compare: Annotated[bool | None, typer.Option(
        "--hf-compare/--no-hf-compare", help="Also run transformers' MistralModel (mistral shapes).")] = None,
    out: OutOption = None,
    plot: Annotated[Path | None, typer.Option(help="Write a PNG plot here.")] = None,
) -> None:
    """Offline engine throughput: mixed corpus, fixed lengths, token-budget sweep, % of matmul peak."""
    from gigarouter.bench import report
    from gigarouter.bench.engine import run_engine_bench

    result = run_engine_bench(model_shape, device=device, dtype=dtype, corpus_size=corpus_size,
                              lengths=_ints(lengths), budgets=_ints(budgets), min_seconds=min_seconds,
                              threads=threads, hf_compare=hf_compare, log=_log)
    result["command"] = _command()
    print(report.engine_markdown(result))
    print(f"\nMachine: {report.machine_line(result['machine'])}")
    if out:
        report.write_json(out, result)
    if plot:
        report.plot_engine(result, plot)


@app.command()
def http(
    url: Annotated[str, typer.Option(help="Server base URL (loopback).")] = "http://127.0.0.1:8000",
    model: Annotated[str, typer.Option("--model", "-m", help="Model name to send.")] = "all-minilm-l6-v2",
    concurrency: Annotated[str, typer.Option(help="Comma-separated concurrency levels.")] = "1,8,32",
    inputs_per_request: Annotated[int, typer.Option(help="Inputs per request (1 = interactive, 32 = bulk).")] = 1,
    duration: Annotated[float, typer.Option(help="Seconds per concurrency level (at most 60).")] = 10.0,
    max_requests: Annotated[int | None, typer.Option(help="Stop after this many requests per level.")] = None,
    path: Annotated[str, typer.Option(help="/v1/embeddings, /embeddings, or auto.")] = "auto",
    encoding_format: Annotated[str, typer.Option(help="float or base64.")] = "float",
    corpus_size: Annotated[int, typer.Option(help="Texts in the mixed corpus (cycled).")] = 2048,
    tokenizer_dir: Annotated[Path | None, typer.Option(help="Model dir whose tokenizer counts tokens "
                                                               "(default: the embedded default model).")] = None,
    out: OutOption = None,
) -> None:
    """Closed-loop HTTP load against any OpenAI-compatible embeddings server (gigarouter, infinity-emb, ...)."""
    from gigarouter.bench import report
    from gigarouter.bench.corpus import mixed_corpus
    from gigarouter.bench.loadgen import Target, build_requests, run_load
    from gigarouter.bench.machine import machine_info

    if not url.startswith(("http://127.", "http://localhost", "http://[::1]")):
        raise typer.BadParameter("the load generator drives loopback servers only", param_hint="--url")
    duration = min(duration, 60.0)
    counter = _counter(tokenizer_dir)
    corpus = mixed_corpus(corpus_size)
    requests = build_requests(corpus.texts, counter.counts(corpus.texts), inputs_per_request=inputs_per_request)
    target = Target(url.rstrip("/"), model, path, encoding_format)
    rows = []
    for c in _ints(concurrency) or [1]:
        res = asyncio.run(run_load(target, requests, concurrency=c, duration=duration, max_requests=max_requests))
        rows.append(res.to_dict())
        r = rows[-1]
        _log(f"c={c}: {r['inputs_per_s']:.1f} inputs/s, {r['tokens_per_s']:.0f} tokens/s, "
             f"p50 {r['latency_ms']['p50']:.1f} ms, p99 {r['latency_ms']['p99']:.1f} ms, errors {r['errors']}")
    print(report.table(["concurrency", "inputs/request", "inputs/s", "tokens/s", "usage tokens/s", "p50 ms",
                        "p99 ms", "requests", "errors"],
                       [(r["concurrency"], r["inputs_per_request"], r["inputs_per_s"], r["tokens_per_s"],
                         r["usage_tokens_per_s"], r["latency_ms"]["p50"], r["latency_ms"]["p99"], r["requests"],
                         report.errors_text(r["errors"])) for r in rows]))
    result = {"kind": "http", "command": _command(), "machine": machine_info(), "url": url, "model": model,
              "corpus": corpus.name, "runs": rows}
    print(f"\nMachine: {report.machine_line(result['machine'])}")
    if out:
        report.write_json(out, result)


@app.command("query-latency")
def query_latency(
    url: Annotated[str, typer.Option(help="Server base URL (loopback).")] = "http://127.0.0.1:8000",
    model: Annotated[str, typer.Option("--model", "-m")] = "all-minilm-l6-v2",
    bulk_concurrency: Annotated[int, typer.Option(help="Concurrent bulk requests (32 passages each).")] = 4,
    idle_seconds: Annotated[float, typer.Option()] = 6.0,
    loaded_seconds: Annotated[float, typer.Option()] = 10.0,
    path: Annotated[str, typer.Option(help="/v1/embeddings, /embeddings, or auto.")] = "auto",
    out: OutOption = None,
) -> None:
    """p50/p99 of a single 16-token query, idle vs while a bulk load saturates the server."""
    from gigarouter.bench import report
    from gigarouter.bench.corpus import mixed_corpus, texts_with_tokens
    from gigarouter.bench.latency import query_latency_under_load
    from gigarouter.bench.loadgen import Target, build_requests
    from gigarouter.bench.machine import machine_info

    counter = _counter(None)
    queries = texts_with_tokens(16, 32, counter.count)
    passages = list(mixed_corpus(2048).of_kind("passage"))
    result = asyncio.run(query_latency_under_load(
        Target(url.rstrip("/"), model, path),
        queries=build_requests(queries, counter.counts(queries), inputs_per_request=1),
        bulk=build_requests(passages, counter.counts(passages), inputs_per_request=32),
        bulk_concurrency=bulk_concurrency, idle_seconds=idle_seconds, loaded_seconds=loaded_seconds))
    result.update(kind="query-latency", command=_command(), machine=machine_info(), url=url)
    print(report.table(["phase", "n", "p50 ms", "p90 ms", "p99 ms"],
                       [(p, result[p]["n"], result[p]["p50_ms"], result[p]["p90_ms"], result[p]["p99_ms"])
                        for p in ("idle", "loaded")]))
    if out:
        report.write_json(out, result)


@app.command("cpu-precision")
def cpu_precision(
    out: Annotated[Path | None, typer.Option(help="Write the JSON here.")] = None,
    texts: Annotated[int, typer.Option(help="Texts of the bench corpus each engine encodes per round.")] = 1500,
    rounds: Annotated[int, typer.Option(help="Interleaved rounds (median reported).")] = 3,
    fidelity_texts: Annotated[int, typer.Option(help="Vectors compared with sentence-transformers fp32.")] = 200,
    openvino_python: Annotated[Path | None, typer.Option(help="Python of the OpenVINO peer's venv.")] = None,
    time_emulated_bf16: Annotated[bool, typer.Option(help="Time bf16 rows even where the CPU emulates bf16.")] = False,
) -> None:
    """Issue 18's table: our precisions vs sentence-transformers on torch and OpenVINO, offline, plus matmul peaks."""
    from gigarouter.bench import report
    from gigarouter.bench.cpu_precision import markdown, run_cpu_precision

    result = run_cpu_precision(texts=texts, rounds=rounds, fidelity_texts=fidelity_texts,
                               openvino_python=openvino_python, time_emulated_bf16=time_emulated_bf16, log=_log)
    result["command"] = _command()
    print(markdown(result))
    print(f"\nMachine: {report.machine_line(result['machine'])}")
    if out:
        report.write_json(out, result)


@app.command()
def compare(
    out_dir: Annotated[Path, typer.Option(help="Where JSON and PNG files go.")] = Path("docs/benchmarks"),
    infinity_bin: Annotated[Path | None, typer.Option(help="infinity_emb executable (its own venv); "
                                                              "default: on PATH or /tmp/infinity-venv.")] = None,
    no_infinity: Annotated[bool, typer.Option("--no-infinity", help="Skip infinity-emb.")] = False,
    duration: Annotated[float, typer.Option(help="Seconds per load run (at most 20).")] = 10.0,
    rounds: Annotated[int, typer.Option(help="Rounds of the whole matrix (order alternates).")] = 2,
    offline_size: Annotated[int, typer.Option(help="Texts in the offline comparison.")] = 256,
    latency_seconds: Annotated[float, typer.Option(help="Seconds of query-latency probing per phase.")] = 10.0,
    thread_variant: Annotated[int | None, typer.Option(help="Also serve gigarouter with N torch threads.")] = None,
    variant: Annotated[list[str] | None, typer.Option(help="Also serve gigarouter as NAME=CONFIG.toml "
                                                               "(repeatable), e.g. budget2048=cfg.toml.")] = None,
    stem: Annotated[str, typer.Option(help="File name stem for outputs.")] = "compare",
    openvino_python: Annotated[Path | None, typer.Option(help="Also serve the OpenVINO peer (bench/openvino_peer.py) "
                                                                "with this Python (its own venv).")] = None,
) -> None:
    """gigarouter vs infinity-emb (served) vs sentence-transformers (offline), one run, interleaved."""
    from gigarouter.bench import report, servers
    from gigarouter.bench.compare import CompareOptions, run_compare

    inf = None if no_infinity else (infinity_bin or servers.default_infinity_bin())
    if not no_infinity and inf is None:
        raise typer.BadParameter("infinity_emb not found; pass --infinity-bin or --no-infinity "
                                 "(docs/benchmarks.md shows how to install it)", param_hint="--infinity-bin")
    variants = []
    for v in variant or []:
        name, sep, path = v.partition("=")
        if not sep or not Path(path).is_file():
            raise typer.BadParameter(f"expected NAME=CONFIG.toml with an existing file, got {v!r}",
                                     param_hint="--variant")
        variants.append((f"gigarouter-{name}", Path(path)))
    opts = CompareOptions(out_dir=out_dir, infinity_bin=inf, duration=min(duration, 20.0), rounds=rounds,
                          variants=tuple(variants), openvino_python=openvino_python,
                          offline_size=offline_size, extra_thread_variant=thread_variant, stem=stem,
                          latency_idle=min(latency_seconds, 20.0), latency_loaded=min(latency_seconds, 20.0))
    result = run_compare(opts, command=_command(), log=_log)
    report.write_json(out_dir / f"{stem}.json", result)
    plots = report.plot_compare(result, out_dir, stem)
    print(report.compare_markdown(result))
    print(f"\nMachine: {report.machine_line(result['machine'])}")
    _log(f"wrote {out_dir / (stem + '.json')} and {', '.join(str(p) for p in plots)}")


@app.command()
def gateway(
    litellm: Annotated[Path | None, typer.Option(help="LiteLLM's `litellm` executable (its own venv); "
                                                         "default: /tmp/litellm-venv/bin/litellm if present.")] = None,
    no_litellm: Annotated[bool, typer.Option("--no-litellm", help="Measure direct vs gigarouter only.")] = False,
    rounds: Annotated[int, typer.Option(help="Rounds; the target order rotates from round to round.")] = 4,
    seconds: Annotated[float, typer.Option(help="Seconds per wrk run (at most 30).")] = 6.0,
    concurrency: Annotated[int, typer.Option(help="Connections of the saturating run.")] = 32,
    encoding_format: Annotated[str, typer.Option(help="float or base64: what the client asks for.")] = "float",
    port: Annotated[int, typer.Option(help="Upstream port; the gateway takes +1, LiteLLM +2.")] = 18400,
    out: OutOption = None,
) -> None:
    """The gateway's added latency and throughput ceiling in front of a fast upstream, vs direct and LiteLLM (wrk)."""
    import shutil

    from gigarouter.bench import report
    from gigarouter.bench.gateway import GatewayOptions, run_gateway_bench

    if shutil.which("wrk") is None:
        raise typer.BadParameter("wrk not found (Debian: apt-get install -y wrk)")
    if encoding_format not in ("float", "base64"):
        raise typer.BadParameter("float or base64", param_hint="--encoding-format")
    default = Path("/tmp/litellm-venv/bin/litellm")
    bin_ = None if no_litellm else (litellm or (default if default.exists() else shutil.which("litellm")))
    if not no_litellm and bin_ is None:
        raise typer.BadParameter("litellm not found; pass --litellm or --no-litellm "
                                 "(docs/benchmarks.md shows how to install it)", param_hint="--litellm")
    opts = GatewayOptions(litellm_bin=Path(bin_) if bin_ else None, rounds=max(1, rounds),
                          seconds=min(seconds, 30.0), concurrency=concurrency, encoding_format=encoding_format,
                          base_port=port)
    result = run_gateway_bench(opts, command=_command(), log=_log)
    _finish(result, report.gateway_markdown(result), out)


@app.command()
def ray(
    rounds: Annotated[int, typer.Option(help="Rounds; the target order rotates from round to round.")] = 3,
    seconds: Annotated[float, typer.Option(help="Seconds per throughput run (at most 30).")] = 8.0,
    latency_seconds: Annotated[float, typer.Option(help="Seconds per paired c=1 latency run (at most 30).")] = 8.0,
    query_concurrency: Annotated[int, typer.Option(help="Clients of the one-query throughput run.")] = 32,
    bulk_concurrency: Annotated[int, typer.Option(help="Clients of the bulk run.")] = 4,
    bulk_inputs: Annotated[int, typer.Option(help="Texts per bulk request.")] = 32,
    port: Annotated[int, typer.Option(help="The gateway's port.")] = 18500,
    ray_auth_mode: Annotated[str, typer.Option(help="RAY_AUTH_MODE of the benchmark's own Ray head and "
                                                    "gateway (loopback only).")] = "disabled",
    out: OutOption = None,
) -> None:
    """The Ray runtime (1 and 2 replicas; 1 of 2 CPUs) against in-process, one gateway, one run: throughput, hop."""
    from gigarouter.bench.ray import RayBenchOptions, markdown, run_ray_bench

    try:
        import ray as _ray  # noqa: F401
    except ImportError:
        raise typer.BadParameter("Ray is not installed: pip install 'gigarouter[ray]'") from None
    opts = RayBenchOptions(rounds=max(1, rounds), seconds=min(seconds, 30.0),
                           latency_seconds=min(latency_seconds, 30.0), query_concurrency=query_concurrency,
                           bulk_concurrency=bulk_concurrency, bulk_inputs=bulk_inputs, port=port,
                           auth_mode=ray_auth_mode)
    result = run_ray_bench(opts, command=_command(), log=_log)
    _finish(result, markdown(result), out)


@app.command()
def profile(
    py_spy: Annotated[Path | None, typer.Option(help="py-spy executable (default: on PATH).")] = None,
    seconds: Annotated[float, typer.Option(help="Seconds py-spy records per load (at most 20).")] = 10.0,
    out: Annotated[Path, typer.Option("--out", "-o", help="JSON summary.")] = Path("docs/benchmarks/profile.json"),
    port: Annotated[int, typer.Option(help="Port for the gigarouter server it starts.")] = 18300,
) -> None:
    """Start gigarouter, load it (c=1, 8, 32 single inputs; bulk), and fold py-spy samples into pipeline stages."""
    from gigarouter.bench import report, servers
    from gigarouter.bench.corpus import mixed_corpus
    from gigarouter.bench.loadgen import build_requests
    from gigarouter.bench.machine import machine_info
    from gigarouter.bench.profile import profile_under_load

    counter = _counter(None)
    corpus = mixed_corpus(2048)
    counts = counter.counts(corpus.texts)
    raw_dir = out.parent / "pyspy"
    raw_dir.mkdir(parents=True, exist_ok=True)
    rows = []
    with servers.running(servers.gigarouter_spec(port), log_dir=servers.default_log_dir()) as server:
        for concurrency, per_request in ((1, 1), (8, 1), (32, 1), (4, 32)):
            requests = build_requests(corpus.texts, counts, inputs_per_request=per_request)
            row = asyncio.run(profile_under_load(server, requests, concurrency=concurrency,
                                                 seconds=min(seconds, 20.0), out_dir=raw_dir,
                                                 label=f"c{concurrency}x{per_request}",
                                                 py_spy=str(py_spy) if py_spy else None))
            row["raw"] = f"{raw_dir.name}/{row['raw']}"
            rows.append(row)
            _log(f"c={concurrency} x {per_request}: {row['load']['inputs_per_s']:.1f} inputs/s")
            for kind, b in row["busy"].items():
                _log(f"   {kind:<42} busy {100 * b['busy_fraction']:5.1f}%: " + ", ".join(
                    f"{k} {100 * v:.0f}%" for k, v in list(b["shares"].items())[:6]))
    report.write_json(out, {"kind": "profile", "command": _command(), "machine": machine_info(), "runs": rows})


@app.command()
def cache(
    inputs: Annotated[int, typer.Option(help="Inputs in each shape's stream.")] = 2048,
    repeat: Annotated[float, typer.Option(help="Share of the inputs that repeat an earlier one.")] = 0.3,
    rounds: Annotated[int, typer.Option(help="Rounds (fresh servers, cold caches; order alternates).")] = 2,
    configs: Annotated[str, typer.Option(help="Comma-separated: off, memory, redis.")] = "off,memory,redis",
    redis_url: Annotated[str, typer.Option(help="Redis for cache = \"redis\" (a key prefix of the run's own, "
                                                "deleted afterwards).")] = "redis://127.0.0.1:6379/0",
    port: Annotated[int, typer.Option(help="First port of the servers it starts (one per config).")] = 18400,
    out: OutOption = None,
) -> None:
    """The per-input cache on a workload where 30% of inputs repeat: off vs in-memory vs Redis, one run."""
    from gigarouter.bench import report
    from gigarouter.bench.cache import CONFIGS, CacheBenchOptions, markdown, run_cache_bench

    chosen = tuple(c.strip() for c in configs.split(",") if c.strip())
    if not chosen or any(c not in CONFIGS for c in chosen):
        raise typer.BadParameter(f"choose from {', '.join(CONFIGS)}", param_hint="--configs")
    if not 0 <= repeat < 1:
        raise typer.BadParameter("must be in [0, 1)", param_hint="--repeat")
    opts = CacheBenchOptions(inputs=inputs, repeat_fraction=repeat, rounds=rounds, redis_url=redis_url,
                             configs=chosen, port=port)
    result = run_cache_bench(opts, command=_command(), log=_log)
    print(markdown(result))
    print(f"\nMachine: {report.machine_line(result['machine'])}")
    if out:
        report.write_json(out, result)


@app.command()
def flood(
    connections: Annotated[int, typer.Option(help="Clients sending at once in the flood (wrk connections).")] = 1000,
    capacity_clients: Annotated[int, typer.Option(help="Clients for the capacity measurement.")] = 8,
    duration: Annotated[float, typer.Option(help="Seconds of flood.")] = 30.0,
    capacity_duration: Annotated[float, typer.Option(help="Seconds of the capacity measurement.")] = 20.0,
    inputs_per_request: Annotated[int, typer.Option(help="Texts per request (from the mixed corpus).")] = 1,
    url: Annotated[str | None, typer.Option(help="Drive this server instead of starting the default one.")] = None,
    model: Annotated[str, typer.Option("--model", "-m", help="Model name to send.")] = "all-minilm-l6-v2",
    port: Annotated[int, typer.Option(help="Port of the server it starts.")] = 18500,
    max_queue_wait_ms: Annotated[float | None, typer.Option(help="Start the server with this max_queue_wait_ms "
                                                                 "(default: the server's default).")] = None,
    honour_retry_after: Annotated[bool, typer.Option(
        "--honour-retry-after/--ignore-retry-after",
        help="Refused clients wait the Retry-After they were given (jittered), as openai-python does; "
             "or they send again at once.")] = True,
    impatient: Annotated[bool, typer.Option(help="Also run the flood with clients that ignore Retry-After "
                                                 "(reported beside the bar).")] = True,
    out: OutOption = None,
) -> None:
    """~1000 clients at once against the default server (wrk): refusals fast and with Retry-After, no 5xx,
    goodput vs the 8-client capacity, success p99, /health p99 (exit status 1 if the bar is missed)."""
    from gigarouter.bench import report, servers
    from gigarouter.bench.corpus import mixed_corpus
    from gigarouter.bench.flood import markdown, run_flood
    from gigarouter.bench.machine import machine_info
    from gigarouter.settings import Settings

    texts = list(mixed_corpus(2048).texts)
    server = None
    if url is None:
        config = None
        if max_queue_wait_ms is not None:   # the benchmark's defaults (cache off) plus the limit under test
            config = Path(tempfile.mkdtemp(prefix="gigarouter-flood-")) / "gigarouter.toml"
            config.write_text(f'cache = "off"\nmax_queue_wait_ms = {max_queue_wait_ms}\n')
        server = servers.start(servers.gigarouter_spec(port, config=config), log_dir=servers.default_log_dir())
        url = server.spec.url
    try:
        result = run_flood(url.rstrip("/"), model=model, texts=texts, connections=connections,
                           capacity_clients=capacity_clients, capacity_s=capacity_duration, flood_s=duration,
                           inputs_per_request=inputs_per_request, clients_honour_retry_after=honour_retry_after,
                           also_impatient=impatient, log=_log)
    finally:
        if server is not None:
            servers.stop(server)
    result.update(command=_command(), machine=machine_info(), date=datetime.now(UTC).isoformat(timespec="seconds"),
                  max_queue_wait_ms=max_queue_wait_ms or Settings.max_queue_wait_ms)
    print(markdown(result))
    print(f"\nMachine: {report.machine_line(result['machine'])}")
    if out:
        report.write_json(out, result)
    if not result["passed"]:
        raise typer.Exit(1)


def _counter(tokenizer_dir: Path | None):
    from gigarouter.bench.corpus import TokenCounter
    from gigarouter.engine.sources import embedded_model_dir

    return TokenCounter.for_model_dir(tokenizer_dir or embedded_model_dir())


def _finish(result: dict, summary: str, out: Path | None) -> None:
    """Print a load run's summary and machine, keep its JSON, and exit 1 when any request failed."""
    from gigarouter.bench import report

    print(summary)
    print(f"\nMachine: {report.machine_line(result['machine'])}")
    if out:
        report.write_json(out, result)
    if not result["valid"]:
        _log("some requests failed: the result is invalid")
        raise typer.Exit(1)
