"""The gateway's cost: gigarouter in front of a fast upstream, against the upstream itself and LiteLLM's proxy.

Three targets answer the same request body, one short text:

- ``direct``: the fast upstream (``bench.fast_upstream``: fixed vectors, no model),
- ``gigarouter``: ``gigarouter serve`` with a config holding only ``[[providers]]``
  pointing at that upstream (a pure gateway),
- ``litellm``: LiteLLM's proxy (its own virtual environment) with a ``model_list``
  entry ``openai/<name>`` whose ``api_base`` is the same upstream.

Each is one process, on loopback. Load comes from ``wrk`` (C, one thread: a Python
client saturates before a server does on 2 cores) with a Lua script that POSTs the
body and prints wrk's own summary as JSON. Per round and target: a run at
concurrency 1 (latency p50/p99, the added latency is gateway minus direct) and one
at ``concurrency`` (the throughput ceiling), the target order rotating from round
to round so drift on a shared machine falls on all alike; ratios are taken within
a round and their median reported. A run with any non-2xx/3xx answer or socket
error makes the result invalid. The proxies' CPU seconds per request (all processes
of their group, from /proc) are recorded beside, as the least noisy figure.
"""

from __future__ import annotations

import base64
import json
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

from gigarouter.bench import servers as srv
from gigarouter.bench.machine import group_cpu_seconds, machine_info

MODEL = "fast-embed"
DIM = 384
TEXT = "what is the capital of France?"
TARGETS = ("direct", "gigarouter", "litellm")

#: wrk script: POST one embeddings body; at the end print wrk's summary as one JSON line.
WRK_LUA = """
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.body = [==[%(body)s]==]

done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'WRK_JSON {"requests": %%d, "duration_us": %%d, "non_2xx_3xx": %%d, "connect_errors": %%d, ' ..
    '"read_errors": %%d, "write_errors": %%d, "timeouts": %%d, "p50_us": %%d, "p90_us": %%d, ' ..
    '"p99_us": %%d, "max_us": %%d, "mean_us": %%.1f}\\n',
    summary.requests, summary.duration, e.status, e.connect, e.read, e.write, e.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max, latency.mean))
end
"""


@dataclass(frozen=True)
class GatewayOptions:
    litellm_bin: Path | None
    rounds: int = 4
    seconds: float = 6.0            # per wrk run
    concurrency: int = 32           # the saturating run
    encoding_format: str = "float"  # what the client asks for
    base_port: int = 18400          # upstream; gateway +1, litellm +2
    dim: int = DIM


def request_body(encoding_format: str) -> str:
    return json.dumps({"model": MODEL, "input": [TEXT], "encoding_format": encoding_format})


def upstream_spec(port: int, dim: int) -> srv.ServerSpec:
    return srv.ServerSpec(name="direct", port=port, ready_path="/health", embeddings_path="/v1/embeddings",
                          argv=(sys.executable, "-m", "gigarouter.bench.fast_upstream", "--port", str(port),
                                "--dim", str(dim)))


def gateway_config(upstream_port: int, data_dir: Path) -> str:
    """A pure gateway: only ``[[providers]]``, open access on loopback, and no embedding cache: the load
    repeats one input, and what is measured is the forwarding, not a cache hit (section 8 measures those)."""
    return (f'data_dir = "{data_dir}"\nauth = "open"\ncache = "off"\n\n[[providers]]\nname = "fast"\n'
            f'base_url = "http://127.0.0.1:{upstream_port}/v1"\nmodels = ["{MODEL}"]\n')


def litellm_config(upstream_port: int) -> str:
    return (f"model_list:\n  - model_name: {MODEL}\n    litellm_params:\n      model: openai/{MODEL}\n"
            f"      api_base: http://127.0.0.1:{upstream_port}/v1\n      api_key: dummy\n"
            "litellm_settings:\n  telemetry: false\n")


#: uvicorn logging for LiteLLM without a line per request (gigarouter serves at --log-level warning).
LITELLM_LOG_CONFIG = {"version": 1, "disable_existing_loggers": False,
                      "formatters": {"plain": {"format": "%(levelname)s %(name)s: %(message)s"}},
                      "handlers": {"stderr": {"class": "logging.StreamHandler", "formatter": "plain"}},
                      "root": {"level": "WARNING", "handlers": ["stderr"]},
                      "loggers": {"uvicorn.access": {"level": "WARNING"}}}


def litellm_spec(port: int, litellm_bin: Path, config: Path, log_config: Path) -> srv.ServerSpec:
    argv = (str(litellm_bin), "--config", str(config), "--host", "127.0.0.1", "--port", str(port),
            "--num_workers", "1", "--log_config", str(log_config))
    # the cost map from the package, not the network; no telemetry
    env = {"LITELLM_LOCAL_MODEL_COST_MAP": "True", "LITELLM_TELEMETRY": "False", "LITELLM_LOG": "ERROR"}
    return srv.ServerSpec(name="litellm", argv=argv, port=port, ready_path="/health/liveliness",
                          embeddings_path="/v1/embeddings", env=env)


def run_wrk(url: str, script: Path, *, connections: int, seconds: float) -> dict:
    """One wrk run (one thread); its summary, with latencies in ms and requests/s."""
    argv = ["wrk", "-t1", f"-c{connections}", f"-d{max(1, round(seconds))}s", "--timeout", "10s",
            "-s", str(script), url]
    out = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + 60)
    line = next((x for x in out.stdout.splitlines() if x.startswith("WRK_JSON ")), None)
    if out.returncode != 0 or line is None:
        raise RuntimeError(f"wrk failed ({out.returncode}): {out.stderr.strip() or out.stdout.strip()}")
    raw = json.loads(line.removeprefix("WRK_JSON "))
    errors = {k: raw[k] for k in ("non_2xx_3xx", "connect_errors", "read_errors", "write_errors", "timeouts")}
    return {"connections": connections, "requests": raw["requests"], "seconds": raw["duration_us"] / 1e6,
            "requests_per_s": raw["requests"] / (raw["duration_us"] / 1e6),
            "p50_ms": raw["p50_us"] / 1e3, "p90_ms": raw["p90_us"] / 1e3, "p99_ms": raw["p99_us"] / 1e3,
            "max_ms": raw["max_us"] / 1e3, "mean_ms": raw["mean_us"] / 1e3, "errors": errors,
            "failed": sum(errors.values())}


def check_answer(server: srv.RunningServer, body: str, dim: int) -> dict:
    """One request before any load: 200 and ``dim`` numbers (or their base64) per input."""
    r = httpx.post(server.spec.url + server.spec.embeddings_path, content=body, timeout=30, trust_env=False,
                   headers={"content-type": "application/json"})
    if r.status_code != 200:
        raise RuntimeError(f"{server.spec.name} answered {r.status_code}: {r.text[:300]}")
    embedding = r.json()["data"][0]["embedding"]
    width = len(embedding) if isinstance(embedding, list) else len(base64.b64decode(embedding)) // 4
    if width != dim:
        raise RuntimeError(f"{server.spec.name} answered a {width}-wide vector, expected {dim}")
    return {"status": r.status_code, "width": width,
            "provider_header": r.headers.get("x-gigarouter-provider"), "bytes": len(r.content)}


def run_gateway_bench(opts: GatewayOptions, *, command: str = "", log=print) -> dict:
    t_start = time.perf_counter()
    work = Path(tempfile.mkdtemp(prefix="gigarouter-gateway-bench-"))
    body = request_body(opts.encoding_format)
    script = work / "embeddings.lua"
    script.write_text(WRK_LUA % {"body": body})
    up_port = opts.base_port
    (work / "gateway.toml").write_text(gateway_config(up_port, work / "data"))
    specs = [upstream_spec(up_port, opts.dim),
             srv.gigarouter_spec(up_port + 1, config=work / "gateway.toml")]
    if opts.litellm_bin:
        (work / "litellm.yaml").write_text(litellm_config(up_port))
        (work / "litellm-log.json").write_text(json.dumps(LITELLM_LOG_CONFIG))
        specs.append(litellm_spec(up_port + 2, opts.litellm_bin, work / "litellm.yaml", work / "litellm-log.json"))
    result: dict = {"kind": "gateway", "command": command, "machine": machine_info(),
                    "versions": {"wrk": _wrk_version(),
                                 "litellm": _litellm_version(opts.litellm_bin) if opts.litellm_bin else None},
                    "settings": {"rounds": opts.rounds, "seconds": opts.seconds, "concurrency": opts.concurrency,
                                 "body": json.loads(body), "dim": opts.dim, "wrk_threads": 1},
                    "targets": [s.name for s in specs], "runs": []}
    running: list[srv.RunningServer] = []
    try:
        for spec in specs:
            log(f"starting {spec.name}: {' '.join(spec.argv)}")
        running = srv.start_all(specs, log_dir=srv.default_log_dir())
        result["servers"] = {s.spec.name: {"argv": list(s.spec.argv), "url": s.spec.url,
                                           "startup_s": s.startup_seconds, "check": check_answer(s, body, opts.dim)}
                             for s in running}
        upstream = running[0]
        for s in running:      # warm-up: connections, caches, lazy imports
            run_wrk(s.spec.url + s.spec.embeddings_path, script, connections=opts.concurrency, seconds=2)
        for rnd in range(opts.rounds):
            order = running[rnd % len(running):] + running[:rnd % len(running)]
            for connections in (1, opts.concurrency):
                for s in order:
                    result["runs"].append(_measured_run(s, upstream, script, rnd, connections, opts.seconds, log))
    finally:
        for s in running:
            srv.stop(s)
    result["summary"] = summarize(result["runs"], result["targets"], opts.concurrency)
    result["valid"] = all(r["failed"] == 0 for r in result["runs"])
    result["elapsed_s"] = time.perf_counter() - t_start
    return result


def _measured_run(s: srv.RunningServer, upstream: srv.RunningServer, script: Path, rnd: int, connections: int,
                  seconds: float, log) -> dict:
    pids = {"server": s.pid, "upstream": upstream.pid}
    before = {k: group_cpu_seconds(p) for k, p in pids.items()}
    run = run_wrk(s.spec.url + s.spec.embeddings_path, script, connections=connections, seconds=seconds)
    after = {k: group_cpu_seconds(p) for k, p in pids.items()}
    cpu = {k: after[k] - before[k] for k in pids if before[k] is not None and after[k] is not None}
    n = max(run["requests"], 1)
    run.update(target=s.spec.name, round=rnd,
               server_cpu_ms_per_request=1e3 * cpu["server"] / n if "server" in cpu else None,
               upstream_cpu_ms_per_request=1e3 * cpu["upstream"] / n if "upstream" in cpu else None)
    log(f"  round {rnd} c={connections:<3} {s.spec.name:<11} {run['requests_per_s']:9.1f} req/s  "
        f"p50 {run['p50_ms']:7.2f} ms  p99 {run['p99_ms']:7.2f} ms  "
        f"cpu {run['server_cpu_ms_per_request'] or 0:.3f} ms/req  failed {run['failed']}")
    return run


def summarize(runs: list[dict], targets: list[str], concurrency: int) -> dict:
    """Medians over rounds per target, and ratios taken within each round (then their median)."""
    def cell(target: str, connections: int) -> list[dict]:
        return sorted((r for r in runs if r["target"] == target and r["connections"] == connections),
                      key=lambda r: r["round"])

    def med(values) -> float | None:
        values = [v for v in values if v is not None]
        return float(statistics.median(values)) if values else None

    out: dict = {"targets": {}}
    for t in targets:
        low, high = cell(t, 1), cell(t, concurrency)
        out["targets"][t] = {
            "c1_p50_ms": med(r["p50_ms"] for r in low), "c1_p99_ms": med(r["p99_ms"] for r in low),
            "c1_requests_per_s": med(r["requests_per_s"] for r in low),
            "c1_cpu_ms_per_request": med(r["server_cpu_ms_per_request"] for r in low),
            "max_requests_per_s": med(r["requests_per_s"] for r in high),
            "max_requests_per_s_per_round": [r["requests_per_s"] for r in high],
            "max_p50_ms": med(r["p50_ms"] for r in high), "max_p99_ms": med(r["p99_ms"] for r in high),
            "max_cpu_ms_per_request": med(r["server_cpu_ms_per_request"] for r in high),
            "failed": sum(r["failed"] for r in low + high)}

    def paired(a: str, b: str, connections: int, key: str, op) -> list[float]:
        return [op(x[key], y[key]) for x, y in zip(cell(a, connections), cell(b, connections), strict=False)]

    ratio, minus = (lambda x, y: x / y if y else None), (lambda x, y: x - y)
    pairs: dict = {}
    for proxy in (t for t in targets if t != "direct"):
        pairs[f"{proxy}_added_p50_ms"] = paired(proxy, "direct", 1, "p50_ms", minus)
        pairs[f"{proxy}_added_p99_ms"] = paired(proxy, "direct", 1, "p99_ms", minus)
        pairs[f"{proxy}_vs_direct_throughput"] = paired(proxy, "direct", concurrency, "requests_per_s", ratio)
    if "litellm" in targets:
        pairs["gigarouter_vs_litellm_throughput"] = paired("gigarouter", "litellm", concurrency, "requests_per_s",
                                                           ratio)
        pairs["litellm_vs_gigarouter_p50"] = paired("litellm", "gigarouter", 1, "p50_ms", ratio)
        pairs["litellm_vs_gigarouter_p99"] = paired("litellm", "gigarouter", 1, "p99_ms", ratio)
        pairs["litellm_vs_gigarouter_cpu_per_request"] = paired("litellm", "gigarouter", concurrency,
                                                                "server_cpu_ms_per_request", ratio)
    out["per_round"] = pairs
    out["ratios"] = {k: med(v) for k, v in pairs.items()}
    return out


def _wrk_version() -> str | None:
    try:
        out = subprocess.run(["wrk", "--version"], capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return None
    return (out.stdout or out.stderr).splitlines()[0].strip() if (out.stdout or out.stderr) else None


def _litellm_version(litellm_bin: Path) -> str | None:
    python = litellm_bin.parent / "python"
    try:
        out = subprocess.run([str(python), "-c", "import importlib.metadata as m; print(m.version('litellm'))"],
                             capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None
