"""The e5 recipe (Linq, e5-mistral, SFR): instruction template, the appended </s>, the 4096 limit."""

from __future__ import annotations

from pathlib import Path

import pytest

from gigarouter.errors import InputTooLong
from gigarouter.pooling.pooling import PoolingMode
from gigarouter.recipes.base import Instructions, build_recipe
from gigarouter.recipes.e5 import E5Recipe

LINQ = Path(__file__).resolve().parents[1] / "fixtures" / "tiny" / "linq"
WEB = "Given a web search query, retrieve relevant passages that answer the query"
CARD = Instructions(default_query=WEB,
                    named={"NQ": "Given a question, retrieve Wikipedia passages that answer the question"})


@pytest.fixture(scope="module")
def recipe() -> E5Recipe:
    return E5Recipe.from_checkpoint(LINQ, instructions=CARD)


def decode(recipe, ids) -> str:
    return recipe.tokenizer.decode(ids, skip_special_tokens=False)


def test_the_tokenizer_drops_eos_and_the_recipe_puts_it_back(recipe):
    assert recipe.tokenizer.encode("hello").ids[-1] != recipe.eos_id        # tokenizer.json adds only <s>
    [p] = recipe.prepare_texts(["hello"])
    assert p.token_ids[0] == recipe.bos_id and p.token_ids[-1] == recipe.eos_id == 2
    assert p.pool_start == len(p.token_ids) - 1 and recipe.pooling is PoolingMode.LAST


@pytest.mark.parametrize(("input_type", "instruction", "prefix"), [
    ("document", None, ""),
    ("document", "NQ", ""),
    ("query", None, f"Instruct: {WEB}\nQuery: "),
    ("query", "NQ", "Instruct: Given a question, retrieve Wikipedia passages that answer the question\nQuery: "),
    ("query", "Find cats", "Instruct: Find cats\nQuery: "),
])
def test_query_template(recipe, input_type, instruction, prefix):
    [p] = recipe.prepare_texts(["where do cats sleep"], input_type=input_type, instruction=instruction)
    assert decode(recipe, p.token_ids) == f"<s> {prefix}where do cats sleep</s>"


def test_4096_limit_keeps_the_eos(recipe):
    text = "river " * 5000
    [end] = recipe.prepare_texts([text])
    assert len(end.token_ids) == 4096 and end.token_ids[-1] == recipe.eos_id
    with pytest.raises(InputTooLong, match="4094"):
        recipe.prepare_texts([text], truncate="none")


def test_truncate_start_keeps_the_instruction_and_the_end_of_the_query(recipe):
    text = " ".join(f"w{i}" for i in range(3000))
    [p] = recipe.prepare_texts([text], input_type="query", truncate="start")
    seen = decode(recipe, p.token_ids)
    assert len(p.token_ids) == 4096
    assert seen.startswith(f"<s> Instruct: {WEB}\nQuery:") and seen.endswith("w2999</s>")
    assert "w0 " not in seen


def test_token_ids_match_the_text_path(recipe):
    texts = ["how much protein should a female eat", "Café 🙂 東京", "x"]
    ids = [recipe.tokenizer.encode(t, add_special_tokens=False).ids for t in texts]
    for input_type in ("query", "document"):
        by_ids = recipe.prepare_token_ids(ids, input_type=input_type)
        assert by_ids == recipe.prepare_texts(texts, input_type=input_type)
    [cut] = recipe.prepare_token_ids([list(range(100, 5100))], truncate="start")
    assert cut.token_ids[1:-1] == list(range(100, 5100))[-4094:]


def test_build_recipe_and_max_tokens_override():
    recipe = build_recipe("e5", LINQ, card_instructions=CARD, max_tokens=64)
    assert isinstance(recipe, E5Recipe) and recipe.max_tokens == 64
    [p] = recipe.prepare_texts(["river " * 100])
    assert len(p.token_ids) == 64 and p.token_ids[-1] == recipe.eos_id
