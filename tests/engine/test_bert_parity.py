"""The default model equals sentence-transformers' encode(normalize_embeddings=True), in every
precision that is a CPU default somewhere: float32, and bfloat16-mixed (CPUs with AMX or
AVX-512-BF16; engine/precision.py). The bench corpus keeps bfloat16-mixed at >= 0.99997 (issue 18's
bar; docs/benchmarks.md, section 10); these texts include "?" (3 tokens: nothing for the mean to
average rounding over), which measured 0.999947, so the bar here is 0.9999."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from sentence_transformers import SentenceTransformer

from gigarouter import Embedder
from gigarouter.engine.sources import embedded_model_dir
from gigarouter.settings import Settings, default_model

#: precision -> (min cosine to sentence-transformers, max abs difference of a batch to its items alone)
BARS = {"float32": (0.99999, 2e-6), "bfloat16-mixed": (0.9999, 2e-3)}

TEXTS = [
    "a",
    "?",
    "Hello world",
    "The food was delicious and the waiter was friendly.",
    "Ünïcödé: naïve café, 日本語のテキスト, русский текст, emoji 🙂🚀, math ∑∫√",
    "Long input that runs past the 256 word-piece limit. " * 60,
    "tab\tseparated\nand multi-line\ttext   with   spaces",
    " ".join(f"token{i}" for i in range(300)),
]


@pytest.fixture(scope="module")
def reference() -> np.ndarray:
    model = SentenceTransformer(str(embedded_model_dir()), device="cpu")
    return model.encode(TEXTS, normalize_embeddings=True, batch_size=4)


@pytest.fixture(scope="module", params=list(BARS))
def embedder(request) -> Embedder:
    config = dataclasses.replace(default_model(), dtype=request.param)
    return Embedder(config, settings=Settings(cache="off"))


def test_matches_sentence_transformers(embedder, reference):
    assert embedder.engine.precision == embedder.config.dtype
    ours = embedder.encode(TEXTS)
    cosines = (ours * reference).sum(axis=1)
    assert cosines.min() >= BARS[embedder.config.dtype][0], cosines


def test_a_mixed_batch_equals_each_input_alone(embedder):
    together = embedder.encode(TEXTS)
    alone = np.stack([embedder.encode(t) for t in TEXTS])
    np.testing.assert_allclose(together, alone, atol=BARS[embedder.config.dtype][1])


def test_long_inputs_are_cut_at_256_tokens(embedder):
    items = embedder.recipe.prepare_texts([TEXTS[5]])
    assert len(items[0].token_ids) == 256
    assert items[0].token_ids[0] == embedder.recipe.cls_id and items[0].token_ids[-1] == embedder.recipe.sep_id
