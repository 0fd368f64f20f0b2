"""What onboarding measures: a deployment reached through the real serving path.

``InProcessTarget`` is the router facade in this process (the ``Embedder``: recipe, scheduler,
engine, the same code a server runs); ``HttpTarget`` is any OpenAI-compatible ``/v1/embeddings``
endpoint (a gigarouter server, or another provider) reached over HTTP. Both embed texts as a
query (with an instruction) or as documents and say how many tokens that took.

An HTTP provider must accept gigarouter's ``input_type`` / ``instruction`` body extensions for
queries to carry their instruction (gigarouter does; a provider that rejects them fails the run
with its own error message, which is the honest answer: its query vectors would not match).
"""

from __future__ import annotations

import base64
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import httpx
import numpy as np

from gigarouter.recipes.base import InputType

#: Inputs per HTTP request: well under any server's input limit, enough to fill its batches.
HTTP_BATCH = 64


@dataclass(frozen=True)
class Embedded:
    vectors: np.ndarray        # [n, dim] float32
    tokens: int                # what the deployment counted (usage.prompt_tokens over HTTP)


class Target(Protocol):
    name: str                  # "in-process" or the provider's base URL
    model: str                 # the `model` a client sends

    def embed(self, texts: Sequence[str], *, input_type: InputType, instruction: str | None) -> Embedded: ...

    def device(self) -> str: ...

    def close(self) -> None: ...


class InProcessTarget:
    """The model loaded here through the ``Embedder`` (the router facade), cache off so every input is computed."""

    name = "in-process"

    def __init__(self, embedder) -> None:
        self.embedder = embedder
        self.model = embedder.config.name

    @classmethod
    def load(cls, model: str, settings) -> InProcessTarget:
        from gigarouter.embedder import Embedder

        # Measurements must compute every input: the per-input cache would answer repeats instantly.
        return cls(Embedder(model, settings=settings.with_(cache="off")))

    def embed(self, texts: Sequence[str], *, input_type: InputType, instruction: str | None) -> Embedded:
        texts = list(texts)
        tokens = self.embedder.count_tokens(texts, input_type=input_type, instruction=instruction)
        vectors = self.embedder.encode(texts, input_type=input_type, instruction=instruction, normalize=False)
        return Embedded(vectors=vectors, tokens=tokens)

    def device(self) -> str:
        return self.embedder.device_description()

    def close(self) -> None:
        self.embedder.close()


class ProviderError(RuntimeError):
    """The provider answered with an error (its message kept) or not at all."""


class HttpTarget:
    """An OpenAI-compatible provider: ``base_url`` ends in ``/v1`` as the openai client's does."""

    def __init__(self, base_url: str, model: str, *, api_key: str | None = None, timeout: float = 120.0,
                 transport: httpx.BaseTransport | None = None) -> None:
        self.name = base_url.rstrip("/")
        self.model = model
        headers = {"authorization": f"Bearer {api_key}"} if api_key else {}
        self._client = httpx.Client(base_url=self.name, headers=headers, timeout=timeout, transport=transport)

    def embed(self, texts: Sequence[str], *, input_type: InputType, instruction: str | None) -> Embedded:
        texts = list(texts)
        parts, tokens = [], 0
        for start in range(0, len(texts), HTTP_BATCH):
            body = {"model": self.model, "input": texts[start:start + HTTP_BATCH], "encoding_format": "base64"}
            if input_type == "query":
                body["input_type"] = "query"
                if instruction is not None:
                    body["instruction"] = instruction
            try:
                response = self._client.post("/embeddings", json=body)
            except httpx.HTTPError as exc:
                raise ProviderError(f"{self.name}: {type(exc).__name__}: {exc}") from exc
            if response.status_code != 200:
                raise ProviderError(f"{self.name} answered {response.status_code}: {_error_message(response)}")
            payload = response.json()
            rows = sorted(payload["data"], key=lambda d: d["index"])
            parts.append(np.stack([_vector(row["embedding"]) for row in rows]))
            tokens += int(payload.get("usage", {}).get("prompt_tokens", 0))
        return Embedded(vectors=np.concatenate(parts) if parts else np.zeros((0, 0), np.float32), tokens=tokens)

    def device(self) -> str:
        return f"provider {self.name}"

    def close(self) -> None:
        self._client.close()

    def __del__(self) -> None:
        # The one-liner `mteb.evaluate(for_server(...), tasks)` keeps no handle to close: do it when collected.
        client = getattr(self, "_client", None)
        if client is not None:
            client.close()


def _vector(embedding) -> np.ndarray:
    if isinstance(embedding, str):
        return np.frombuffer(base64.b64decode(embedding), dtype="<f4").astype(np.float32)
    return np.asarray(embedding, dtype=np.float32)


def _error_message(response: httpx.Response) -> str:
    try:
        return str(response.json()["error"]["message"])
    except (ValueError, KeyError, TypeError):
        return response.text[:300]
