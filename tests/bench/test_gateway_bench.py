"""The gateway benchmark's moving parts: the fast upstream, a pure gateway in front of it, the summary.

No wrk and no LiteLLM here: a handful of real HTTP requests through the same
upstream process and the same generated gateway config the benchmark uses.
"""

from __future__ import annotations

import base64

import httpx
import numpy as np
import pytest

from gigarouter.bench import report, servers
from gigarouter.bench.gateway import DIM, MODEL, gateway_config, request_body, summarize, upstream_spec
from gigarouter.settings import load_settings
from tests.conftest import free_port, live_server


@pytest.fixture(scope="module")
def upstream(tmp_path_factory):
    server = servers.start(upstream_spec(free_port(), DIM), log_dir=tmp_path_factory.mktemp("logs"), timeout=30)
    yield server.spec.url
    servers.stop(server)


def _post(url: str, body: str) -> httpx.Response:
    return httpx.post(url + "/v1/embeddings", content=body, headers={"content-type": "application/json"},
                      timeout=10, trust_env=False)


def test_the_fast_upstream_answers_fixed_unit_vectors_with_usage(upstream):
    floats = _post(upstream, request_body("float")).json()
    packed = _post(upstream, '{"model": "m", "input": ["a", "bb", "ccc"], "encoding_format": "base64"}').json()
    vector = np.asarray(floats["data"][0]["embedding"])
    assert vector.shape == (DIM,) and np.isclose(np.linalg.norm(vector), 1.0, atol=1e-6)
    assert floats["model"] == MODEL and floats["usage"]["prompt_tokens"] >= 1
    assert [d["index"] for d in packed["data"]] == [0, 1, 2] and packed["usage"]["prompt_tokens"] == 3
    decoded = np.frombuffer(base64.b64decode(packed["data"][2]["embedding"]), dtype="<f4")
    assert np.array_equal(decoded, vector.astype(np.float32))
    assert _post(upstream, "not json").status_code == 400
    assert httpx.get(upstream + "/nowhere", trust_env=False).status_code == 404


def test_a_pure_gateway_forwards_to_it(upstream, tmp_path):
    port = int(upstream.rsplit(":", 1)[1])
    config = tmp_path / "gateway.toml"
    config.write_text(gateway_config(port, tmp_path / "data"))
    settings = load_settings(config)
    assert settings.models == () and [p.name for p in settings.providers] == ["fast"]
    with live_server(settings) as base:
        for fmt in ("float", "base64"):
            r = _post(base, request_body(fmt))
            assert r.status_code == 200, r.text
            assert r.headers["x-gigarouter-provider"] == "fast"
            embedding = r.json()["data"][0]["embedding"]
            width = len(embedding) if fmt == "float" else len(base64.b64decode(embedding)) // 4
            assert width == DIM
            assert r.json()["usage"]["prompt_tokens"] >= 1
        assert _post(base, '{"model": "nope", "input": ["x"]}').status_code == 404


def _run(target, rnd, connections, rps, p50, p99, cpu=1.0, failed=0):
    return {"target": target, "round": rnd, "connections": connections, "requests_per_s": rps, "p50_ms": p50,
            "p99_ms": p99, "server_cpu_ms_per_request": cpu, "failed": failed}


def test_summary_pairs_rounds_and_takes_medians():
    runs = []
    for rnd, (g, lite) in enumerate([(1000, 100), (900, 100), (1200, 150)]):
        runs += [_run("direct", rnd, 1, 5000, 0.1, 0.5), _run("gigarouter", rnd, 1, 800, 1.1, 2.5),
                 _run("litellm", rnd, 1, 80, 10.1, 20.5, cpu=10.0),
                 _run("direct", rnd, 32, 20000, 1.0, 2.0), _run("gigarouter", rnd, 32, g, 30, 60),
                 _run("litellm", rnd, 32, lite, 300, 600, cpu=10.0)]
    summary = summarize(runs, ["direct", "gigarouter", "litellm"], 32)
    assert summary["targets"]["gigarouter"]["max_requests_per_s"] == 1000
    assert summary["per_round"]["gigarouter_vs_litellm_throughput"] == [10.0, 9.0, 8.0]
    assert summary["ratios"]["gigarouter_vs_litellm_throughput"] == 9.0
    assert summary["ratios"]["gigarouter_added_p50_ms"] == pytest.approx(1.0)
    assert summary["ratios"]["litellm_vs_gigarouter_cpu_per_request"] == 10.0
    text = report.gateway_markdown({"settings": {"concurrency": 32}, "summary": summary, "valid": True})
    assert "| gigarouter | 1.10 | 2.50 | 1.00 / 2.00 | 1,000.0 |" in text
    assert "throughput gigarouter / litellm, c=32: **9.00x** (per round 10.00, 9.00, 8.00)" in text
