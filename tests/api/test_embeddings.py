"""POST /v1/embeddings through the real ASGI app."""

from __future__ import annotations

import base64
import threading

import numpy as np
import pytest

from tests.conftest import FakeEngine

MODEL = "all-minilm-l6-v2"


def embed(client, **body):
    return client.post("/v1/embeddings", json={"model": MODEL, **body})


def vectors(response) -> np.ndarray:
    return np.array([d["embedding"] for d in response.json()["data"]], dtype=np.float32)


def test_string_input_shape_usage_and_headers(real_client, minilm_recipe):
    r = embed(real_client, input="The food was delicious and the waiter...")
    assert r.status_code == 200
    body = r.json()
    assert body["object"] == "list" and body["model"] == MODEL
    assert body["data"][0]["object"] == "embedding" and body["data"][0]["index"] == 0
    assert len(body["data"][0]["embedding"]) == 384
    seen = len(minilm_recipe.prepare_texts(["The food was delicious and the waiter..."])[0].token_ids)
    assert body["usage"] == {"prompt_tokens": seen, "total_tokens": seen, "prompt_tokens_details": {"cached_tokens": 0}}
    assert r.headers["x-request-id"].startswith("req_")
    for stage in ("tokenize", "queue", "inference"):
        assert float(r.headers[f"x-{stage}-time"]) >= 0


def test_alias_and_request_id_passthrough(real_client):
    r = real_client.post("/v1/embeddings", json={"model": "sentence-transformers/all-MiniLM-L6-v2", "input": "x"},
                         headers={"x-request-id": "abc-123"})
    assert r.status_code == 200 and r.headers["x-request-id"] == "abc-123"
    assert r.json()["model"] == MODEL


def test_four_input_forms_agree(real_client, minilm_recipe):
    ids = minilm_recipe.tokenizer.encode("hello world", add_special_tokens=False).ids
    as_text = vectors(embed(real_client, input=["hello world", "hello world"]))
    as_ids = vectors(embed(real_client, input=ids))
    as_id_lists = vectors(embed(real_client, input=[ids, ids]))
    np.testing.assert_allclose(as_ids[0], as_text[0], atol=1e-6)
    np.testing.assert_allclose(as_id_lists, as_text, atol=1e-6)


def test_base64_decodes_to_the_float_vectors(real_client):
    floats = vectors(embed(real_client, input=["one", "two"]))
    r = embed(real_client, input=["one", "two"], encoding_format="base64")
    decoded = np.stack([np.frombuffer(base64.b64decode(d["embedding"]), dtype="<f4") for d in r.json()["data"]])
    np.testing.assert_array_equal(decoded, floats)


def test_dimensions_truncate_and_renormalise(real_client):
    full = vectors(embed(real_client, input="matryoshka", normalize=False))[0]
    short = vectors(embed(real_client, input="matryoshka", dimensions=64))[0]
    assert short.shape == (64,)
    np.testing.assert_allclose(short, full[:64] / np.linalg.norm(full[:64]), rtol=1e-5, atol=1e-6)


def test_vectors_are_normalised_unless_asked_not_to(real_client):
    assert np.linalg.norm(vectors(embed(real_client, input="x"))[0]) == pytest.approx(1.0, abs=1e-5)
    raw = vectors(embed(real_client, input="x", normalize=False))[0]
    assert abs(np.linalg.norm(raw) - 1.0) > 1e-3


def test_truncate_modes(real_client):
    long = "word " * 600
    end = embed(real_client, input=long)
    start = embed(real_client, input="tail " + long)
    assert end.status_code == start.status_code == 200
    assert end.json()["usage"]["prompt_tokens"] == 256
    refused = embed(real_client, input=long, truncate="none")
    assert refused.status_code == 400
    assert refused.json()["error"]["code"] == "context_length_exceeded"
    assert refused.json()["error"]["param"] == "input"


BAD_BODIES = [
    ({"input": []}, "input"),
    ({"input": ""}, "input"),
    ({"input": ["ok", ""]}, "input[1]"),
    ({"input": ["ok", 3]}, "input[1]"),
    ({"input": [[1, 2], 3]}, "input[1]"),
    ({"input": [[]]}, "input[0]"),
    ({"input": [1.5]}, "input[0]"),
    ({"input": [-1]}, "input"),
    ({"input": [True]}, "input[0]"),
    ({"input": {"text": "x"}}, "input"),
    ({"input": ["x"] * 2049}, "input"),
    ({"input": [999_999_999]}, "input"),
    ({"input": "x", "encoding_format": "int4"}, "encoding_format"),
    ({"input": "x", "dimensions": 0}, "dimensions"),
    ({"input": "x", "dimensions": 385}, "dimensions"),
    ({"input": "x", "dimensions": "12"}, "dimensions"),
    ({"input": "x", "input_type": "passage"}, "input_type"),
    ({"input": "x", "truncate": "middle"}, "truncate"),
    ({"input": "x", "normalize": "yes"}, "normalize"),
    ({"input": "x", "user": 5}, "user"),
    ({"input": "x", "temperature": 1}, "temperature"),
]


@pytest.mark.parametrize(("changes", "param"), BAD_BODIES)
def test_bad_inputs_are_400_with_param(real_client, changes, param):
    r = real_client.post("/v1/embeddings", json={"model": MODEL, **changes})
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert error["param"] == param and error["type"] == "invalid_request_error" and error["message"]


def test_missing_model_and_unknown_model(real_client):
    r = real_client.post("/v1/embeddings", json={"input": "x"})
    assert r.status_code == 400 and r.json()["error"]["param"] == "model"
    r = real_client.post("/v1/embeddings", json={"model": "gpt-5-embeddings", "input": "x"})
    assert r.status_code == 404 and r.json()["error"]["code"] == "model_not_found"


@pytest.mark.parametrize(("content", "code"), [
    (b"{not json", "invalid_json"),
    (b"\xff\xfe{}", "invalid_encoding"),
    (b"[1, 2]", None),
    (b"", "invalid_json"),
])
def test_malformed_bodies(real_client, content, code):
    r = real_client.post("/v1/embeddings", content=content, headers={"content-type": "application/json"})
    assert r.status_code == 400
    assert r.json()["error"]["code"] == code


def test_body_over_the_limit_is_413(fake_client_factory):
    client = fake_client_factory(max_body_bytes=1000)
    r = client.post("/v1/embeddings", json={"model": MODEL, "input": "x" * 2000})
    assert r.status_code == 413 and r.json()["error"]["code"] == "payload_too_large"

    def chunks():  # no Content-Length: the cap must hold while streaming
        yield b'{"model": "all-minilm-l6-v2", "input": "'
        for _ in range(20):
            yield b"x" * 100
        yield b'"}'

    r = client.post("/v1/embeddings", content=chunks(), headers={"content-type": "application/json"})
    assert r.status_code == 413


def test_full_queue_answers_429_with_retry_after(fake_client_factory):
    gate = threading.Event()
    engine = FakeEngine(gate=gate)
    client = fake_client_factory(engine, max_queued_tokens=40)
    results: list = []

    def call(text):
        results.append(client.post("/v1/embeddings", json={"model": MODEL, "input": text}))

    # First request occupies the (blocked) device, second fills the queue, third is refused.
    threads = [threading.Thread(target=call, args=("alpha " * 30,))]
    threads[0].start()
    assert engine.entered.wait(timeout=10)
    threads.append(threading.Thread(target=call, args=("beta " * 30,)))
    threads[1].start()
    _wait_for(lambda: _queued(client) > 0)
    refused = client.post("/v1/embeddings", json={"model": MODEL, "input": "gamma " * 30})
    gate.set()
    for t in threads:
        t.join(timeout=30)
    assert refused.status_code == 429
    assert refused.json()["error"]["type"] == "rate_limit_error"
    assert int(refused.headers["retry-after"]) >= 1
    assert [r.status_code for r in results] == [200, 200]


def _queued(client) -> float:
    for line in client.get("/metrics").text.splitlines():
        if line.startswith('gigarouter_queue_tokens{model="all-minilm-l6-v2"}'):
            return float(line.split()[-1])
    return 0.0


def _wait_for(predicate, timeout: float = 10.0) -> None:
    import time
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            time.sleep(0.1)
            return
        time.sleep(0.01)
    raise AssertionError("condition not reached")


def test_unexpected_errors_become_500_with_request_id(fake_client_factory):
    class Broken(FakeEngine):
        def embed(self, batch, *, concurrent=False):
            raise RuntimeError("secret internal detail")

    client = fake_client_factory(Broken())
    client.raise_server_exceptions = False
    r = client.post("/v1/embeddings", json={"model": MODEL, "input": "x"})
    assert r.status_code == 500
    assert "secret" not in r.text
    assert r.headers["x-request-id"] in r.json()["error"]["message"]


def test_a_sequence_out_of_memory_alone_is_a_503_with_retry_after_and_its_batch_mates_succeed(fake_client_factory):
    from gigarouter.errors import EngineOutOfMemory

    class OutOfMemoryOver100(FakeEngine):
        def __init__(self, **kwargs) -> None:
            super().__init__(**kwargs)
            self.attempts: list[list[int]] = []

        def embed(self, batch, *, concurrent=False):
            self.attempts.append(batch.lengths.tolist())
            if batch.num_tokens > 100:
                raise EngineOutOfMemory("does not fit")
            return super().embed(batch, concurrent=concurrent)

    gate = threading.Event()
    engine = OutOfMemoryOver100(gate=gate)
    client = fake_client_factory(engine)
    results: dict[str, object] = {}

    def call(name, text):
        results[name] = client.post("/v1/embeddings", json={"model": MODEL, "input": text})

    # The first request holds the device, so the next three wait and then share one batch.
    texts = {"blocker": "first", "small": "hello there", "huge": "word " * 200, "other": "good morning"}
    threads = [threading.Thread(target=call, args=item) for item in texts.items()]
    threads[0].start()
    assert engine.entered.wait(timeout=10)
    for t in threads[1:]:
        t.start()
    _wait_for(lambda: _queued_sequences(client) == 3)
    gate.set()
    for t in threads:
        t.join(timeout=30)

    huge = results["huge"]
    assert huge.status_code == 503 and int(huge.headers["retry-after"]) >= 1
    assert huge.json()["error"]["code"] == "device_out_of_memory"
    assert huge.json()["error"]["type"] == "server_error" and "message" in huge.json()["error"]
    for name in ("blocker", "small", "other"):
        assert results[name].status_code == 200, results[name].text
        np.testing.assert_array_equal(vectors(results[name]), vectors(embed(client, input=texts[name])))  # alone
    assert any(len(a) == 3 and max(a) > 100 for a in engine.attempts)   # the huge one did share a batch


def _queued_sequences(client) -> float:
    for line in client.get("/metrics").text.splitlines():
        if line.startswith('gigarouter_queue_sequences{model="all-minilm-l6-v2"}'):
            return float(line.split()[-1])
    return 0.0
