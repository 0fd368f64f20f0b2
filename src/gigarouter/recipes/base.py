"""The recipe interface and what the families share (tokenizer loading, truncation, validation).

A recipe is pure CPU work and runs off the device thread. It owns every
model-specific formatting rule: instruction templates, special tokens,
context limits and which positions are pooled.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Protocol

from tokenizers import Tokenizer

from gigarouter.errors import InputTooLong, InvalidRequest, ModelLoadError
from gigarouter.pooling.modes import PoolingMode

InputType = Literal["query", "document"]
Truncate = Literal["end", "start", "none"]


@dataclass(frozen=True)
class PreparedInput:
    """One sequence ready for the engine."""

    token_ids: list[int]   # exactly what the model sees, special tokens included
    pool_start: int        # first position of the pooled span (0 = pool everything)


@dataclass(frozen=True)
class Instructions:
    """What a model's catalog card says about query instructions."""

    default_query: str | None = None
    named: dict[str, str] | None = None   # MTEB task name -> instruction

    def resolve(self, input_type: InputType, instruction: str | None) -> str | None:
        """The instruction to apply: a named task's string, the free text given, or the default."""
        if input_type == "document":
            return None
        if instruction is None:
            return self.default_query
        if self.named and instruction in self.named:
            return self.named[instruction]
        return instruction


class Recipe(Protocol):
    name: str
    pooling: PoolingMode
    max_tokens: int        # longest sequence the model sees, special tokens included
    vocab_size: int

    def prepare_texts(self, texts: Sequence[str], *, input_type: InputType, instruction: str | None,
                      truncate: Truncate) -> list[PreparedInput]: ...

    def prepare_token_ids(self, sequences: Sequence[Sequence[int]], *, input_type: InputType,
                          instruction: str | None, truncate: Truncate) -> list[PreparedInput]: ...

    def window_room(self, *, input_type: InputType, instruction: str | None) -> int:
        """How many content tokens one sequence holds beside what the recipe adds (``truncate: "chunk"``)."""
        ...


def load_tokenizer(checkpoint_dir: Path) -> Tokenizer:
    path = checkpoint_dir / "tokenizer.json"
    if not path.exists():
        raise ModelLoadError(f"no tokenizer.json in {checkpoint_dir}")
    tokenizer = Tokenizer.from_file(str(path))
    tokenizer.no_truncation()
    tokenizer.no_padding()
    return tokenizer


def fit(ids: list[int], room: int, truncate: Truncate, *, index: int) -> list[int]:
    """Cut content tokens to ``room`` per the request's truncate mode."""
    if len(ids) <= room:
        return ids
    if truncate == "none":
        raise InputTooLong(
            f"input {index} has {len(ids)} tokens, more than the model's limit of {room} "
            "(send truncate='end' or 'start' to cut it)", param="input")
    return ids[:room] if truncate == "end" else ids[len(ids) - room:]


#: Why a client sends ids outside our vocabulary, nearly always: OpenAI's tiktoken ids (cl100k_base
#: has 100k tokens, o200k_base 200k; our models 30-32k), which LangChain's OpenAIEmbeddings sends
#: by default. Ids that happen to fall inside the vocabulary cannot be told apart: they give wrong
#: vectors, which is why docs/clients.md says to turn it off in any case.
TIKTOKEN_HINT = ("token-id inputs must be this model's own token ids, and these look like OpenAI tiktoken ids: "
                 "LangChain's OpenAIEmbeddings sends those unless you set check_embedding_ctx_length=False "
                 "(then it sends text; see docs/clients.md)")


def check_token_ids(sequences: Sequence[Sequence[int]], vocab_size: int) -> None:
    for i, seq in enumerate(sequences):
        for t in seq:
            if not 0 <= t < vocab_size:
                raise InvalidRequest(f"input[{i}] holds token id {t}, outside the vocabulary [0, {vocab_size}): "
                                     f"{TIKTOKEN_HINT}", param="input", code="invalid_token_id")


def build_recipe(name: str, checkpoint_dir: Path, *, card_instructions: Instructions,
                 max_tokens: int | None = None, base_name: str | None = None, template=None) -> Recipe:
    """The recipe named in a model's config, set up from its checkpoint (tokenizer) directory.

    llm2vec's [INST] template is ``template`` (``llm2vec.Template``, decided from the model's
    identity by ``llm2vec.choose_template``); without one, ``base_name`` (the base model's
    name, ``ResolvedCheckpoint.base_name``) decides it as the reference code does.
    """
    if name == "sbert":
        from gigarouter.recipes.sbert import SbertRecipe
        return SbertRecipe.from_checkpoint(checkpoint_dir, max_tokens=max_tokens)
    if name == "llm2vec":
        from gigarouter.recipes.llm2vec import Llm2VecRecipe
        return Llm2VecRecipe.from_checkpoint(checkpoint_dir, instructions=card_instructions, max_tokens=max_tokens,
                                             base_name=base_name, template=template)
    if name == "e5":
        from gigarouter.recipes.e5 import E5Recipe
        return E5Recipe.from_checkpoint(checkpoint_dir, instructions=card_instructions, max_tokens=max_tokens)
    raise ModelLoadError(f"unknown recipe {name!r}")
