"""In-process embeddings: the same recipe and engine as the server, no HTTP, no event loop.

    >>> from gigarouter import Embedder
    >>> emb = Embedder()                       # the embedded default model
    >>> emb.encode(["hello", "world"]).shape
    (2, 384)

``encode`` also accepts the keyword names evaluation harnesses pass (mteb's
``prompt_name`` / ``task_name`` are ignored unless they name a card instruction),
and ``encode_queries`` / ``encode_corpus`` exist for retrieval harnesses.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from gigarouter.engine.base import pack
from gigarouter.pooling.encoding import finish
from gigarouter.recipes.base import InputType, PreparedInput, Truncate
from gigarouter.scheduler.batching import plan_batch
from gigarouter.settings import DEFAULT_MODEL_NAME, ModelConfig, Settings, load_settings


class Embedder:
    """Load one model and embed texts with it, synchronously."""

    def __init__(self, model: str | ModelConfig = DEFAULT_MODEL_NAME, *, config: Path | str | None = None,
                 settings: Settings | None = None) -> None:
        from gigarouter.engine.factory import load_model

        settings = settings or load_settings(Path(config) if config else None)
        self.config = model if isinstance(model, ModelConfig) else _find(settings, model)
        self.recipe, self.engine = load_model(self.config, settings)

    @property
    def dim(self) -> int:
        return self.engine.dim

    def encode(self, texts: Sequence[str] | str, *, input_type: InputType = "document",
               instruction: str | None = None, normalize: bool = True, dimensions: int | None = None,
               truncate: Truncate = "end", progress: Callable[[int], None] | None = None,
               **_harness_kwargs: Any) -> np.ndarray:
        """Embed ``texts``; returns ``[len(texts), dim]`` float32 (a single string gives ``[dim]``)."""
        single = isinstance(texts, str)
        items = self.recipe.prepare_texts([texts] if single else list(texts), input_type=input_type,
                                          instruction=instruction, truncate=truncate)
        vectors = finish(self._run(items, progress), dimensions=dimensions, normalize=normalize)
        return vectors[0] if single else vectors

    def encode_queries(self, queries: Sequence[str], **kwargs: Any) -> np.ndarray:
        return self.encode(queries, input_type="query", **kwargs)

    def encode_corpus(self, corpus: Sequence[str] | Sequence[dict], **kwargs: Any) -> np.ndarray:
        texts = [_doc_text(d) for d in corpus]
        return self.encode(texts, input_type="document", **kwargs)

    def _run(self, items: list[PreparedInput], progress: Callable[[int], None] | None) -> np.ndarray:
        out = np.empty((len(items), self.engine.dim), dtype=np.float32)
        # Sort by length so the packing rule groups neighbours; results go back in order.
        order = sorted(range(len(items)), key=lambda i: len(items[i].token_ids))
        while order:
            lengths = [len(items[i].token_ids) for i in order]
            chosen = plan_batch(lengths, token_budget=self.engine.token_budget, window=len(order))
            batch_ids = [order[c] for c in chosen]
            batch = pack([items[i].token_ids for i in batch_ids], [items[i].pool_start for i in batch_ids])
            out[batch_ids] = self.engine.embed(batch)
            picked = set(chosen)
            order = [i for k, i in enumerate(order) if k not in picked]
            if progress:
                progress(len(batch_ids))
        return out


def _find(settings: Settings, name: str) -> ModelConfig:
    for model in settings.models:
        if name.lower() in (n.lower() for n in (model.name, *model.aliases)):
            return model
    names = ", ".join(m.name for m in settings.models)
    raise ValueError(f"model {name!r} is not configured (configured: {names})")


def _doc_text(doc: str | dict) -> str:
    if isinstance(doc, str):
        return doc
    title, text = doc.get("title", ""), doc.get("text", "")
    return f"{title} {text}".strip()


def iter_batches(items: Iterable[Any], size: int) -> Iterable[list[Any]]:
    batch: list[Any] = []
    for item in items:
        batch.append(item)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch
