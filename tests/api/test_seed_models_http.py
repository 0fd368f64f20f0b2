"""The seed models' recipes over HTTP, with the openai client, against the reference's golden vectors.

The tiny checkpoints and golden vectors come from tests/fixtures (see
tests/fixtures/reference/README.md for how the references computed them).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from openai import OpenAI

from gigarouter.settings import ModelConfig, Settings
from tests.conftest import live_server

FIXTURES = Path(__file__).parents[1] / "fixtures"
TINY = FIXTURES / "tiny"


def golden(name: str) -> dict[str, dict]:
    return {c["name"]: c for c in json.loads((FIXTURES / "golden" / f"{name}.json").read_text())["cases"]}


@pytest.fixture(scope="module")
def client(tmp_path_factory):
    models = (
        ModelConfig(name="llm2vec-mistral-7b-instruct-v2", recipe="llm2vec", dtype="float32", device="cpu",
                    weights=str(TINY / "mistral-instruct-v2"),
                    adapters=(str(TINY / "llm2vec-mntp"), str(TINY / "llm2vec-simcse"))),
        ModelConfig(name="linq-embed-mistral", recipe="e5", dtype="float32", device="cpu",
                    weights=str(TINY / "linq")),
    )
    settings = Settings(models=models, offline=True, batch_token_budget=8192, data_dir=tmp_path_factory.mktemp("seed"))
    with live_server(settings) as base:
        yield OpenAI(base_url=f"{base}/v1", api_key="open", max_retries=0)


def cosines(response, expected: list[list[float]]) -> np.ndarray:
    ours = np.array([d.embedding for d in response.data], dtype=np.float64)
    ref = np.array(expected, dtype=np.float64)
    ref /= np.linalg.norm(ref, axis=1, keepdims=True)
    return (ours * ref).sum(axis=1)


def embed_case(client: OpenAI, model: str, case: dict, *, index: int) -> tuple:
    kind = case["input_types"][index]
    extra = {"input_type": kind}
    instruction = (case.get("instructions") or [None] * len(case["texts"]))[index]
    if kind == "query":
        extra["instruction"] = instruction if instruction is not None else ""
    return client.embeddings.create(model=model, input=case["texts"][index], extra_body=extra)


@pytest.mark.parametrize("model, golden_file, case_names", [
    ("llm2vec-mistral-7b-instruct-v2", "llm2vec",
     ["query_with_instruction", "query_empty_instruction", "document_short", "document_over_512_tokens", "unicode"]),
    ("linq-embed-mistral", "e5", ["query_with_instruction", "document_short", "document_over_4096_tokens", "unicode"]),
])
def test_queries_and_documents_match_the_reference(client, model, golden_file, case_names):
    cases = golden(golden_file)
    for name in case_names:
        case = cases[name]
        for i in range(len(case["texts"])):
            r = embed_case(client, model, case, index=i)
            cos = cosines(r, [case["vectors"][i]])
            assert cos.min() >= 0.99999, (name, i, cos)
            assert r.usage.prompt_tokens == len(case["token_ids"][i]), (name, i)


def test_default_query_instruction_comes_from_the_card(client):
    case = golden("e5")["query_with_instruction"]
    # The card's default query instruction is the one this golden case used.
    r = client.embeddings.create(model="linq-embed-mistral", input=case["texts"][0],
                                 extra_body={"input_type": "query"})
    assert cosines(r, [case["vectors"][0]]).min() >= 0.99999


def test_a_batch_over_http_equals_the_reference_batch(client):
    case = golden("e5")["document_short"]
    r = client.embeddings.create(model="linq-embed-mistral", input=case["texts"], encoding_format="float")
    assert cosines(r, case["vectors"]).min() >= 0.99999
