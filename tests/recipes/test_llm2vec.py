"""The llm2vec recipe's rules one at a time (the goldens in tests/engine/test_parity.py prove the whole)."""

from __future__ import annotations

from pathlib import Path

import pytest

from gigarouter.errors import InputTooLong, InvalidRequest
from gigarouter.recipes.base import Instructions, build_recipe
from gigarouter.recipes.llm2vec import Llm2VecRecipe

MNTP = Path(__file__).resolve().parents[1] / "fixtures" / "tiny" / "llm2vec-mntp"
MSMARCO = "Given a web search query, retrieve relevant passages that answer the query:"
CARD = Instructions(default_query=MSMARCO,
                    named={"NQ": "Given a question, retrieve Wikipedia passages that answer the question:"})


@pytest.fixture(scope="module")
def recipe() -> Llm2VecRecipe:
    return Llm2VecRecipe.from_checkpoint(MNTP, instructions=CARD)


def text_of(recipe, prepared) -> tuple[str, str]:
    """(what the model sees, what is pooled), decoded."""
    ids = prepared.token_ids
    decode = recipe.tokenizer.decode
    return decode(ids, skip_special_tokens=False), decode(ids[prepared.pool_start:], skip_special_tokens=False)


def test_instruct_v2_wraps_in_inst_and_pools_text_plus_closing_tag(recipe):
    assert recipe.wrap_inst                           # from the MNTP config.json _name_or_path
    [p] = recipe.prepare_texts(["summit define"], input_type="query")
    seen, pooled = text_of(recipe, p)
    assert seen == f"<s> [INST] {MSMARCO} summit define [/INST]"
    assert pooled == "summit define [/INST]"
    assert p.token_ids[0] == 1


def test_other_bases_are_not_wrapped():
    plain = Llm2VecRecipe.from_checkpoint(MNTP, base_name="mistralai/Mistral-7B-v0.1")
    [p] = plain.prepare_texts(["hello"], input_type="query", instruction="Find it:")
    assert text_of(plain, p) == ("<s> Find it: hello", "hello")


@pytest.mark.parametrize(("input_type", "instruction", "expected"), [
    ("document", None, None),
    ("document", "NQ", None),                                  # documents never take an instruction
    ("query", None, MSMARCO),                                  # the card's default
    ("query", "NQ", "Given a question, retrieve Wikipedia passages that answer the question:"),
    ("query", "Retrieve recipes:", "Retrieve recipes:"),       # free text
    ("query", "", None),                                       # an explicit empty instruction
])
def test_instruction_resolution(recipe, input_type, instruction, expected):
    [p] = recipe.prepare_texts(["pasta"], input_type=input_type, instruction=instruction)
    seen, pooled = text_of(recipe, p)
    assert seen == (f"<s> [INST] {expected} pasta [/INST]" if expected else "<s> [INST] pasta [/INST]")
    assert pooled == "pasta [/INST]"


def long_text(words: int) -> str:
    return " ".join(f"word{i % 50} river" for i in range(words // 2))


def test_long_documents_keep_whole_words_up_to_400_tokens(recipe):
    text = long_text(600)
    assert recipe.count(text) > 512
    [end] = recipe.prepare_texts([text], truncate="end")
    [start] = recipe.prepare_texts([text], truncate="start")
    kept_end = recipe.shorten(text, "end", 0)
    kept_start = recipe.shorten(text, "start", 0)
    assert recipe.count(kept_end) <= 400 and text.startswith(kept_end)
    assert recipe.count(kept_start) <= 400 and text.endswith(kept_start)
    assert text_of(recipe, end)[1] == kept_end + " [/INST]"
    assert text_of(recipe, start)[1] == kept_start + " [/INST]"
    assert len(end.token_ids) <= 512


def test_truncate_none_refuses_what_the_model_would_cut(recipe):
    with pytest.raises(InputTooLong, match="text limit of 400"):
        recipe.prepare_texts([long_text(500)], truncate="none")
    with pytest.raises(InputTooLong, match="limit of 512"):
        recipe.prepare_texts(["short"], input_type="query", instruction="Find: " * 300, truncate="none")
    assert recipe.prepare_texts([long_text(100)], truncate="none")      # under the limits: fine


def test_token_ids_are_content_tokens_and_match_the_text_path(recipe):
    texts = ["how much protein should a female eat", "Café 🙂 東京", "x"]
    for input_type in ("query", "document"):
        from_text = recipe.prepare_texts(texts, input_type=input_type)
        ids = [recipe.tokenizer.encode(t, add_special_tokens=False).ids for t in texts]
        from_ids = recipe.prepare_token_ids(ids, input_type=input_type)
        assert from_ids == from_text


def test_token_ids_are_limited_in_tokens(recipe):
    seq = list(range(1000, 1900))
    [end] = recipe.prepare_token_ids([seq], truncate="end")
    [start] = recipe.prepare_token_ids([seq], truncate="start")
    tail = len(recipe._template_ids(None)[1])
    assert end.token_ids[end.pool_start:len(end.token_ids) - tail] == seq[:400]
    assert start.token_ids[start.pool_start:len(start.token_ids) - tail] == seq[-400:]
    with pytest.raises(InputTooLong):
        recipe.prepare_token_ids([seq], truncate="none")
    with pytest.raises(InvalidRequest, match="outside the vocabulary") as err:
        recipe.prepare_token_ids([[5, 32000]])
    assert "check_embedding_ctx_length=False" in err.value.message      # LangChain's tiktoken ids: what to set


def test_build_recipe_passes_the_base_name():
    wrapped = build_recipe("llm2vec", MNTP, card_instructions=CARD)
    assert isinstance(wrapped, Llm2VecRecipe) and wrapped.wrap_inst and wrapped.max_tokens == 512
    assert build_recipe("llm2vec", MNTP, card_instructions=CARD, max_tokens=256).max_tokens == 256
