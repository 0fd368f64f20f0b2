import numpy as np
import pytest

from gigarouter import Embedder


@pytest.fixture(scope="module")
def embedder():
    return Embedder("sentence-transformers/all-MiniLM-L6-v2")


def test_encode_returns_numpy_in_input_order(embedder):
    texts = ["short", "a much longer sentence about embeddings and retrieval " * 5, "mid length text here"]
    out = embedder.encode(texts)
    assert out.shape == (3, 384) and out.dtype == np.float32
    for i, text in enumerate(texts):
        np.testing.assert_allclose(out[i], embedder.encode(text), atol=2e-6)


def test_query_document_helpers_and_dimensions(embedder):
    q = embedder.encode_queries(["what is a llama"], dimensions=32)
    d = embedder.encode_corpus([{"title": "Llama", "text": "A South American camelid."}])
    assert q.shape == (1, 32) and d.shape == (1, 384)
    assert np.linalg.norm(q[0]) == pytest.approx(1.0, abs=1e-5)


def test_progress_callback_counts_every_input(embedder):
    seen = []
    embedder.encode([f"text {i}" for i in range(40)], progress=seen.append)
    assert sum(seen) == 40


def test_unknown_model_is_a_clear_error():
    with pytest.raises(ValueError, match="not configured"):
        Embedder("no-such-model")
