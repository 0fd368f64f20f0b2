"""``gigarouter bench flood``: does the server hold under ~1000 clients at once?

A Python client cannot offer that load from a 2-core machine (it saturates its own
core first), so the load comes from ``wrk`` (C, epoll; Debian's ``wrk`` package)
driven by ``flood.lua`` beside this file. The run:

1. starts the default server (embedding cache off: the corpus repeats) unless ``--url``;
2. measures *capacity*: successful requests per second with 8 clients (closed loop),
   after a short warm-up;
3. floods it with ``connections`` clients (closed loop: each sends its next request
   as soon as it has an answer, refusals included; a request unanswered after 10 s is a
   timeout), while a prober asks ``/health`` every 50 ms, each time on a new connection;
4. checks the issue's bar and writes JSON and a summary.

The bar (issue 12): 0 5xx, 0 socket errors or timeouts, every refusal a 429/503 with
Retry-After, goodput (successes per second under the flood) >= 80% of capacity,
success p99 <= 5 s, /health p99 <= 250 ms.
"""

from __future__ import annotations

import json
import os
import resource
import shutil
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import numpy as np

LUA_SCRIPT = Path(__file__).with_name("flood.lua")

#: The issue's bar.
MIN_GOODPUT_RATIO = 0.8
MAX_SUCCESS_P99_MS = 5000.0
MAX_HEALTH_P99_MS = 250.0


@dataclass
class WrkRun:
    """What wrk and flood.lua counted in one run."""

    connections: int
    duration_s: float
    requests: int
    statuses: dict[str, int]
    refusals_without_retry_after: int
    socket_errors: dict[str, int]
    ok_latency_ms: list[float] = field(repr=False)

    @property
    def ok(self) -> int:
        return self.statuses.get("200", 0)

    @property
    def ok_per_s(self) -> float:
        return self.ok / self.duration_s if self.duration_s else 0.0

    def summary(self) -> dict:
        lat = np.asarray(self.ok_latency_ms) if self.ok_latency_ms else np.zeros(1)
        return {"connections": self.connections, "duration_s": round(self.duration_s, 2), "requests": self.requests,
                "statuses": self.statuses, "ok_per_s": round(self.ok_per_s, 1),
                "refusals_without_retry_after": self.refusals_without_retry_after,
                "socket_errors": self.socket_errors,
                "ok_latency_ms": {p: round(float(np.percentile(lat, q)), 1)
                                  for p, q in (("p50", 50), ("p90", 90), ("p99", 99), ("max", 100))}}


def write_bodies(path: Path, texts: list[str], *, model: str, inputs_per_request: int) -> Path:
    """One /v1/embeddings JSON body per line, ``inputs_per_request`` texts each."""
    with open(path, "w", encoding="utf-8") as f:
        for i in range(0, len(texts) - inputs_per_request + 1, inputs_per_request):
            chunk = texts[i:i + inputs_per_request]
            f.write(json.dumps({"model": model, "input": chunk if len(chunk) > 1 else chunk[0]}) + "\n")
    return path


def raise_open_files_limit() -> int:
    """1000 sockets need more than the usual soft limit of 1024 descriptors (children inherit it)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = hard if hard != resource.RLIM_INFINITY else 65536
    if soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def wrk_binary() -> str:
    found = shutil.which("wrk")
    if found is None:
        raise RuntimeError("wrk is not installed: apt-get install -y wrk (Debian/Ubuntu)")
    return found


def run_wrk(url: str, *, bodies: Path, connections: int, duration_s: float, threads: int = 2,
            timeout_s: float = 10.0, work_dir: Path, honour_retry_after: bool = False) -> WrkRun:
    """``timeout_s`` must be well under ``duration_s``: wrk counts a request as a timeout only once
    that long has passed, so a longer one hides requests never answered before the run ends (a
    connection the server never accepted, for one). ``honour_retry_after``: a refused client waits
    as it was told (flood.lua says how) instead of sending again at once."""
    out = work_dir / f"wrk-{connections}-{time.monotonic_ns()}.json"
    env = {**os.environ, "FLOOD_BODIES": str(bodies), "FLOOD_OUT": str(out), "FLOOD_PATH": "/v1/embeddings",
           "FLOOD_RETRY_AFTER": "honour" if honour_retry_after else "ignore"}
    argv = [wrk_binary(), f"-t{min(threads, connections)}", f"-c{connections}", f"-d{int(duration_s)}s",
            f"--timeout={int(timeout_s)}s", "-s", str(LUA_SCRIPT), url]
    proc = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=duration_s + timeout_s + 60)
    if proc.returncode != 0 or not out.exists():
        raise RuntimeError(f"wrk failed ({proc.returncode}): {proc.stderr.strip() or proc.stdout.strip()}")
    raw = json.loads(out.read_text())
    return WrkRun(connections=connections, duration_s=raw["duration_s"], requests=raw["requests"],
                  statuses={str(k): v for k, v in raw["statuses"].items()},
                  refusals_without_retry_after=raw["refusals_without_retry_after"],
                  socket_errors=raw["socket_errors"], ok_latency_ms=raw["ok_latency_ms"])


class HealthProber(threading.Thread):
    """GET /health every ``every_s``, each on a new connection as a liveness probe makes it (a kept-alive
    connection opened before the flood would skip the server's accept queue); latencies, and failures
    (timeouts, non-200)."""

    def __init__(self, url: str, *, every_s: float = 0.05, timeout_s: float = 10.0) -> None:
        super().__init__(name="health-prober", daemon=True)
        self.url = url.rstrip("/") + "/health"
        self.every_s = every_s
        self.timeout_s = timeout_s
        self.latencies_ms: list[float] = []
        self.failures: dict[str, int] = {}
        self._stop_event = threading.Event()

    def run(self) -> None:
        fresh = httpx.Limits(max_keepalive_connections=0)
        with httpx.Client(timeout=self.timeout_s, trust_env=False, limits=fresh) as client:
            while not self._stop_event.is_set():
                started = time.perf_counter()
                try:
                    status = client.get(self.url).status_code
                    if status != 200:
                        self.failures[str(status)] = self.failures.get(str(status), 0) + 1
                except httpx.HTTPError as exc:
                    self.failures[type(exc).__name__] = self.failures.get(type(exc).__name__, 0) + 1
                else:
                    self.latencies_ms.append((time.perf_counter() - started) * 1000)
                self._stop_event.wait(max(0.0, self.every_s - (time.perf_counter() - started)))

    def stop(self) -> dict:
        self._stop_event.set()
        self.join(timeout=self.timeout_s + 1)
        lat = np.asarray(self.latencies_ms) if self.latencies_ms else np.zeros(1)
        return {"probes": len(self.latencies_ms), "failures": self.failures,
                "latency_ms": {p: round(float(np.percentile(lat, q)), 1)
                               for p, q in (("p50", 50), ("p99", 99), ("max", 100))}}


def verdict(capacity: WrkRun, flood: WrkRun, health: dict) -> dict[str, bool]:
    """The issue's bar, criterion by criterion."""
    five_xx = sum(n for s, n in flood.statuses.items() if s.startswith("5") and s != "503")
    others = sum(n for s, n in flood.statuses.items() if s not in ("200", "429", "503"))
    p99 = float(np.percentile(flood.ok_latency_ms, 99)) if flood.ok_latency_ms else float("inf")
    return {
        "no_5xx_but_503": five_xx == 0,
        "no_socket_errors_or_timeouts": not any(flood.socket_errors.values()) and not health["failures"],
        "every_refusal_429_or_503_with_retry_after": others == 0 and flood.refusals_without_retry_after == 0,
        "goodput_at_least_80pct_of_capacity": flood.ok_per_s >= MIN_GOODPUT_RATIO * capacity.ok_per_s,
        "success_p99_at_most_5s": p99 <= MAX_SUCCESS_P99_MS,
        "health_p99_at_most_250ms": health["latency_ms"]["p99"] <= MAX_HEALTH_P99_MS,
    }


def run_flood(url: str, *, model: str, texts: list[str], connections: int = 1000, capacity_clients: int = 8,
              capacity_s: float = 20.0, flood_s: float = 30.0, warmup_s: float = 5.0, inputs_per_request: int = 1,
              threads: int = 2, clients_honour_retry_after: bool = True, also_impatient: bool = True,
              log: Callable[[str], None] = print) -> dict:
    raise_open_files_limit()
    work_dir = Path(tempfile.mkdtemp(prefix="gigarouter-flood-"))
    bodies = write_bodies(work_dir / "bodies.jsonl", texts, model=model, inputs_per_request=inputs_per_request)
    log(f"warm-up: {capacity_clients} clients for {warmup_s:.0f} s")
    run_wrk(url, bodies=bodies, connections=capacity_clients, duration_s=warmup_s, threads=threads, work_dir=work_dir)
    capacity = run_wrk(url, bodies=bodies, connections=capacity_clients, duration_s=capacity_s, threads=threads,
                       work_dir=work_dir)
    log(f"capacity ({capacity_clients} clients): {capacity.ok_per_s:.1f} requests/s, statuses {capacity.statuses}")

    def one_flood(honour: bool) -> tuple[WrkRun, dict]:
        time.sleep(2.0)      # let the queue empty before the flood
        prober = HealthProber(url)
        prober.start()
        flood = run_wrk(url, bodies=bodies, connections=connections, duration_s=flood_s, threads=threads,
                        work_dir=work_dir, honour_retry_after=honour)
        health = prober.stop()
        log(f"flood ({connections} clients, Retry-After {'honoured' if honour else 'ignored'}): "
            f"{flood.ok_per_s:.1f} ok/s, statuses {flood.statuses}, socket errors {flood.socket_errors}; "
            f"/health p99 {health['latency_ms']['p99']} ms")
        return flood, health

    flood, health = one_flood(clients_honour_retry_after)
    checks = verdict(capacity, flood, health)
    result = {"kind": "flood", "url": url, "model": model, "inputs_per_request": inputs_per_request,
              "clients_honour_retry_after": clients_honour_retry_after,
              "capacity": capacity.summary(), "flood": flood.summary(), "health": health,
              "goodput_ratio": round(flood.ok_per_s / capacity.ok_per_s, 3) if capacity.ok_per_s else None,
              "checks": checks, "passed": all(checks.values())}
    if also_impatient and clients_honour_retry_after:
        # The same flood from clients that send again at once, told or not: what the refusals cost
        # then. Reported beside the bar, not part of it (issue 12's bar is for clients as they are).
        rude, rude_health = one_flood(False)
        result["impatient"] = {"flood": rude.summary(), "health": rude_health,
                               "goodput_ratio": round(rude.ok_per_s / capacity.ok_per_s, 3)
                               if capacity.ok_per_s else None}
    return result


def markdown(result: dict) -> str:
    cap, fl, h = result["capacity"], result["flood"], result["health"]
    refusals = {s: n for s, n in fl["statuses"].items() if s != "200"}
    lines = [
        "| run | clients | ok requests/s | statuses | success p50 ms | success p99 ms | socket errors |",
        "|---|---:|---:|---|---:|---:|---|",
    ]
    for name, run in (("capacity", cap), ("flood", fl)):
        lines.append(f"| {name} | {run['connections']} | {run['ok_per_s']:.1f} | "
                     f"{', '.join(f'{s}: {n}' for s, n in sorted(run['statuses'].items()))} | "
                     f"{run['ok_latency_ms']['p50']:.0f} | {run['ok_latency_ms']['p99']:.0f} | "
                     f"{sum(run['socket_errors'].values())} |")
    lines += ["", f"Goodput under the flood: {100 * (result['goodput_ratio'] or 0):.0f}% of the capacity measured "
                  f"with {cap['connections']} clients. Refusals: {refusals or 'none'}, "
                  f"{fl['refusals_without_retry_after']} without Retry-After. "
                  f"/health during the flood: p50 {h['latency_ms']['p50']} ms, p99 {h['latency_ms']['p99']} ms, "
                  f"max {h['latency_ms']['max']} ms over {h['probes']} probes, failures {h['failures'] or 'none'}.",
              "", "Checks: " + ", ".join(f"{k} {'PASS' if v else 'FAIL'}" for k, v in result["checks"].items())]
    if (rude := result.get("impatient")) is not None:
        f, rh = rude["flood"], rude["health"]
        lines += ["", f"The same flood from clients that ignore Retry-After (not part of the bar): "
                      f"{f['ok_per_s']:.1f} ok/s ({100 * (rude['goodput_ratio'] or 0):.0f}% of capacity), "
                      f"statuses {dict(sorted(f['statuses'].items()))}, "
                      f"success p99 {f['ok_latency_ms']['p99']:.0f} ms, "
                      f"socket errors {f['socket_errors']}, /health p99 {rh['latency_ms']['p99']} ms."]
    return "\n".join(lines)
