"""LLM2Vec (McGill-NLP): bidirectional Mistral, mean over the text after the instruction.

Mirrors ``llm2vec`` 0.2.3 ``LLM2Vec.encode`` step by step (DESIGN.md, "Model recipes"):

4. A text longer than 400 tokens (counted without special tokens, the count
   capped at 512) keeps its first ``int(words * (400 / count))`` whitespace words,
   joined by single spaces, until it fits.
5. ``"{instruction.strip()} !@#$%^&*(){text}"`` (or ``"!@#$%^&*(){text}"``); a
   base named ``mistralai/Mistral-7B-Instruct-v0.2`` (or Llama-2-chat) then wraps
   the whole as ``"[INST] " + s.strip() + " [/INST]"``. The model sees the string
   without the separator, with BOS, cut at 512 tokens. Which template applies is the
   model's identity, decided once at load by ``choose_template`` (never by a
   directory's metadata alone).
6. The mean covers the last ``n`` positions, ``n`` = tokens of the part after the
   separator tokenized on its own (text + " [/INST]"), so the instruction is
   attended to but not pooled.

Token-id inputs are the text's content tokens, as ``tokenizer.encode(text,
add_special_tokens=False)`` gives them; the recipe adds BOS, the instruction and
the ``[INST]`` template around them and applies the 400/512 limits in tokens.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from tokenizers import Tokenizer

from gigarouter.errors import InputTooLong, InvalidRequest, ModelLoadError
from gigarouter.pooling.modes import PoolingMode
from gigarouter.recipes.base import (
    InputType,
    Instructions,
    PreparedInput,
    Truncate,
    check_token_ids,
    fit,
    load_tokenizer,
)

SEPARATOR = "!@#$%^&*()"
#: Base names for which llm2vec wraps inputs in the chat template (prepare_for_tokenization).
INST_WRAPPED = frozenset({"mistralai/Mistral-7B-Instruct-v0.2", "meta-llama/Llama-2-7b-chat-hf"})
MAX_TOKENS = 512
DOC_MAX_TOKENS = 400


@dataclass(frozen=True)
class Template:
    """llm2vec's input template for one model and what decided it (logged, and in GET /v1/models/{id})."""

    name: str                         # "inst" ([INST] ... [/INST]) | "none"
    source: str
    fallback: bool = False            # nothing about the model said: "none" because nothing named a wrapped base


def choose_template(*, explicit: str | None = None, card_slug: str | None = None, card_template: str | None = None,
                    recorded: str | None = None, names: Sequence[tuple[str, str]] = ()) -> Template:
    """The template by the model's identity, first answer wins:

    1. ``template`` on the ``[[models]]`` entry;
    2. the deployment's catalog card (the LLM2Vec card is an Instruct-v2 model);
    3. what ``models merge`` recorded for a merged checkpoint;
    4. a name the checkpoint states (``names``: the bases its adapters name, then the base's Hub
       id or config.json ``_name_or_path``) that llm2vec wraps;
    5. otherwise none, as llm2vec does for any other base.

    llm2vec itself keys on ``_name_or_path`` alone, so a base copied without it silently loses
    the template there; here the card or an adapter still says what the model is.
    """
    if explicit:
        return Template(explicit, "the template key of its [[models]] entry")
    if card_template:
        return Template(card_template, f"its catalog card {card_slug}")
    if recorded:
        return Template(recorded, "the record that models merge wrote beside its config.json")
    for where, name in names:
        if name in INST_WRAPPED:
            return Template("inst", f"{where} names {name}")
    stated = ", ".join(sorted({name for _, name in names})) or "nothing"
    return Template("none", f"no card, and the checkpoint names no Instruct base ({stated})", fallback=True)


@dataclass
class Llm2VecRecipe:
    tokenizer: Tokenizer
    instructions: Instructions
    template: str                     # "inst": the [INST] ... [/INST] wrap of Instruct-v2 | "none"
    specials: list[int]               # what the tokenizer puts before the text (BOS)
    max_tokens: int = MAX_TOKENS
    doc_max_tokens: int = DOC_MAX_TOKENS
    vocab_size: int = 32000
    pooling: PoolingMode = PoolingMode.MEAN
    name: str = "llm2vec"
    template_source: str = ""

    @property
    def wrap_inst(self) -> bool:
        return self.template == "inst"

    @classmethod
    def from_checkpoint(cls, checkpoint_dir: Path, *, instructions: Instructions | None = None,
                        max_tokens: int | None = None, base_name: str | None = None,
                        template: Template | None = None) -> Llm2VecRecipe:
        """``checkpoint_dir`` holds tokenizer.json. ``template`` is the decision made from the
        model's identity (``choose_template``); without one, ``base_name`` (default:
        ``_name_or_path`` in checkpoint_dir/config.json) decides, as in the library."""
        tokenizer = load_tokenizer(checkpoint_dir)
        if template is None:
            if base_name is None:
                config = checkpoint_dir / "config.json"
                base_name = json.loads(config.read_text()).get("_name_or_path", "") if config.exists() else ""
            template = choose_template(names=[("the base", base_name)])
        limit = max_tokens or MAX_TOKENS
        return cls(tokenizer=tokenizer, instructions=instructions or Instructions(),
                   template=template.name, template_source=template.source, specials=_prefix_specials(tokenizer),
                   max_tokens=limit, doc_max_tokens=min(DOC_MAX_TOKENS, limit),
                   vocab_size=tokenizer.get_vocab_size())

    # -- text inputs -------------------------------------------------------------------------

    def prepare_texts(self, texts: Sequence[str], *, input_type: InputType = "document",
                      instruction: str | None = None, truncate: Truncate = "end") -> list[PreparedInput]:
        resolved = self.instructions.resolve(input_type, instruction)
        return [self._prepare_text(text, resolved, truncate, i) for i, text in enumerate(texts)]

    def _prepare_text(self, text: str, instruction: str | None, truncate: Truncate, index: int) -> PreparedInput:
        text = self.shorten(text, truncate, index)
        joined = f"{instruction.strip()} {SEPARATOR}{text}" if instruction else f"{SEPARATOR}{text}"
        if self.wrap_inst:
            joined = "[INST] " + joined.strip() + " [/INST]"
        parts = joined.split(SEPARATOR)
        pooled_part = parts[1] if len(parts) > 1 else ""   # as llm2vec: only the first segment after it
        encoding = self.tokenizer.encode("".join(parts), add_special_tokens=False)
        room = self.max_tokens - len(self.specials)
        if len(encoding.ids) > room:
            if truncate == "none":
                raise _too_long(index, len(encoding.ids) + len(self.specials), self.max_tokens)
            encoding.truncate(room, direction="right" if truncate == "end" else "left")
        ids = [*self.specials, *encoding.ids]
        pooled = min(self.count(pooled_part), self.max_tokens)
        return PreparedInput(token_ids=ids, pool_start=_pool_start(len(ids), pooled))

    def count(self, text: str) -> int:
        return len(self.tokenizer.encode(text, add_special_tokens=False).ids)

    def shorten(self, text: str, truncate: Truncate, index: int) -> str:
        """Step 4: cut a long text at whole words until it has at most ``doc_max_tokens`` tokens."""
        count = min(self.count(text), self.max_tokens)
        if count > self.doc_max_tokens and truncate == "none":
            raise _too_long(index, self.count(text), self.doc_max_tokens, what="text")
        while count > self.doc_max_tokens:
            words = text.split()
            keep = int(len(words) * (self.doc_max_tokens / count))   # the library's float arithmetic
            text = " ".join(words[:keep] if truncate == "end" else words[len(words) - keep:])
            count = min(self.count(text), self.max_tokens)
        return text

    # -- token-id inputs ---------------------------------------------------------------------

    def prepare_token_ids(self, sequences: Sequence[Sequence[int]], *, input_type: InputType = "document",
                          instruction: str | None = None, truncate: Truncate = "end") -> list[PreparedInput]:
        check_token_ids(sequences, self.vocab_size)
        resolved = self.instructions.resolve(input_type, instruction)
        head, tail = self._template_ids(resolved)
        room = self.max_tokens - len(self.specials) - len(head) - len(tail)
        if room < 1:
            raise InvalidRequest("the instruction leaves no room for the input", param="instruction")
        out = []
        for i, seq in enumerate(sequences):
            body = fit(list(seq), min(self.doc_max_tokens, room), truncate, index=i)
            ids = [*self.specials, *head, *body, *tail]
            out.append(PreparedInput(token_ids=ids, pool_start=_pool_start(len(ids), len(body) + len(tail))))
        return out

    def window_room(self, *, input_type: InputType = "document", instruction: str | None = None) -> int:
        """Content tokens one sequence holds (``truncate: "chunk"``): the document limit (400), or less
        where BOS, the instruction and the [INST] template leave less of the 512."""
        head, tail = self._template_ids(self.instructions.resolve(input_type, instruction))
        return min(self.doc_max_tokens, self.max_tokens - len(self.specials) - len(head) - len(tail))

    def _template_ids(self, instruction: str | None) -> tuple[list[int], list[int]]:
        """Tokens before and after the text, as they fall in the whole string's tokenization."""
        instr = instruction.strip() if instruction else ""
        if self.wrap_inst:
            head = f"[INST] {instr}" if instr else "[INST]"
            return self._ids(head), self._ids("[/INST]")
        return (self._ids(instr) if instr else []), []

    def _ids(self, text: str) -> list[int]:
        return self.tokenizer.encode(text, add_special_tokens=False).ids


def _pool_start(length: int, pooled: int) -> int:
    # llm2vec pools the last `pooled` positions; pooled == 0 (an empty text with no
    # template) would make it average the whole padded row, so we pool everything.
    if pooled <= 0 or pooled >= length:
        return 0
    return length - pooled


def _prefix_specials(tokenizer: Tokenizer) -> list[int]:
    """The special tokens the tokenizer adds (BOS); the recipe needs them to come first only."""
    bare = tokenizer.encode("a", add_special_tokens=False).ids
    full = tokenizer.encode("a").ids
    prefix = full[: len(full) - len(bare)]
    if full[len(prefix):] != bare:
        raise ModelLoadError("the llm2vec recipe expects a tokenizer that only prepends special tokens (BOS)")
    return prefix


def _too_long(index: int, got: int, limit: int, *, what: str = "input") -> InputTooLong:
    return InputTooLong(f"input {index} has {got} tokens, more than the model's {what} limit of {limit} "
                        "(send truncate='end' or 'start' to cut it)", param="input")
