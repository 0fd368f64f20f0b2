"""Shared fixtures: the real default model, a deterministic fake engine, and a live server."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
import uvicorn
from fastapi.testclient import TestClient

from gigarouter.api.app import create_app
from gigarouter.engine.base import PackedBatch
from gigarouter.engine.sources import embedded_model_dir
from gigarouter.providers.local.loading import load_model
from gigarouter.recipes.sbert import SbertRecipe
from gigarouter.settings import ModelConfig, Settings, default_model


class FakeEngine:
    """Deterministic vectors from token ids (the HTTP layer's test double, STYLE.md 8).

    ``gate``, when given, is a threading.Event every batch waits on, so tests
    can hold the device busy and fill the queue.
    """

    def __init__(self, dim: int = 8, token_budget: int = 4096, gate: threading.Event | None = None,
                 parallel_batches: int = 1) -> None:
        self.dim = dim
        self.parallel_batches = parallel_batches
        self.concurrent_calls: list[bool] = []
        self.token_budget = token_budget
        self.device_name = "fake"
        self.gate = gate
        self.batches: list[PackedBatch] = []
        self.entered = threading.Event()   # set once a batch is on the "device"

    def embed(self, batch: PackedBatch, *, concurrent: bool = False) -> np.ndarray:
        self.concurrent_calls.append(concurrent)
        self.entered.set()
        if self.gate is not None:
            self.gate.wait(timeout=30)
        self.batches.append(batch)
        out = np.zeros((batch.num_sequences, self.dim), dtype=np.float32)
        for i in range(batch.num_sequences):
            ids = batch.input_ids[batch.cu_seqlens[i]:batch.cu_seqlens[i + 1]]
            rng = np.random.default_rng(int(ids.sum()) * 7919 + len(ids))
            out[i] = rng.standard_normal(self.dim)
        return out

    def warmup(self) -> None:
        return None

    def health(self) -> bool:
        return True


@pytest.fixture(scope="session")
def minilm_recipe() -> SbertRecipe:
    return SbertRecipe.from_checkpoint(embedded_model_dir())


def fake_loader(engine: FakeEngine) -> Callable:
    def load(config: ModelConfig, settings: Settings):
        return SbertRecipe.from_checkpoint(embedded_model_dir()), engine
    return load


def wait_ready(client: TestClient, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if client.get("/ready").status_code == 200:
            return
        time.sleep(0.02)
    raise AssertionError("the app did not become ready")


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory: pytest.TempPathFactory):
    """A private data directory (SQLite file, server secret) so tests never touch the user's."""
    return tmp_path_factory.mktemp("gigarouter-data")


@pytest.fixture(scope="session")
def real_client(data_dir) -> Iterator[TestClient]:
    """The real app on the real embedded model (loaded once for the session), open mode."""
    with TestClient(create_app(Settings(data_dir=data_dir))) as client:
        wait_ready(client)
        yield client


@pytest.fixture
def fake_client_factory(tmp_path) -> Iterator[Callable[..., TestClient]]:
    clients: list[TestClient] = []

    def make(engine: FakeEngine | None = None, **settings_changes) -> TestClient:
        settings = Settings(**{"data_dir": tmp_path, **settings_changes})
        engine = engine or FakeEngine()
        # The router embeds its probe set before /ready (fingerprints): let those batches
        # through the test's gate and keep them out of what the test inspects.
        gate, engine.gate = engine.gate, None
        client = TestClient(create_app(settings, loader=fake_loader(engine)))
        client.__enter__()
        clients.append(client)
        wait_ready(client)
        engine.gate = gate
        engine.batches.clear()
        engine.concurrent_calls.clear()
        engine.entered.clear()
        return client

    yield make
    for client in clients:
        client.__exit__(None, None, None)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until_ready(base: str, *, timeout: float = 120, alive: Callable[[], bool] = lambda: True) -> None:
    """Poll ``base``/ready until it answers 200; fail early if ``alive()`` turns false."""
    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not alive():
            raise AssertionError(f"the server at {base} exited before it was ready")
        try:
            if httpx.get(f"{base}/ready", timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.05)
    raise AssertionError(f"the server at {base} did not become ready in {timeout:.0f} s")


@contextmanager
def live_server(settings: Settings | None = None, **create_kwargs) -> Iterator[str]:
    """A real uvicorn server in a thread; yields its base URL once /ready answers 200."""
    import tempfile

    port = free_port()
    settings = (settings or Settings(data_dir=Path(tempfile.mkdtemp(prefix="gigarouter-")))).with_(port=port)
    server = uvicorn.Server(uvicorn.Config(create_app(settings, **create_kwargs), host="127.0.0.1", port=port,
                                           log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    base = f"http://127.0.0.1:{port}"
    try:
        wait_until_ready(base, alive=thread.is_alive)
        yield base
    finally:
        server.should_exit = True
        thread.join(timeout=30)


__all__ = ["FakeEngine", "default_model", "load_model", "live_server", "wait_ready", "wait_until_ready"]
