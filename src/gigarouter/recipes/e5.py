"""e5-mistral family (Linq-Embed-Mistral, intfloat/e5-mistral-7b-instruct, SFR-Embedding-Mistral).

Mirrors the model-card code (``get_detailed_instruct`` + ``last_token_pool``):

1. Causal Mistral, as trained.
2. Query: ``f"Instruct: {task}\\nQuery: {query}"``; documents as they are.
3. ``<s> ... </s>``: the recipe appends ``</s>`` itself. The released
   tokenizer.json adds only ``<s>`` and transformers >= 5 ignores
   ``add_eos_token``; losing the EOS silently wrecks retrieval. Inputs are cut to
   4096 tokens keeping ``</s>`` (the content to 4094).
4. The last token's (``</s>``) hidden state is the embedding (PoolingMode.LAST).

Token-id inputs are the text's content tokens (``tokenizer.encode(text,
add_special_tokens=False)``); the recipe adds ``<s>``, the instruction and ``</s>``.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from tokenizers import Encoding, Tokenizer

from gigarouter.errors import InvalidRequest, ModelLoadError
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

MAX_TOKENS = 4096


@dataclass
class E5Recipe:
    tokenizer: Tokenizer
    instructions: Instructions
    bos_id: int
    eos_id: int
    max_tokens: int = MAX_TOKENS
    vocab_size: int = 32000
    pooling: PoolingMode = PoolingMode.LAST
    name: str = "e5"

    @classmethod
    def from_checkpoint(cls, checkpoint_dir: Path, *, instructions: Instructions | None = None,
                        max_tokens: int | None = None) -> E5Recipe:
        tokenizer = load_tokenizer(checkpoint_dir)
        bos, eos = _special_tokens(checkpoint_dir)
        ids = [tokenizer.token_to_id(t) for t in (bos, eos)]
        if None in ids:
            raise ModelLoadError(f"tokenizer in {checkpoint_dir} lacks {bos!r} or {eos!r}")
        return cls(tokenizer=tokenizer, instructions=instructions or Instructions(), bos_id=ids[0], eos_id=ids[1],
                   max_tokens=max_tokens or MAX_TOKENS, vocab_size=tokenizer.get_vocab_size())

    @staticmethod
    def query_prefix(instruction: str) -> str:
        return f"Instruct: {instruction}\nQuery: "

    def prepare_texts(self, texts: Sequence[str], *, input_type: InputType = "document",
                      instruction: str | None = None, truncate: Truncate = "end") -> list[PreparedInput]:
        resolved = self.instructions.resolve(input_type, instruction)
        prefix = self.query_prefix(resolved) if resolved else ""
        encodings = self.tokenizer.encode_batch([prefix + t for t in texts], add_special_tokens=False)
        return [self._wrap(self._fit_text(e, len(prefix), truncate, i)) for i, e in enumerate(encodings)]

    def _fit_text(self, encoding: Encoding, prefix_chars: int, truncate: Truncate, index: int) -> list[int]:
        ids, room = encoding.ids, self.max_tokens - 2
        if len(ids) <= room or truncate != "start":
            return fit(ids, room, truncate, index=index)
        # Keep the tail of the text but never cut the instruction: its tokens end
        # before the text starts (the space before the text belongs to the text's first token).
        head = sum(1 for _, end in encoding.offsets if end <= max(prefix_chars - 1, 0)) if prefix_chars else 0
        if head >= room:
            return ids[len(ids) - room:]
        return ids[:head] + ids[len(ids) - (room - head):]

    def prepare_token_ids(self, sequences: Sequence[Sequence[int]], *, input_type: InputType = "document",
                          instruction: str | None = None, truncate: Truncate = "end") -> list[PreparedInput]:
        check_token_ids(sequences, self.vocab_size)
        head = self._head(input_type, instruction)
        room = self.max_tokens - 2 - len(head)
        if room < 1:
            raise InvalidRequest("the instruction leaves no room for the input", param="instruction")
        return [self._wrap(head + fit(list(s), room, truncate, index=i)) for i, s in enumerate(sequences)]

    def window_room(self, *, input_type: InputType = "document", instruction: str | None = None) -> int:
        """Content tokens one sequence holds beside <s>, the instruction and </s> (``truncate: "chunk"``)."""
        return self.max_tokens - 2 - len(self._head(input_type, instruction))

    def _head(self, input_type: InputType, instruction: str | None) -> list[int]:
        """The instruction's tokens before a token-id input's content."""
        resolved = self.instructions.resolve(input_type, instruction)
        # "...\nQuery:" without the trailing space: the text's first token carries it (▁word).
        return self.tokenizer.encode(self.query_prefix(resolved).rstrip(" "), add_special_tokens=False).ids \
            if resolved else []

    def _wrap(self, content: list[int]) -> PreparedInput:
        ids = [self.bos_id, *content, self.eos_id]
        return PreparedInput(token_ids=ids, pool_start=len(ids) - 1)


def _special_tokens(checkpoint_dir: Path) -> tuple[str, str]:
    """BOS and EOS as tokenizer_config.json names them (``<s>``, ``</s>`` for Mistral)."""
    path = checkpoint_dir / "tokenizer_config.json"
    raw = json.loads(path.read_text()) if path.exists() else {}

    def name(key: str, default: str) -> str:
        value = raw.get(key) or default
        return value["content"] if isinstance(value, dict) else value

    return name("bos_token", "<s>"), name("eos_token", "</s>")

