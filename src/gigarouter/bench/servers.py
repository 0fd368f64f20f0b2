"""Start and stop the servers a comparison drives: gigarouter and infinity-emb, each its own process.

Each server runs in its own process group (so stopping it stops whatever it
spawned, and nothing else), logs to a file, binds loopback only, and counts as
up once its readiness path answers 200. infinity-emb lives in its own virtual
environment (its pins differ from ours); point ``infinity_bin`` at its
``infinity_emb`` executable.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import httpx

#: name the model is served under by both servers, so one client request fits both
SERVED_NAME = "all-minilm-l6-v2"


@dataclass(frozen=True)
class ServerSpec:
    name: str
    argv: tuple[str, ...]
    port: int
    ready_path: str
    embeddings_path: str
    env: dict[str, str] = field(default_factory=dict)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


@dataclass
class RunningServer:
    spec: ServerSpec
    process: subprocess.Popen
    log_path: Path
    launched_at: float                   # time.perf_counter() at launch
    startup_seconds: float | None = None  # launch until ready

    @property
    def pid(self) -> int:
        return self.process.pid


def gigarouter_spec(port: int, *, name: str = "gigarouter", env: dict[str, str] | None = None,
                    config: Path | None = None) -> ServerSpec:
    """``gigarouter serve`` on loopback; without a config, the defaults with the embedding cache off
    (the benchmarks repeat their corpus from round to round: they measure the model, not cache hits)."""
    if config is None:
        config = Path(tempfile.mkdtemp(prefix="gigarouter-bench-")) / "gigarouter.toml"
        config.write_text('cache = "off"\n')
    argv = (sys.executable, "-m", "gigarouter.cli", "serve", "--host", "127.0.0.1", "--port", str(port),
            "--log-level", "warning", *(("--config", str(config)) if config else ()))
    return ServerSpec(name=name, argv=argv, port=port, ready_path="/ready", embeddings_path="/v1/embeddings",
                      env=dict(env or {}))


def infinity_spec(port: int, *, infinity_bin: Path, model_dir: Path, batch_size: int = 32,
                  env: dict[str, str] | None = None) -> ServerSpec:
    """infinity-emb's v2 CLI on a local model directory: CPU, torch engine, offline, no telemetry."""
    argv = (str(infinity_bin), "v2", "--model-id", str(model_dir), "--served-model-name", SERVED_NAME,
            "--engine", "torch", "--device", "cpu", "--batch-size", str(batch_size), "--host", "127.0.0.1",
            "--port", str(port), "--log-level", "warning")
    base_env = {"HF_HUB_OFFLINE": "1", "DO_NOT_TRACK": "1", "INFINITY_ANONYMOUS_USAGE_STATS": "0"}
    return ServerSpec(name="infinity-emb", argv=argv, port=port, ready_path="/health",
                      embeddings_path="/embeddings", env={**base_env, **(env or {})})


def openvino_spec(port: int, *, python: Path, model_dir: Path, precision: str = "default") -> ServerSpec:
    """The OpenVINO peer (``openvino_peer.py serve``: sentence-transformers' OpenVINO backend behind
    FastAPI), run by the Python of its own venv; ``-P`` keeps this folder off its import path."""
    script = Path(__file__).with_name("openvino_peer.py")
    argv = (str(python), "-P", str(script), "serve", "--model-dir", str(model_dir), "--precision", precision,
            "--port", str(port), "--served-model-name", SERVED_NAME)
    name = "openvino" if precision == "default" else f"openvino-{precision}"
    return ServerSpec(name=name, argv=argv, port=port, ready_path="/health", embeddings_path="/v1/embeddings",
                      env={"HF_HUB_OFFLINE": "1"})


def start(spec: ServerSpec, *, log_dir: Path, timeout: float = 240.0, own_session: bool = True) -> RunningServer:
    return wait_ready(launch(spec, log_dir=log_dir, own_session=own_session), timeout=timeout)


def start_all(specs: list[ServerSpec], *, log_dir: Path, timeout: float = 240.0) -> list[RunningServer]:
    """Launch every server at once (start-up overlaps), then wait for each; on failure stop them all."""
    launched = [launch(spec, log_dir=log_dir) for spec in specs]
    try:
        return [wait_ready(s, timeout=timeout) for s in launched]
    except BaseException:
        for s in launched:
            stop(s)
        raise


def launch(spec: ServerSpec, *, log_dir: Path, own_session: bool = True) -> RunningServer:
    """Start a server in its own process group; ``own_session=False`` keeps it in this session.

    Linux schedules sessions as groups (autogroup): on a busy machine each session gets
    about one share of the CPU, so servers compared with each other should share one.
    """
    log_dir.mkdir(parents=True, exist_ok=True)
    log_path = log_dir / f"{spec.name}-{spec.port}.log"
    env = {**os.environ, **spec.env}
    group = {"start_new_session": True} if own_session else {"process_group": 0}
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(spec.argv, stdout=log, stderr=subprocess.STDOUT, env=env, **group)
    return RunningServer(spec, proc, log_path, launched_at=time.perf_counter())


def wait_ready(server: RunningServer, *, timeout: float = 240.0) -> RunningServer:
    spec, proc, log_path = server.spec, server.process, server.log_path
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{spec.name} exited with {proc.returncode}; see {log_path}")
        try:
            if httpx.get(spec.url + spec.ready_path, timeout=2, trust_env=False).status_code == 200:
                server.startup_seconds = time.perf_counter() - server.launched_at
                return server
        except httpx.HTTPError:
            pass
        time.sleep(0.25)
    stop(server)
    raise RuntimeError(f"{spec.name} not ready after {timeout:.0f}s; see {log_path}")


def stop(server: RunningServer, *, grace: float = 20.0) -> None:
    """SIGTERM the server's own process group, then SIGKILL it if it lingers."""
    proc = server.process
    if proc.poll() is not None:
        return
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)


@contextmanager
def running(spec: ServerSpec, *, log_dir: Path) -> Iterator[RunningServer]:
    server = start(spec, log_dir=log_dir)
    try:
        yield server
    finally:
        stop(server)


def default_log_dir() -> Path:
    """Server logs go to the system temp directory, not beside the results."""
    return Path(tempfile.gettempdir()) / "gigarouter-bench-logs"


def default_infinity_bin() -> Path | None:
    """infinity-emb's executable: on PATH, or in the venv docs/benchmarks.md tells you to make."""
    found = shutil.which("infinity_emb")
    if found:
        return Path(found)
    candidate = Path("/tmp/infinity-venv/bin/infinity_emb")
    return candidate if candidate.exists() else None
