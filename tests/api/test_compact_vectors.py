"""embedding_type on /v1/embeddings: int8, uint8, binary, ubinary as JSON integers or base64 bytes."""

from __future__ import annotations

import base64

import numpy as np
import pytest

from gigarouter.pooling.encoding import finish, quantize

MODEL = "all-minilm-l6-v2"
TEXTS = ["The quick brown fox", "jumps over the lazy dog"]


def embed(client, **body):
    return client.post("/v1/embeddings", json={"model": MODEL, "input": TEXTS, **body})


def floats(client, **body) -> np.ndarray:
    r = embed(client, normalize=False, **body)
    return np.array([d["embedding"] for d in r.json()["data"]], dtype=np.float32)


@pytest.mark.parametrize(("kind", "dtype", "width"), [("int8", "i1", 384), ("uint8", "u1", 384),
                                                       ("binary", "i1", 48), ("ubinary", "u1", 48)])
def test_integers_and_base64_are_the_same_compact_vector(real_client, kind, dtype, width):
    raw = floats(real_client)
    expected = quantize(finish(raw, dimensions=None, normalize=True), kind)
    as_json = embed(real_client, embedding_type=kind)
    assert as_json.status_code == 200
    got = np.array([d["embedding"] for d in as_json.json()["data"]])
    assert got.shape == (2, width) and all(isinstance(x, int) for x in as_json.json()["data"][0]["embedding"])
    np.testing.assert_array_equal(got, expected)
    as_b64 = embed(real_client, embedding_type=kind, encoding_format="base64").json()
    for row, item in zip(expected, as_b64["data"], strict=True):
        np.testing.assert_array_equal(np.frombuffer(base64.b64decode(item["embedding"]), dtype=dtype), row)
    assert as_json.json()["usage"] == as_b64["usage"]


def test_dimensions_truncate_then_quantize(real_client):
    raw = floats(real_client)
    got = np.array([d["embedding"] for d in embed(real_client, dimensions=64, embedding_type="int8").json()["data"]])
    np.testing.assert_array_equal(got, quantize(finish(raw, dimensions=64, normalize=True), "int8"))
    bits = embed(real_client, dimensions=20, embedding_type="ubinary").json()["data"][0]["embedding"]
    assert len(bits) == 3                                     # 20 bits, padded to 3 bytes


def test_the_same_input_always_gives_the_same_bytes(real_client):
    a = embed(real_client, embedding_type="int8", encoding_format="base64", cache=False).json()["data"]
    b = embed(real_client, input=[TEXTS[1], "something else", TEXTS[0]], embedding_type="int8",
              encoding_format="base64", cache=False).json()["data"]
    assert a[0]["embedding"] == b[2]["embedding"] and a[1]["embedding"] == b[0]["embedding"]


def test_bad_embedding_types_are_400(real_client):
    r = embed(real_client, embedding_type="int4")
    assert r.status_code == 400 and r.json()["error"]["param"] == "embedding_type"
    r = embed(real_client, embedding_type="int8", normalize=False)
    assert r.status_code == 400 and r.json()["error"]["param"] == "embedding_type"
    assert embed(real_client, embedding_type="binary", normalize=False).status_code == 200


def test_the_openai_client_passes_embedding_type(real_client):
    """With the openai client: encoding_format="float" gives integers; "base64" the raw bytes, undecoded."""
    from openai import OpenAI

    client = OpenAI(base_url="http://testserver/v1", api_key="x", http_client=real_client)
    r = client.embeddings.create(model=MODEL, input=TEXTS, encoding_format="float",
                                 extra_body={"embedding_type": "int8"})
    expected = np.array([d["embedding"] for d in embed(real_client, embedding_type="int8").json()["data"]])
    np.testing.assert_array_equal(np.array([d.embedding for d in r.data]), expected)
    r = client.embeddings.create(model=MODEL, input=TEXTS, encoding_format="base64",
                                 extra_body={"embedding_type": "ubinary"})
    assert isinstance(r.data[0].embedding, str) and len(base64.b64decode(r.data[0].embedding)) == 48
