"""sentence-transformers BERT models: ``[CLS] text [SEP]``, mean over every token.

Instructions do not apply: all-MiniLM-L6-v2 treats queries and documents alike.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from tokenizers import Tokenizer

from gigarouter.pooling.modes import PoolingMode
from gigarouter.recipes.base import InputType, PreparedInput, Truncate, check_token_ids, fit, load_tokenizer


@dataclass
class SbertRecipe:
    tokenizer: Tokenizer
    cls_id: int
    sep_id: int
    max_tokens: int
    vocab_size: int
    pooling: PoolingMode = PoolingMode.MEAN
    name: str = "sbert"

    @classmethod
    def from_checkpoint(cls, checkpoint_dir: Path, *, max_tokens: int | None = None) -> SbertRecipe:
        tokenizer = load_tokenizer(checkpoint_dir)
        st_config = checkpoint_dir / "sentence_bert_config.json"
        limit = json.loads(st_config.read_text())["max_seq_length"] if st_config.exists() else 512
        pooling = PoolingMode.MEAN
        pooling_config = checkpoint_dir / "1_Pooling" / "config.json"
        if pooling_config.exists() and json.loads(pooling_config.read_text()).get("pooling_mode_cls_token"):
            pooling = PoolingMode.CLS
        return cls(tokenizer=tokenizer, cls_id=tokenizer.token_to_id("[CLS]"), sep_id=tokenizer.token_to_id("[SEP]"),
                   max_tokens=max_tokens or limit, vocab_size=tokenizer.get_vocab_size(), pooling=pooling)

    def prepare_texts(self, texts: Sequence[str], *, input_type: InputType = "document",
                      instruction: str | None = None, truncate: Truncate = "end") -> list[PreparedInput]:
        encodings = self.tokenizer.encode_batch(list(texts), add_special_tokens=False)
        return [self._wrap(e.ids, truncate, i) for i, e in enumerate(encodings)]

    def prepare_token_ids(self, sequences: Sequence[Sequence[int]], *, input_type: InputType = "document",
                          instruction: str | None = None, truncate: Truncate = "end") -> list[PreparedInput]:
        check_token_ids(sequences, self.vocab_size)
        return [self._wrap(list(s), truncate, i) for i, s in enumerate(sequences)]

    def window_room(self, *, input_type: InputType = "document", instruction: str | None = None) -> int:
        """Content tokens one sequence holds (``truncate: "chunk"`` windows): all but [CLS] and [SEP]."""
        return self.max_tokens - 2

    def _wrap(self, ids: list[int], truncate: Truncate, index: int) -> PreparedInput:
        body = fit(ids, self.max_tokens - 2, truncate, index=index)
        return PreparedInput(token_ids=[self.cls_id, *body, self.sep_id], pool_start=0)
