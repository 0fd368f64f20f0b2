"""Every recipe in docs/clients.md, run as written against a live server (issue 15, part 2).

Each recipe runs twice: on all-minilm-l6-v2 (the honey question must land nearer the bees),
and on a tiny e5 model with the Linq card, whose query and document vectors differ, so that
a recipe that claims to mark queries is seen to do so. Vectors must equal what the server
answers the openai client for the same input. A recipe whose package is not installed is
skipped (the packages are in the `test` extra, except chromadb, which pulls in onnxruntime
and kubernetes).
"""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import numpy as np
import pytest

from gigarouter.settings import ModelConfig, Settings, default_model
from tests.conftest import live_server

ROOT = Path(__file__).resolve().parents[2]
TINY_LINQ = ROOT / "tests" / "fixtures" / "tiny" / "linq"
MINILM, E5 = "all-minilm-l6-v2", "tiny-linq"
DOCS = ["Bees make honey.", "The moon orbits the Earth."]
QUESTION = "Who makes honey?"
PACKAGES = {"openai": "openai", "langchain": "langchain_openai", "llamaindex": "llama_index.embeddings.openai_like",
            "haystack": "haystack", "litellm": "litellm", "chroma": "chromadb"}
#: Imports that warn on their own account (litellm: importlib.resources.open_text; chroma: its
#: legacy config notes); the recipes are what is under test, not those.
NOISY = pytest.mark.filterwarnings("ignore::DeprecationWarning")


def recipes() -> dict[str, str]:
    text = (ROOT / "docs" / "clients.md").read_text(encoding="utf-8")
    return dict(re.findall(r"<!-- recipe: (\w+) -->\n```python\n(.*?)```", text, re.DOTALL))


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    tiny = ModelConfig(name=E5, recipe="e5", weights=str(TINY_LINQ), card="linq-embed-mistral")
    settings = Settings(data_dir=tmp_path_factory.mktemp("clients"), models=(default_model(), tiny),
                        cpu_parallel_batches=1)
    with live_server(settings) as base:
        yield base


@pytest.fixture(scope="module")
def reference(server):
    """What the server answers the openai client: the vectors every recipe must reproduce."""
    from openai import OpenAI

    client = OpenAI(base_url=f"{server}/v1", api_key="unused", max_retries=0)

    def embed(model: str, texts: list[str], input_type: str = "document") -> np.ndarray:
        r = client.embeddings.create(model=model, input=texts, encoding_format="float",
                                     extra_body={"input_type": input_type})
        return np.array([d.embedding for d in r.data])

    return embed


def run(name: str, base: str, model: str) -> dict:
    code = recipes()[name]
    for old, new in (("http://127.0.0.1:8000", base), (MINILM, model), ("gigarouter-docs", f"gigarouter-docs-{model}"),
                     ('"dimensions": 256', '"dimensions": 256' if model == MINILM else '"dimensions": 16')):
        code = code.replace(old, new)
    namespace: dict = {"__name__": f"recipe_{name}"}
    exec(compile(code, f"docs/clients.md ({name})", "exec"), namespace)
    return namespace


def test_the_page_has_every_recipe():
    assert set(recipes()) == set(PACKAGES)


@pytest.mark.parametrize("name", [pytest.param(n, marks=[NOISY] if n in ("litellm", "chroma") else [])
                                  for n in PACKAGES])
def test_recipe(name, server, reference, monkeypatch):
    if importlib.util.find_spec(PACKAGES[name].split(".")[0]) is None:
        pytest.skip(f"{PACKAGES[name]} is not installed")
    monkeypatch.setenv("LITELLM_LOCAL_MODEL_COST_MAP", "True")    # as the page says, without internet
    monkeypatch.setenv("HAYSTACK_TELEMETRY_ENABLED", "False")

    got = run(name, server, MINILM)
    vectors, query = np.array(got["vectors"], dtype=np.float64), np.array(got["query_vector"], dtype=np.float64)
    assert vectors.shape == (2, 384) and query.shape == (384,)
    nearness = vectors @ query / np.linalg.norm(vectors, axis=1) / np.linalg.norm(query)
    assert nearness[0] > nearness[1], nearness
    np.testing.assert_allclose(vectors, reference(MINILM, DOCS), atol=1e-6)
    if name == "chroma":
        assert got["found"] == ["bees"]
    if name == "litellm":
        assert len(got["short_vector"]) == 256

    got = run(name, server, E5)       # random weights: no nearness to check, only exact vectors
    np.testing.assert_allclose(np.array(got["vectors"], dtype=np.float64), reference(E5, DOCS), atol=1e-6)
    as_query, as_document = reference(E5, [QUESTION], "query")[0], reference(E5, [QUESTION])[0]
    assert not np.allclose(as_query, as_document, atol=1e-3)          # the tiny e5 model tells them apart
    # Haystack cannot send input_type: its query is embedded as a document, and its e5 prefix
    # gives the query exactly.
    expected = as_document if name == "haystack" else as_query
    np.testing.assert_allclose(np.array(got["query_vector"], dtype=np.float64), expected, atol=1e-6)
    if name == "haystack":
        np.testing.assert_allclose(np.array(got["e5_query_vector"], dtype=np.float64), as_query, atol=1e-6)
    if name == "litellm":
        assert len(got["short_vector"]) == 16


def test_token_ids_outside_the_vocabulary_get_a_400_that_says_what_to_set(server):
    import httpx

    r = httpx.post(f"{server}/v1/embeddings", json={"model": MINILM, "input": [[9906, 1917, 74767]]}, timeout=30)
    assert r.status_code == 400
    error = r.json()["error"]
    assert error["code"] == "invalid_token_id" and "check_embedding_ctx_length=False" in error["message"]
    assert "outside the vocabulary [0, 30522)" in error["message"]


def test_langchain_by_default_sends_tiktoken_ids_and_is_told_what_to_set(server, monkeypatch):
    """The default OpenAIEmbeddings, as a new user writes it (tiktoken's cl100k_base from litellm's copy)."""
    pytest.importorskip("langchain_openai")
    tiktoken = pytest.importorskip("tiktoken")
    litellm = importlib.util.find_spec("litellm")
    if litellm is None or not litellm.submodule_search_locations:
        pytest.skip("needs tiktoken's cl100k_base: litellm ships a copy (no internet here)")
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR",
                       str(Path(litellm.submodule_search_locations[0]) / "litellm_core_utils" / "tokenizers"))
    tiktoken.get_encoding("cl100k_base")
    import openai
    from langchain_openai import OpenAIEmbeddings

    embeddings = OpenAIEmbeddings(model=MINILM, base_url=f"{server}/v1", api_key="unused", max_retries=0)
    with pytest.raises(openai.BadRequestError) as err:
        embeddings.embed_documents(["Photosynthesis turns light into chemical energy in chlorophyll."])
    assert err.value.body["code"] == "invalid_token_id"
    assert "check_embedding_ctx_length=False" in err.value.body["message"]
