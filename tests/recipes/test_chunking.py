"""truncate="chunk" windows, with the real tokenizers: MiniLM's WordPiece and the Mistral SentencePiece model."""

from __future__ import annotations

from pathlib import Path

import pytest

from gigarouter.recipes.base import Instructions
from gigarouter.recipes.chunking import OVERLAP_DIVISOR, prepare_windows, spans
from gigarouter.recipes.e5 import E5Recipe
from gigarouter.recipes.llm2vec import Llm2VecRecipe

TINY = Path(__file__).resolve().parents[1] / "fixtures" / "tiny"
WEB = "Given a web search query, retrieve relevant passages that answer the query"


def test_spans_cover_everything_with_the_documented_overlap():
    assert spans(10, 254) == [(0, 10)]
    assert spans(254, 254) == [(0, 254)]
    windows = spans(1000, 254)
    overlap = 254 // OVERLAP_DIVISOR
    assert windows[0] == (0, 254) and windows[-1][1] == 1000
    for (_, b0), (a1, b1) in zip(windows, windows[1:], strict=False):
        assert b0 - a1 == overlap and b1 - a1 <= 254
    covered = set()
    for a, b in windows:
        covered.update(range(a, b))
    assert covered == set(range(1000))


def test_a_fitting_input_is_prepared_exactly_as_without_chunking(minilm_recipe):
    texts = ["a short sentence", "another one, a little longer than the first"]
    windowed = prepare_windows(minilm_recipe, texts=texts, token_ids=None, input_type="document", instruction=None)
    assert windowed.items == minilm_recipe.prepare_texts(texts)
    assert [len(w) for w in windowed.weights] == [1, 1]


def test_a_long_text_becomes_windows_of_its_own_tokens(minilm_recipe):
    text = " ".join(f"word{i}" for i in range(400))
    content = minilm_recipe.tokenizer.encode(text, add_special_tokens=False).ids
    windowed = prepare_windows(minilm_recipe, texts=["short", text], token_ids=None, input_type="document",
                               instruction=None)
    room = minilm_recipe.max_tokens - 2
    expected = [content[a:b] for a, b in spans(len(content), room)]
    assert len(expected) > 1
    assert windowed.contents[1:] == expected
    assert windowed.weights == [[1], [len(w) for w in expected]]
    for window, item in zip(expected, windowed.items[1:], strict=True):
        assert item.token_ids == [minilm_recipe.cls_id, *window, minilm_recipe.sep_id]
        assert len(item.token_ids) <= minilm_recipe.max_tokens


@pytest.fixture(scope="module")
def e5() -> E5Recipe:
    return E5Recipe.from_checkpoint(TINY / "linq", instructions=Instructions(default_query=WEB), max_tokens=64)


def test_e5_query_windows_each_keep_the_instruction(e5):
    text = "the river flows to the sea and " * 40
    windowed = prepare_windows(e5, texts=[text], token_ids=None, input_type="query", instruction=None)
    [plain_prefix] = e5.prepare_token_ids([[]], input_type="query", instruction=None, truncate="end")
    head = plain_prefix.token_ids[:-1]                                     # <s> + instruction, then </s>
    assert len(windowed.items) > 1
    for window, item in zip(windowed.contents, windowed.items, strict=True):
        assert item.token_ids == [*head, *window, e5.eos_id]
        assert len(item.token_ids) <= e5.max_tokens
    assert windowed.contents[0] == e5.tokenizer.encode(text, add_special_tokens=False).ids[:len(windowed.contents[0])]


def test_llm2vec_windows_respect_the_400_token_document_limit():
    recipe = Llm2VecRecipe.from_checkpoint(TINY / "llm2vec-mntp", instructions=Instructions(default_query=WEB))
    text = "bees fly over fields of flowers " * 150
    windowed = prepare_windows(recipe, texts=[text], token_ids=None, input_type="query", instruction=None)
    assert len(windowed.items) > 1
    assert max(len(c) for c in windowed.contents) == recipe.window_room(input_type="query", instruction=None) <= 400
    for item, window in zip(windowed.items, windowed.contents, strict=True):
        assert len(item.token_ids) <= recipe.max_tokens
        assert len(item.token_ids) - item.pool_start >= len(window)        # the text is pooled, not the instruction
    short = prepare_windows(recipe, texts=["bees fly"], token_ids=None, input_type="query", instruction=None)
    assert short.items == recipe.prepare_texts(["bees fly"], input_type="query")
