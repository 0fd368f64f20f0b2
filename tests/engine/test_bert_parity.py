"""The default model equals sentence-transformers' encode(normalize_embeddings=True)."""

from __future__ import annotations

import numpy as np
import pytest
from sentence_transformers import SentenceTransformer

from gigarouter import Embedder
from gigarouter.engine.sources import embedded_model_dir

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


@pytest.fixture(scope="module")
def embedder() -> Embedder:
    return Embedder()


def test_matches_sentence_transformers(embedder, reference):
    ours = embedder.encode(TEXTS)
    cosines = (ours * reference).sum(axis=1)
    assert cosines.min() >= 0.99999, cosines


def test_a_mixed_batch_equals_each_input_alone(embedder):
    together = embedder.encode(TEXTS)
    alone = np.stack([embedder.encode(t) for t in TEXTS])
    np.testing.assert_allclose(together, alone, atol=2e-6)


def test_long_inputs_are_cut_at_256_tokens(embedder):
    items = embedder.recipe.prepare_texts([TEXTS[5]])
    assert len(items[0].token_ids) == 256
    assert items[0].token_ids[0] == embedder.recipe.cls_id and items[0].token_ids[-1] == embedder.recipe.sep_id
