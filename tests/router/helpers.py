"""What the router's end-to-end tests share: a real backend, gateways over upstreams, and small probes."""

from __future__ import annotations

import base64
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import numpy as np

from gigarouter.settings import ProviderConfig, Settings
from tests.conftest import free_port, live_server, wait_until_ready
from tests.router.upstream import ROOT, Upstream

MODEL = "all-minilm-l6-v2"


def child_env(**extra: str) -> dict[str, str]:
    """The environment for a child gigarouter: this worktree's code wins over any installed copy."""
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), str(ROOT)]), **extra}


def serve(args: list[str], *, log: Path, env: dict[str, str] | None = None) -> subprocess.Popen:
    """``gigarouter serve ARGS`` in a child process, its output in ``log``."""
    with log.open("ab") as out:
        proc = subprocess.Popen([sys.executable, "-m", "gigarouter.cli", "serve", *args], cwd=ROOT,
                                env=env or child_env(), stdout=out, stderr=subprocess.STDOUT)
    proc.log = log  # type: ignore[attr-defined]
    return proc


def wait_served(proc: subprocess.Popen, port: int, timeout: float = 120) -> str:
    base = f"http://127.0.0.1:{port}"
    try:
        wait_until_ready(base, timeout=timeout, alive=lambda: proc.poll() is None)
    except AssertionError as exc:
        stop(proc)
        raise AssertionError(f"{exc}\n{proc.log.read_text()}") from None  # type: ignore[attr-defined]
    return base


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


@contextmanager
def backend_server(data_dir: Path) -> Iterator[str]:
    """A real gigarouter serving the embedded all-minilm-l6-v2 (open mode on loopback)."""
    port = free_port()
    proc = serve(["--port", str(port), "--data-dir", str(data_dir), "--log-level", "warning"],
                 log=data_dir / "backend.log")
    try:
        yield wait_served(proc, port)
    finally:
        stop(proc)


def provider(name: str, upstream: Upstream, price: float, **extra) -> ProviderConfig:
    return ProviderConfig(name=name, base_url=f"{upstream.url}/v1", models=((MODEL, MODEL),),
                          price_per_million_usd=price, **extra)


@contextmanager
def gateway(providers: list[ProviderConfig], **settings) -> Iterator[str]:
    """A pure gateway (no local model) over ``providers``, served in a thread; yields its URL once probed.

    Its embedding cache is off: these tests are about which provider answers, so every request
    must reach one (tests/router/test_cache*.py cover the cache in front of them).
    """
    data_dir = Path(tempfile.mkdtemp(prefix="gigarouter-gw-"))
    values = {"breaker_cooldown_s": 0.5, "request_timeout_s": 20.0, "cache": "off", **settings}
    with live_server(Settings(data_dir=data_dir, models=(), providers=tuple(providers), **values)) as base:
        yield base


def embed(base: str, text: str | list[str] = "a llama in the Andes", *, model: str = MODEL,
          client: httpx.Client | None = None, **body) -> httpx.Response:
    payload = {"model": model, "input": text, **body}
    if client is not None:
        return client.post(f"{base}/v1/embeddings", json=payload)
    return httpx.post(f"{base}/v1/embeddings", json=payload, timeout=60)


def vectors(response: httpx.Response) -> np.ndarray:
    data = response.json()["data"]
    rows = [np.frombuffer(base64.b64decode(d["embedding"]), dtype="<f4") if isinstance(d["embedding"], str)
            else np.asarray(d["embedding"], dtype=np.float32) for d in data]
    return np.stack(rows)


def same_vectors(a: np.ndarray, b: np.ndarray) -> bool:
    return a.shape == b.shape and bool(np.allclose(a, b, atol=1e-5))


def served_by(response: httpx.Response) -> str:
    assert response.status_code == 200, response.text
    return response.headers["x-gigarouter-provider"]


def model_entry(base: str) -> dict:
    r = httpx.get(f"{base}/v1/models/{MODEL}", timeout=10)
    assert r.status_code == 200, r.text
    return r.json()


def states(base: str) -> dict[str, str]:
    return {p["name"]: p["state"] for p in model_entry(base)["providers"]}


def wait_state(base: str, name: str, state: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    seen = None
    while time.monotonic() < deadline:
        seen = states(base).get(name)
        if seen == state:
            return
        time.sleep(0.1)
    raise AssertionError(f"provider {name} stayed {seen!r}, not {state!r}, for {timeout:.0f} s")


def assert_openai_error(response: httpx.Response, status: int | tuple[int, ...]) -> dict:
    statuses = status if isinstance(status, tuple) else (status,)
    assert response.status_code in statuses, (response.status_code, response.text)
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}, error
    assert isinstance(error["message"], str) and error["message"]
    return error
