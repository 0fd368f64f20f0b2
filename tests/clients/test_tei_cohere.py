"""TEI's and Cohere's own client packages, unmodified, against a real server on a real socket.

Each client's vectors are compared with what /v1/embeddings gives for the same input (same engine).
LangChain's HuggingFaceEndpointEmbeddings is tested where langchain-huggingface is installed (it pins
huggingface-hub below 2, which the rest of the test environment has moved past: docs/clients.md).
"""

from __future__ import annotations

import base64

import httpx
import numpy as np
import pytest

from tests.conftest import live_server

MODEL = "all-minilm-l6-v2"
TEXTS = ["The quick brown fox", "jumps over the lazy dog", "Ünïcödé 日本語"]


@pytest.fixture(scope="module")
def base():
    with live_server() as url:
        yield url


def openai_vectors(base: str, texts: list[str], **extra) -> np.ndarray:
    r = httpx.post(f"{base}/v1/embeddings", json={"model": MODEL, "input": texts, **extra}, timeout=60)
    assert r.status_code == 200, r.text
    return np.array([d["embedding"] for d in r.json()["data"]], dtype=np.float32)


def test_huggingface_hub_feature_extraction(base):
    from huggingface_hub import InferenceClient

    expected = openai_vectors(base, TEXTS)
    for url in (base, f"{base}/embed"):            # TEI's root route and /embed
        with InferenceClient(model=url, token="unused-in-open-mode") as client:
            got = client.feature_extraction(TEXTS)
        assert got.shape == (3, 384)
        np.testing.assert_array_equal(got, expected)
    with InferenceClient(model=base) as client:
        query = client.feature_extraction("what is a fox?", prompt_name="query", normalize=False)
    np.testing.assert_array_equal(query[0], openai_vectors(base, ["what is a fox?"], input_type="query",
                                                           normalize=False)[0])


def test_huggingface_hub_sees_tei_errors(base):
    from huggingface_hub import InferenceClient
    from huggingface_hub.errors import HfHubHTTPError

    with InferenceClient(model=base) as client:
        with pytest.raises(HfHubHTTPError) as err:
            client.feature_extraction("word " * 600)      # TEI's default: truncate=false
        status, body = err.value.response.status_code, err.value.response.json()
        del err
        long = client.feature_extraction("word " * 600, truncate=True)
        left = client.feature_extraction("word " * 600 + "end", truncate=True, truncation_direction="Left")
    assert status == 400
    assert body["error_type"] == "Validation" and "600 tokens" in body["error"] and "truncate=true" in body["error"]
    np.testing.assert_array_equal(long, openai_vectors(base, ["word " * 600]))
    np.testing.assert_array_equal(left, openai_vectors(base, ["word " * 600 + "end"], truncate="start"))


def test_tei_info_and_tokenize(base):
    info = httpx.get(f"{base}/info").json()
    assert info["max_input_length"] == 256 and info["model_type"] == {"embedding": {"pooling": "mean"}}
    assert info["max_client_batch_size"] >= 1 and "query" in info["prompts"]
    tokens = httpx.post(f"{base}/tokenize", json={"inputs": ["hello world"]}).json()
    assert [t["text"] for t in tokens[0]] == ["[CLS]", "hello", "world", "[SEP]"]
    assert [t["special"] for t in tokens[0]] == [True, False, False, True]
    bare = httpx.post(f"{base}/tokenize", json={"inputs": "hello world", "add_special_tokens": False}).json()
    assert [(t["text"], t["start"], t["stop"]) for t in bare[0]] == [("hello", 0, 5), ("world", 6, 11)]
    r = httpx.post(f"{base}/tokenize", json={"inputs": []})
    assert r.status_code == 400 and r.json()["error_type"] == "Validation"


def test_llama_index_tei_embedding(base):
    from llama_index.embeddings.text_embeddings_inference import TextEmbeddingsInference

    embed = TextEmbeddingsInference(model_name=MODEL, base_url=base, timeout=60)
    got = np.array(embed.get_text_embedding_batch(TEXTS), dtype=np.float32)
    np.testing.assert_array_equal(got, openai_vectors(base, TEXTS))
    np.testing.assert_array_equal(np.array(embed.get_query_embedding("a fox"), dtype=np.float32),
                                  openai_vectors(base, ["a fox"])[0])


def test_langchain_huggingface_endpoint_embeddings(base):
    pytest.importorskip("langchain_huggingface", reason="langchain-huggingface pins huggingface-hub<2")
    from langchain_huggingface import HuggingFaceEndpointEmbeddings

    embed = HuggingFaceEndpointEmbeddings(model=base, huggingfacehub_api_token="unused-in-open-mode")
    got = np.array(embed.embed_documents(TEXTS), dtype=np.float32)
    np.testing.assert_array_equal(got, openai_vectors(base, TEXTS))


@pytest.fixture
def cohere_client(base):
    import cohere

    with httpx.Client(timeout=60) as http:      # ours, so that it is closed (the client's own never is)
        yield cohere.ClientV2(api_key="unused-in-open-mode", base_url=base, httpx_client=http)


def test_cohere_client_embed_all_types(base, cohere_client):
    client = cohere_client
    r = client.embed(model=MODEL, texts=TEXTS, input_type="search_document",
                     embedding_types=["float", "int8", "uint8", "binary", "ubinary", "base64"])
    floats = openai_vectors(base, TEXTS)
    np.testing.assert_array_equal(np.array(r.embeddings.float_, dtype=np.float32), floats)
    for kind in ("int8", "uint8", "binary", "ubinary"):
        ours = openai_vectors(base, TEXTS, embedding_type=kind)
        np.testing.assert_array_equal(np.array(getattr(r.embeddings, kind)), ours)
    decoded = np.frombuffer(base64.b64decode(r.embeddings.base64[0]), dtype="<f4")
    np.testing.assert_array_equal(decoded, floats[0])
    assert r.meta.billed_units.input_tokens == httpx.post(
        f"{base}/v1/embeddings", json={"model": MODEL, "input": TEXTS}).json()["usage"]["prompt_tokens"]
    assert r.texts == TEXTS


def test_cohere_client_query_dimension_and_errors(base, cohere_client):
    from cohere.errors import BadRequestError

    client = cohere_client
    r = client.embed(model=MODEL, texts=["a fox?"], input_type="search_query", embedding_types=["float"],
                     output_dimension=128, truncate="NONE")
    np.testing.assert_array_equal(np.array(r.embeddings.float_, dtype=np.float32),
                                  openai_vectors(base, ["a fox?"], input_type="query", dimensions=128))
    with pytest.raises(BadRequestError) as err:
        client.embed(model=MODEL, texts=["x"], input_type="search_query", embedding_types=["float64"])
    assert "embedding_types" in err.value.body["message"]
    with pytest.raises(BadRequestError) as err:
        client.embed(model=MODEL, texts=["word " * 600], input_type="search_document", truncate="NONE")
    assert "truncate END or START" in err.value.body["message"] and err.value.status_code == 400
