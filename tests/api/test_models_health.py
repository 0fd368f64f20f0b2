from __future__ import annotations

import dataclasses
import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import torch
from fastapi.testclient import TestClient

from gigarouter.api.app import create_app
from gigarouter.engine.heartbeat import Heartbeat
from gigarouter.engine.precision import choose_precision, cpu_flags
from gigarouter.engine.runner import TorchEngine
from gigarouter.pooling.pooling import PoolingMode
from gigarouter.settings import Settings, default_model
from tests.conftest import FakeEngine, fake_loader, wait_ready


def test_models_list_has_catalog_fields(real_client):
    body = real_client.get("/v1/models").json()
    assert body["object"] == "list"
    entry = next(m for m in body["data"] if m["id"] == "all-minilm-l6-v2")
    assert entry["object"] == "model" and isinstance(entry["created"], int) and entry["owned_by"]
    assert entry["dimensions"] == 384 and entry["max_tokens"] == 256
    assert entry["recipe"] == "sbert" and entry["license"] == "apache-2.0" and entry["status"] == "live"
    # The precision auto chose for this machine's CPU (float32, or bfloat16-mixed with AMX / AVX-512-BF16).
    assert entry["precision"] == choose_precision("auto", device_type="cpu", flags=cpu_flags()).name
    one = real_client.get("/v1/models/sentence-transformers/all-MiniLM-L6-v2")
    assert one.status_code == 200 and one.json()["id"] == "all-minilm-l6-v2"
    assert real_client.get("/v1/models/nope").status_code == 404


def test_dtype_in_the_config_sets_the_precision_models_and_the_log_show(tmp_path, caplog):
    mixed = dataclasses.replace(default_model(), dtype="bfloat16-mixed")
    with caplog.at_level(logging.INFO, logger="gigarouter"):
        with TestClient(create_app(Settings(data_dir=tmp_path, cache="off", models=(mixed,)))) as client:
            wait_ready(client, timeout=120)
            entry = client.get("/v1/models/all-minilm-l6-v2").json()
            vectors = client.post("/v1/embeddings", json={"model": "all-minilm-l6-v2", "input": ["hello"]})
    assert entry["precision"] == "bfloat16-mixed"
    assert vectors.status_code == 200 and len(vectors.json()["data"][0]["embedding"]) == 384
    said = [r.getMessage() for r in caplog.records]
    assert any("runs in bfloat16-mixed on cpu (set by dtype in the model's config)" in m for m in said), said
    assert any("ready on cpu in bfloat16-mixed" in m for m in said), said


def test_ready_is_503_until_loaded_and_health_is_200_throughout(tmp_path):
    release = threading.Event()
    load = fake_loader(FakeEngine())

    def slow_loader(config, settings):
        release.wait(timeout=30)
        return load(config, settings)

    with TestClient(create_app(Settings(data_dir=tmp_path), loader=slow_loader)) as client:
        assert client.get("/health").status_code == 200
        r = client.get("/ready")
        assert r.status_code == 503 and r.json()["error"]["code"] == "not_ready"
        r = client.post("/v1/embeddings", json={"model": "all-minilm-l6-v2", "input": "x"})
        assert r.status_code == 503
        release.set()
        wait_ready(client)


def test_failed_model_keeps_ready_503_with_reason(tmp_path):
    def broken(config, settings):
        raise RuntimeError("weights are corrupt")

    with TestClient(create_app(Settings(data_dir=tmp_path), loader=broken)) as client:
        deadline = time.monotonic() + 5
        while client.app.state.router.deployments[0].state == "loading" and time.monotonic() < deadline:
            time.sleep(0.01)
        r = client.get("/ready")
        assert r.status_code == 503 and "weights are corrupt" in r.json()["error"]["message"]


def test_metrics_expose_requests_queue_batches_and_stages(real_client):
    real_client.post("/v1/embeddings", json={"model": "all-minilm-l6-v2", "input": ["a", "b"]})
    text = real_client.get("/metrics").text
    assert 'gigarouter_requests_total{model="all-minilm-l6-v2",route="/v1/embeddings",status="200"}' in text
    assert "gigarouter_queue_tokens" in text
    assert 'gigarouter_batch_tokens_count{model="all-minilm-l6-v2"}' in text
    assert 'gigarouter_batch_sequences_bucket' in text
    for stage in ("tokenize", "queue", "inference"):
        assert f'gigarouter_stage_seconds_count{{model="all-minilm-l6-v2",stage="{stage}"}}' in text


def test_unknown_route_and_method_are_openai_shaped(real_client):
    r = real_client.get("/v2/nothing")
    assert r.status_code == 404 and "error" in r.json()
    r = real_client.get("/v1/embeddings")
    assert r.status_code == 405 and "error" in r.json()


class _Features(torch.nn.Module):
    """8 features per token id; holds the device (blocks) while ``hold`` is set."""

    def __init__(self) -> None:
        super().__init__()
        self.hold, self.entered, self.release = False, threading.Event(), threading.Event()

    def forward(self, ids, cu):
        if self.hold:
            self.entered.set()
            self.release.wait(30)
        x = ids.float().unsqueeze(1)
        return torch.cat([torch.sin(x * (k + 1)) for k in range(8)], dim=1)


def test_ready_answers_at_once_during_a_long_batch_and_names_a_stalled_device(tmp_path):
    """/ready runs on the event loop: it reads the engine's heartbeat and never waits for the device."""
    model = _Features()
    engine = TorchEngine(model, pooling=PoolingMode.MEAN, dim=8, device=torch.device("cpu"), token_budget=256,
                         max_seq_len=64, heartbeat=Heartbeat(stall_floor_s=1.0, stall_factor=1))
    with TestClient(create_app(Settings(data_dir=tmp_path), loader=fake_loader(engine))) as client:
        wait_ready(client)
        model.hold = True
        with ThreadPoolExecutor(1) as pool:
            pending = pool.submit(client.post, "/v1/embeddings", json={"model": "all-minilm-l6-v2", "input": ["x"] * 4})
            assert model.entered.wait(10)
            started = time.perf_counter()
            assert client.get("/ready").status_code == 200
            assert time.perf_counter() - started < 0.5
            time.sleep(1.1)
            r = client.get("/ready")
            assert r.status_code == 503
            assert "device not answering: a forward pass has run for" in r.json()["error"]["message"]
            model.hold = False
            model.release.set()
            assert pending.result(10).status_code == 200
        assert client.get("/ready").status_code == 200


def test_metrics_have_end_to_end_latency_per_route_and_model_and_process_metrics(real_client):
    real_client.post("/v1/embeddings", json={"model": "all-minilm-l6-v2", "input": "latency"})
    real_client.get("/v1/models")
    text = real_client.get("/metrics").text
    assert 'gigarouter_request_seconds_count{model="all-minilm-l6-v2",route="/v1/embeddings"}' in text
    assert 'gigarouter_request_seconds_bucket{le="600.0",model="all-minilm-l6-v2",route="/v1/embeddings"}' in text
    assert 'gigarouter_request_seconds_count{model="",route="/v1/models"}' in text
    for name in ("process_cpu_seconds_total", "process_resident_memory_bytes", "process_open_fds", "python_info"):
        assert name in text, name
