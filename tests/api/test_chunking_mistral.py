"""truncate: "chunk" with the Mistral recipes over HTTP (tiny random-weight checkpoints, the real Mistral
tokenizer): a fitting input is the plain vector bit for bit; a long query's windows each carry the
instruction; usage counts every window's tokens."""

from __future__ import annotations

from pathlib import Path

import httpx
import numpy as np
import pytest

from gigarouter.recipes.chunking import spans
from gigarouter.settings import ModelConfig, Settings
from tests.conftest import live_server

TINY = Path(__file__).parents[1] / "fixtures" / "tiny"
TASK = "Given a question, retrieve passages that answer it"
LONG = "Bees fly from flower to flower and carry pollen back to the hive. " * 30


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    models = (
        ModelConfig(name="llm2vec", recipe="llm2vec", dtype="float32", device="cpu", max_tokens=128,
                    weights=str(TINY / "mistral-instruct-v2"),
                    adapters=(str(TINY / "llm2vec-mntp"), str(TINY / "llm2vec-simcse"))),
        ModelConfig(name="linq", recipe="e5", dtype="float32", device="cpu", max_tokens=96, weights=str(TINY / "linq")),
    )
    settings = Settings(models=models, offline=True, data_dir=tmp_path_factory.mktemp("chunk"), cache="off")
    with live_server(settings) as url:
        yield url


def embed(base: str, model: str, **body) -> dict:
    r = httpx.post(f"{base}/v1/embeddings", json={"model": model, **body}, timeout=120)
    assert r.status_code == 200, r.text
    return r.json()


def vectors(body: dict) -> np.ndarray:
    return np.array([d["embedding"] for d in body["data"]], dtype=np.float32)


@pytest.mark.parametrize("model", ["llm2vec", "linq"])
def test_fitting_inputs_are_the_plain_vectors(base, model):
    for input_type in ("document", "query"):
        plain = embed(base, model, input=["bees make honey", "the moon"], input_type=input_type, instruction=TASK)
        chunked = embed(base, model, input=["bees make honey", "the moon"], input_type=input_type, instruction=TASK,
                        truncate="chunk")
        np.testing.assert_array_equal(vectors(chunked), vectors(plain))
        assert chunked["usage"] == plain["usage"]


@pytest.mark.parametrize("model", ["llm2vec", "linq"])
def test_a_long_query_is_pooled_from_windows_that_each_keep_the_instruction(base, model):
    body = embed(base, model, input=LONG, input_type="query", instruction=TASK, truncate="chunk",
                 normalize=False)
    info = httpx.post(f"{base}/tokenize", json={"inputs": LONG, "add_special_tokens": False},
                      headers={"x-gigarouter-model": model}).json()[0]
    content = [t["id"] for t in info]
    # the windows, sent as token-id queries: the recipe adds the instruction to each one
    room_probe = embed(base, model, input=[content[:8]], input_type="query", instruction=TASK, truncate="none")
    assert room_probe["usage"]["prompt_tokens"] > 8 + 2 + 8                 # the instruction is there
    per_token_overhead = room_probe["usage"]["prompt_tokens"] - 8
    room = {"llm2vec": 128, "linq": 96}[model] - per_token_overhead
    windows = [content[a:b] for a, b in spans(len(content), room)]
    assert len(windows) >= 3
    parts = embed(base, model, input=windows, input_type="query", instruction=TASK, truncate="none",
                  normalize=False)
    weights = np.array([len(w) for w in windows], dtype=np.float64)
    expected = weights @ vectors(parts).astype(np.float64) / weights.sum()
    np.testing.assert_allclose(vectors(body)[0], expected, rtol=1e-5, atol=1e-6)
    computed = sum(len(w) for w in windows) + per_token_overhead * len(windows)
    assert body["usage"]["prompt_tokens"] == parts["usage"]["prompt_tokens"] == computed
