"""The Embedder speaks sentence-transformers' encode dialect, checked against sentence-transformers itself
on the embedded model (the same weights); unknown keywords raise TypeError."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from sentence_transformers import SentenceTransformer
from sentence_transformers.util.quantization import quantize_embeddings

from gigarouter import Embedder
from gigarouter.engine.sources import embedded_model_dir

TEXTS = ["Hello world", "The food was delicious and the waiter was friendly.", "a", "Paris is in France."]


@pytest.fixture(scope="module")
def ours():
    # float32 whatever this CPU's auto precision is: these tests hold our answers to
    # sentence-transformers' at fp32's tolerances (bfloat16-mixed parity: tests/engine/test_bert_parity.py)
    from gigarouter.settings import default_model

    with Embedder(dataclasses.replace(default_model(), dtype="float32")) as embedder:
        yield embedder


@pytest.fixture(scope="module")
def st():
    return SentenceTransformer(str(embedded_model_dir()), device="cpu")


@pytest.mark.parametrize("kwargs", [
    {},
    {"normalize_embeddings": True},
    {"normalize_embeddings": False},
    {"batch_size": 2, "show_progress_bar": False},
    {"truncate_dim": 64, "normalize_embeddings": True},
    {"truncate_dim": 64, "normalize_embeddings": False},
    {"truncate_dim": 64},
])
def test_float_outputs_match_sentence_transformers(ours, st, kwargs):
    a, b = ours.encode(TEXTS, **kwargs), st.encode(TEXTS, **kwargs)
    assert type(a) is type(b) and a.shape == b.shape and a.dtype == b.dtype
    np.testing.assert_allclose(a, b, atol=2e-5)


def test_return_types_follow_convert_flags(ours, st):
    tensor = ours.encode(TEXTS, convert_to_tensor=True)
    assert isinstance(tensor, torch.Tensor) and tensor.shape == st.encode(TEXTS, convert_to_tensor=True).shape
    listed = ours.encode(TEXTS, convert_to_numpy=False)
    reference = st.encode(TEXTS, convert_to_numpy=False)
    assert isinstance(listed, list) and len(listed) == len(reference) and isinstance(listed[0], torch.Tensor)
    single = ours.encode("Hello world", convert_to_tensor=True)
    assert single.shape == st.encode("Hello world", convert_to_tensor=True).shape == (384,)


@pytest.mark.parametrize("precision", ["int8", "uint8", "binary", "ubinary"])
def test_precision_quantizes_as_sentence_transformers_does(ours, st, precision):
    ours_q = ours.encode(TEXTS, precision=precision)
    reference = quantize_embeddings(st.encode(TEXTS, normalize_embeddings=True), precision=precision)
    assert ours_q.dtype == reference.dtype and ours_q.shape == reference.shape
    # int8/uint8 steps sit on the batch's min..max: a float hair at a step edge may round one step apart
    assert np.abs(ours_q.astype(int) - reference.astype(int)).max() <= (0 if "binary" in precision else 1)


def test_similarity_and_dimension_and_query_document_helpers(ours, st):
    a, b = ours.encode(TEXTS[:2]), ours.encode(TEXTS[2:])
    sim = ours.similarity(a, b)
    assert isinstance(sim, torch.Tensor) and sim.shape == (2, 2)
    np.testing.assert_allclose(sim.numpy(), st.similarity(a, b).numpy(), atol=1e-6)
    assert ours.get_sentence_embedding_dimension() == ours.get_embedding_dimension() == 384
    assert st.get_embedding_dimension() == 384         # sentence-transformers 6 renamed it; both names work here
    np.testing.assert_allclose(ours.encode_query(TEXTS), st.encode_query(TEXTS), atol=2e-5)
    np.testing.assert_allclose(ours.encode_document(TEXTS), st.encode_document(TEXTS), atol=2e-5)


def test_unknown_and_misspelt_keywords_raise_type_error(ours):
    for bad in ({"normalise_embeddings": True}, {"batchsize": 4}, {"convert_to_tensors": True}, {"task_name": "x"}):
        with pytest.raises(TypeError, match="unexpected keyword"):
            ours.encode(TEXTS, **bad)
    with pytest.raises(TypeError, match="unexpected keyword"):
        ours.encode_query(TEXTS, promt="x")


def test_prompt_names_map_to_card_instructions_and_bad_ones_are_clear():
    from pathlib import Path

    from gigarouter.settings import ModelConfig, Settings

    linq = Path(__file__).resolve().parent / "fixtures" / "tiny" / "linq"
    with Embedder(ModelConfig(name="linq-embed-mistral", recipe="e5", weights=str(linq)),
                  settings=Settings(cache="off")) as e:
        assert "SciFact" in e.prompts and "query" in e.prompts
        named = e.encode(["a claim"], prompt_name="SciFact")
        np.testing.assert_allclose(named, e.encode(["a claim"], input_type="query", instruction="SciFact"), atol=1e-6)
        free = e.encode(["a claim"], prompt="Find the evidence")
        np.testing.assert_allclose(free, e.encode(["a claim"], input_type="query", instruction="Find the evidence"),
                                   atol=1e-6)
        np.testing.assert_allclose(e.encode_query(["a claim"]), e.encode(["a claim"], input_type="query"), atol=1e-6)
        assert not np.allclose(e.encode_query(["a claim"]), e.encode_document(["a claim"]))
        with pytest.raises(ValueError, match="not one of this model's prompts"):
            e.encode(["x"], prompt_name="NoSuchTask")
        with pytest.raises(TypeError, match="not both"):
            e.encode(["x"], prompt_name="SciFact", prompt="y")
        with pytest.raises(ValueError, match="precision"):
            e.encode(["x"], precision="int4")
