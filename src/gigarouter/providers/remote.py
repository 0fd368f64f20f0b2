"""``RemoteProvider``: any OpenAI-compatible ``/v1/embeddings`` endpoint over HTTP.

Another gigarouter, TEI, vLLM, infinity or a commercial API. The request asks for
base64 float32 (OpenAI's wire format, the cheapest to parse) and the full width;
normalisation and ``dimensions`` are applied here afterwards, like for local work.
gigarouter's own extensions (``input_type``, ``instruction``, ``truncate``) are sent
only when they differ from the defaults, so a plain OpenAI-compatible server sees a
plain body for documents; whether it then gives the same vectors is what the
router's fingerprints check.

Failures become domain errors at this boundary: connection errors, timeouts, 5xx,
429 and the upstream's own auth or model errors (401/403/404: the operator's
configuration, not the client's request) are ``ProviderUnavailable`` and fail over;
400/413/422 are the client's input (``ProviderRejected``, a 400). The upstream key
is sent as a header and appears in no message.
"""

from __future__ import annotations

import base64
import os
import time
from collections.abc import Mapping
from typing import Any

import numpy as np
import orjson

from gigarouter.errors import ProviderRejected, ProviderUnavailable
from gigarouter.providers.base import EmbedCall, ProviderResult
from gigarouter.settings import ProviderConfig

#: Upstream statuses that mean "the input was refused", passed on to the client as a 400.
CLIENT_STATUSES = (400, 413, 422)
_MAX_MESSAGE = 300


class RemoteProvider:
    kind = "remote"

    def __init__(self, config: ProviderConfig, *, environ: Mapping[str, str] = os.environ) -> None:
        import httpx  # the HTTP client is only needed where a remote is configured

        self.config = config
        self.name = config.name
        headers = {"content-type": "application/json"}
        key = environ.get(config.api_key_env) if config.api_key_env else None
        self._key = key or None
        if key:
            headers["authorization"] = f"Bearer {key}"
        self._httpx = httpx
        self._client = httpx.AsyncClient(base_url=config.base_url.rstrip("/") + "/", headers=headers,
                                         timeout=config.timeout_s,
                                         limits=httpx.Limits(max_connections=256, max_keepalive_connections=64))

    def upstream_model(self, model: str) -> str:
        return self.config.model_names[model]

    async def embed(self, call: EmbedCall, *, model: str, timeout_s: float) -> ProviderResult:
        body: dict[str, Any] = {"model": self.upstream_model(model),
                                "input": call.texts if call.texts is not None else call.token_ids,
                                "encoding_format": "base64"}
        if call.input_type != "document":
            body["input_type"] = call.input_type
        if call.instruction is not None:
            body["instruction"] = call.instruction
        if call.truncate != "end":
            body["truncate"] = call.truncate
        timeout = max(0.001, min(timeout_s, self.config.timeout_s))
        started = time.perf_counter()
        try:
            response = await self._client.post("embeddings", content=orjson.dumps(body), timeout=timeout)
        except self._httpx.TimeoutException:
            raise ProviderUnavailable(f"provider {self.name!r} timed out after {timeout:.1f} s",
                                      code="provider_timeout") from None
        except self._httpx.HTTPError as exc:   # refused, reset, protocol error: never the key or URL
            raise ProviderUnavailable(f"provider {self.name!r} could not be reached ({type(exc).__name__})") from None
        elapsed = time.perf_counter() - started
        if response.status_code != 200:
            raise self._failure(response)
        vectors, usage = self._parse(response.content, count=call.count)
        return ProviderResult(vectors, upstream_tokens=usage, timings={"upstream": elapsed},
                              replica=response.headers.get("x-gigarouter-replica"))

    def _failure(self, response) -> Exception:
        status = response.status_code
        message = _upstream_message(response.content, secret=self._key)
        if status in CLIENT_STATUSES:
            return ProviderRejected(f"provider {self.name!r} rejected the request: {message}", param="input")
        retry_after = _retry_after(response.headers.get("retry-after"))
        return ProviderUnavailable(f"provider {self.name!r} answered {status}: {message}", retry_after=retry_after)

    def _parse(self, content: bytes, *, count: int) -> tuple[np.ndarray, int | None]:
        try:
            payload = orjson.loads(content)
            data = payload["data"]
            if not isinstance(data, list) or len(data) != count:
                raise ValueError(f"{len(data) if isinstance(data, list) else 'no'} vectors for {count} inputs")
            rows: list[np.ndarray | None] = [None] * count
            for item in data:
                index = item["index"]
                if not isinstance(index, int) or not 0 <= index < count or rows[index] is not None:
                    raise ValueError(f"bad or repeated index {index!r}")
                rows[index] = _vector(item["embedding"])
            widths = {len(r) for r in rows}
            if len(widths) != 1 or 0 in widths:
                raise ValueError(f"vectors of widths {sorted(widths)}")
            usage = payload.get("usage") or {}
            tokens = usage.get("prompt_tokens") if isinstance(usage, dict) else None
            return np.stack(rows), tokens if isinstance(tokens, int) and not isinstance(tokens, bool) else None
        except (ValueError, KeyError, TypeError, orjson.JSONDecodeError) as exc:
            raise ProviderUnavailable(f"provider {self.name!r} sent a malformed answer: {exc}"[:_MAX_MESSAGE],
                                      code="provider_bad_response") from None

    async def close(self) -> None:
        await self._client.aclose()


def _vector(value: Any) -> np.ndarray:
    if isinstance(value, str):
        raw = base64.b64decode(value, validate=True)
        if len(raw) % 4:
            raise ValueError("base64 vector is not whole float32s")
        vector = np.frombuffer(raw, dtype="<f4").astype(np.float32)
    elif isinstance(value, list) and all(isinstance(x, int | float) and not isinstance(x, bool) for x in value):
        vector = np.asarray(value, dtype=np.float32)
    else:
        raise ValueError("an embedding is neither base64 nor an array of numbers")
    if not np.all(np.isfinite(vector)):
        raise ValueError("an embedding holds NaN or infinity")
    return vector


def _upstream_message(content: bytes, *, secret: str | None = None) -> str:
    """The upstream's error message, cut short, with our key taken out if it quotes it back."""
    try:
        error = orjson.loads(content).get("error")
        message = error.get("message") if isinstance(error, dict) else error
    except (orjson.JSONDecodeError, AttributeError):
        message = None
    text = message if isinstance(message, str) else content[:_MAX_MESSAGE + 4096].decode("utf-8", "replace")
    if secret:
        text = text.replace(secret, "[redacted]")
    return text[:_MAX_MESSAGE] or "(no body)"


def _retry_after(value: str | None) -> float:
    try:
        return min(60.0, max(1.0, float(value))) if value else 1.0
    except ValueError:
        return 1.0
