"""gigarouter models as mteb 2.x encoders: the in-process ``Embedder`` and a running server.

    import mteb
    from gigarouter import Embedder
    from gigarouter.onboarding.mteb_models import for_embedder, for_server

    tasks = mteb.get_tasks(tasks=["SciFact"])
    mteb.evaluate(for_embedder(Embedder("linq-embed-mistral")), tasks)                       # in-process
    mteb.evaluate(for_server("http://127.0.0.1:8000/v1", "linq-embed-mistral", api_key=KEY), tasks)  # over HTTP

Both implement mteb's ``EncoderProtocol`` (through ``AbsEncoder``): ``encode(inputs: DataLoader,
*, task_metadata, hf_split, hf_subset, prompt_type)``. Which instruction an input gets:

- ``prompt_type="document"``: none; documents are embedded raw, as every recipe's reference does.
- ``prompt_type="query"``: the card's instruction named after the task (llm2vec's
  ``task_to_instructions.json``, the e5 names), else the task's own prompt from its mteb metadata,
  else the model's default query instruction.
- no ``prompt_type`` (STS, classification, clustering: both sides alike): the named or task
  instruction as a query, as the e5 and llm2vec evaluations do; with neither, as documents
  (a retrieval instruction would be wrong for them).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

import numpy as np
from mteb.models.abs_encoder import AbsEncoder
from mteb.models.model_meta import ModelMeta, ScoringFunction
from mteb.types import PromptType

from gigarouter.catalog.cards import ModelCard, find_card
from gigarouter.onboarding.targets import HttpTarget, InProcessTarget, Target

if TYPE_CHECKING:
    from mteb.abstasks.task_metadata import TaskMetadata
    from torch.utils.data import DataLoader

    from gigarouter.embedder import Embedder


class GigarouterEncoder(AbsEncoder):
    """One deployment, in-process or over HTTP, as an mteb encoder."""

    def __init__(self, target: Target, *, card: ModelCard | None = None, dim: int | None = None) -> None:
        self.target = target
        self.model = target
        self.card = card if card is not None else find_card(target.model)
        # mteb names results "organization/model": the Hub id where a card gives one.
        name = self.card.hub_id if self.card else f"gigarouter/{target.model}"
        instructed = bool(self.card and (self.card.default_query_instruction or self.card.task_instructions))
        self.mteb_model_meta = ModelMeta.create_empty(overwrites={
            "name": name if "/" in name else f"gigarouter/{name}", "revision": "gigarouter",
            "embed_dim": dim or (self.card.dimensions if self.card else None),
            "similarity_fn_name": ScoringFunction.COSINE, "use_instructions": instructed,
            "modalities": ["text"], "max_tokens": self.card.max_tokens if self.card else None})
        self.inputs_seen: list[tuple[str, str | None]] = []     # (input_type, instruction) per encode call

    def instruction_for(self, task_metadata: TaskMetadata, prompt_type: PromptType | None) -> tuple[str, str | None]:
        """(input_type, instruction) for this task and side (module docstring)."""
        if prompt_type == PromptType.document:
            return "document", None
        named = (self.card.task_instructions or {}).get(task_metadata.name) if self.card else None
        task_prompt = _task_prompt(task_metadata, prompt_type)
        if named or task_prompt:
            return "query", named or task_prompt
        if prompt_type == PromptType.query:
            return "query", None           # the model's default query instruction
        return "document", None

    def encode(self, inputs: DataLoader, *, task_metadata: TaskMetadata, hf_split: str, hf_subset: str,
               prompt_type: PromptType | None = None, **kwargs: Any) -> np.ndarray:
        texts = [text for batch in inputs for text in _texts(batch)]
        input_type, instruction = self.instruction_for(task_metadata, prompt_type)
        self.inputs_seen.append((input_type, instruction))
        if not texts:
            return np.zeros((0, self.mteb_model_meta.embed_dim or 0), dtype=np.float32)
        return self.target.embed(texts, input_type=input_type, instruction=instruction).vectors  # type: ignore[arg-type]


    def close(self) -> None:
        self.target.close()

    def __enter__(self) -> GigarouterEncoder:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _texts(batch: dict[str, Any]) -> Iterable[str]:
    if "text" not in batch:
        raise ValueError(f"gigarouter models embed text; this task gives {sorted(batch)}")
    return batch["text"]


def _task_prompt(task_metadata: TaskMetadata, prompt_type: PromptType | None) -> str | None:
    prompt = task_metadata.prompt
    if isinstance(prompt, dict):
        return prompt.get(prompt_type.value) if prompt_type else None
    return prompt or None


def for_embedder(embedder: Embedder) -> GigarouterEncoder:
    """An in-process ``Embedder`` as an mteb encoder (vectors through the router facade, as served)."""
    card = embedder._route.card
    return GigarouterEncoder(InProcessTarget(embedder), card=card, dim=embedder.dim)


def for_server(base_url: str, model: str, *, api_key: str | None = None, **http: Any) -> GigarouterEncoder:
    """A running OpenAI-compatible server (``base_url`` ends in ``/v1``) as an mteb encoder."""
    return GigarouterEncoder(HttpTarget(base_url, model, api_key=api_key, **http))
