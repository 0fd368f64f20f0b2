"""What the router hands a provider and what it gets back, whatever the provider is.

A request is prepared once (``EmbedCall``): the inputs as the client sent them,
for a remote that tokenizes itself, and, when the route knows the model's
tokenizer, the exact token ids and pooled spans a local engine runs. A provider
returns raw vectors (normalisation, ``dimensions`` and encodings are applied
after it, once, in the API layer), the usage an upstream reported, and its
stage timings. Cancellation is the asyncio kind: cancelling the awaiting task
drops the work (a local job leaves the queue, an HTTP request is closed).
Failures cross this boundary as ``GigarouterError``s; ``errors.is_retryable``
decides which of them may move to another provider.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from gigarouter.recipes.base import PreparedInput


@dataclass(frozen=True)
class EmbedCall:
    """One request, prepared: every provider kind finds what it needs here."""

    texts: list[str] | None                 # the client's text inputs (None when it sent token ids)
    token_ids: list[list[int]] | None       # the client's token-id inputs
    input_type: str = "document"
    instruction: str | None = None
    truncate: str = "end"
    items: list[PreparedInput] | None = None   # what the model sees, when the route has the tokenizer
    tokens: int = 0                         # billed tokens: exact with ``items``, else an upper bound
    exact_tokens: bool = True
    interactive: bool = True                # rides the interactive lane of a local scheduler
    background: bool = False                # a batch job's line: a local scheduler's background lane

    @property
    def count(self) -> int:
        return len(self.texts) if self.texts is not None else len(self.token_ids or ())


@dataclass
class ProviderResult:
    vectors: np.ndarray                     # [n, dim] float32, in input order, not normalised
    upstream_tokens: int | None = None      # the usage a remote reported (None for local work)
    timings: dict[str, float] = field(default_factory=dict)   # stage -> seconds
    replica: str | None = None              # which replica or host served it, where the provider knows


class Provider(Protocol):
    """A backend that embeds prepared calls for one or more models."""

    name: str
    kind: str                               # local | remote

    async def embed(self, call: EmbedCall, *, model: str, timeout_s: float) -> ProviderResult:
        """Vectors for ``call`` under our model name ``model``, within ``timeout_s`` seconds."""
        ...

    async def close(self) -> None: ...
