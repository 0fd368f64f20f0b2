"""truncate: "chunk" on /v1/embeddings with the real model and tokenizer: windows, weights, usage."""

from __future__ import annotations

import numpy as np

from gigarouter.recipes.chunking import spans

MODEL = "all-minilm-l6-v2"
LONG = " ".join(f"token{i % 97} and more words" for i in range(200))


def embed(client, **body):
    r = client.post("/v1/embeddings", json={"model": MODEL, **body})
    assert r.status_code == 200, r.text
    return r.json()


def vectors(body) -> np.ndarray:
    return np.array([d["embedding"] for d in body["data"]], dtype=np.float32)


def test_an_input_that_fits_gives_exactly_the_plain_vector(real_client):
    texts = ["a short text", "another, somewhat longer, short text"]
    plain = embed(real_client, input=texts, cache=False)
    chunked = embed(real_client, input=texts, truncate="chunk", cache=False)
    np.testing.assert_array_equal(vectors(chunked), vectors(plain))
    assert chunked["usage"] == plain["usage"]
    raw = embed(real_client, input=texts, truncate="chunk", normalize=False, cache=False)
    np.testing.assert_array_equal(vectors(raw), vectors(embed(real_client, input=texts, normalize=False, cache=False)))


def test_a_long_input_is_the_token_weighted_mean_of_its_windows(real_client, minilm_recipe):
    content = minilm_recipe.tokenizer.encode(LONG, add_special_tokens=False).ids
    windows = [content[a:b] for a, b in spans(len(content), minilm_recipe.max_tokens - 2)]
    assert len(windows) >= 3
    # each window alone, as token ids, unnormalised: what the chunked request must pool
    per_window = vectors(embed(real_client, input=windows, truncate="none", normalize=False))
    weights = np.array([len(w) for w in windows], dtype=np.float64)
    expected = (weights @ per_window.astype(np.float64)) / weights.sum()
    expected /= np.linalg.norm(expected)
    body = embed(real_client, input=["short one", LONG], truncate="chunk")
    got = vectors(body)
    np.testing.assert_allclose(got[1], expected, atol=2e-6)
    np.testing.assert_array_equal(got[0], vectors(embed(real_client, input=["short one"]))[0])
    # usage counts every token computed: each window with its [CLS] and [SEP], the overlaps included
    assert body["usage"]["prompt_tokens"] == sum(len(w) + 2 for w in windows) + len(
        minilm_recipe.prepare_texts(["short one"])[0].token_ids)
    assert body["usage"]["prompt_tokens"] > len(content) + 2


def test_chunk_differs_from_cutting_and_none_still_refuses(real_client):
    cut = vectors(embed(real_client, input=LONG))
    chunked = vectors(embed(real_client, input=LONG, truncate="chunk"))
    assert float(cut[0] @ chunked[0]) < 0.9999
    r = real_client.post("/v1/embeddings", json={"model": MODEL, "input": LONG, "truncate": "none"})
    assert r.status_code == 400 and r.json()["error"]["code"] == "context_length_exceeded"


def test_token_id_inputs_chunk_too(real_client, minilm_recipe):
    content = minilm_recipe.tokenizer.encode(LONG, add_special_tokens=False).ids
    by_ids = vectors(embed(real_client, input=[content], truncate="chunk"))
    by_text = vectors(embed(real_client, input=LONG, truncate="chunk"))
    np.testing.assert_array_equal(by_ids, by_text)


def test_chunk_with_int8_and_dimensions(real_client):
    floats = vectors(embed(real_client, input=LONG, truncate="chunk", dimensions=32))
    q = embed(real_client, input=LONG, truncate="chunk", dimensions=32, embedding_type="int8")["data"][0]["embedding"]
    np.testing.assert_array_equal(q, np.rint(floats[0] * 127).astype(np.int8))
