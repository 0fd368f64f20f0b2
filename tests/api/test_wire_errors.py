"""Bad input on the TEI and Cohere routes: a 4xx in each protocol's own error shape, never a 500."""

from __future__ import annotations

import pytest

from gigarouter.errors import InvalidRequest
from gigarouter.router.route import Route

MODEL = "all-minilm-l6-v2"


@pytest.mark.parametrize(("body", "param_word"), [
    ([], "object"),
    ({"inputs": {"a": 1}}, "inputs"),
    ({"inputs": []}, "inputs"),
    ({"inputs": ["ok", 3]}, "inputs[1]"),
    ({"inputs": "x", "truncation_direction": 5}, "truncation_direction"),
    ({"inputs": "x", "truncate": "yes"}, "truncate"),
    ({"inputs": "x", "prompt_name": "nope"}, "prompt_name"),
    ({"inputs": "x", "prompt_name": {"a": 1}}, "prompt_name"),
    ({"inputs": "x", "dimensions": 0}, "dimensions"),
    ({"inputs": "x", "dimensions": 10_000}, "dimensions"),
    ({"inputs": "x", "model": "all-minilm-l6-v2"}, "model"),
    ({"normalize": True}, "inputs"),
])
def test_tei_embed_refuses_in_tei_shape(real_client, body, param_word):
    for path in ("/embed", "/"):
        r = real_client.post(path, json=body)
        assert r.status_code == 400, r.text
        assert set(r.json()) == {"error", "error_type"} and r.json()["error_type"] == "Validation"
        assert param_word in r.json()["error"]


def test_tei_unknown_model_header_is_404_in_tei_shape(real_client):
    r = real_client.post("/embed", json={"inputs": "x"}, headers={"x-gigarouter-model": "nope"})
    assert r.status_code == 404 and r.json()["error_type"] == "Validation"
    r = real_client.get("/info", headers={"x-gigarouter-model": "nope"})
    assert r.status_code == 404 and "error_type" in r.json()
    r = real_client.post("/tokenize", json={"inputs": "x", "add_special_tokens": "no"})
    assert r.status_code == 400 and r.json()["error_type"] == "Validation"


@pytest.mark.parametrize("body", [
    {"model": MODEL, "texts": "x", "input_type": "search_query"},
    {"model": MODEL, "texts": [], "input_type": "search_query"},
    {"model": MODEL, "texts": [""], "input_type": "search_query"},
    {"model": MODEL, "texts": ["x"]},
    {"model": MODEL, "texts": ["x"], "input_type": {"a": 1}},
    {"model": MODEL, "texts": ["x"], "input_type": "search_query", "truncate": ["END"]},
    {"model": MODEL, "texts": ["x"], "input_type": "search_query", "embedding_types": "float"},
    {"model": MODEL, "texts": ["x"], "input_type": "search_query", "embedding_types": [{"a": 1}]},
    {"model": MODEL, "texts": ["x"], "input_type": "search_query", "images": ["data:..."]},
    {"model": MODEL, "texts": ["x"], "input_type": "search_query", "output_dimension": -1},
    {"texts": ["x"], "input_type": "search_query"},
])
def test_cohere_embed_refuses_in_cohere_shape(real_client, body):
    r = real_client.post("/v2/embed", json=body)
    assert r.status_code == 400, r.text
    assert set(r.json()) == {"id", "message"} and r.json()["message"]


def test_cohere_unknown_model_is_404(real_client):
    r = real_client.post("/v2/embed", json={"model": "nope", "texts": ["x"], "input_type": "search_query"})
    assert r.status_code == 404 and set(r.json()) == {"id", "message"}


def test_chunk_needs_the_tokenizer_here():
    route = Route(name="remote-only", card=None, bindings=[])
    with pytest.raises(InvalidRequest) as err:
        route.prepare_windows(texts=["x"], token_ids=None)
    assert err.value.param == "truncate"
