"""POST /v1/embeddings: OpenAI's shape, our extensions; the pipeline is api/pipeline.py.

Checks run cheapest first, so that under a flood a refusal costs almost nothing: while
every model is saturated, api/shedding.py answers 429 before this handler runs; here, the
deadline headers, then the named model's queue asked with an estimate from the body size
(429 + Retry-After before the key's database lookup and the tokenizer), then
authentication and the rest; the exact admission check runs on the token count.
"""

from __future__ import annotations

from functools import partial

import numpy as np
from fastapi import APIRouter, Request, Response
from starlette.concurrency import run_in_threadpool

from gigarouter.api.deadlines import request_timeout_s
from gigarouter.api.deps import GateDep, JsonBody, MetricsDep, RouterDep, SettingsDep
from gigarouter.api.pipeline import serve_embeddings
from gigarouter.api.schemas import EmbeddingRequest, parse_embedding_request
from gigarouter.api.shedding import BODY_BYTES_PER_TOKEN
from gigarouter.pooling.encoding import finish, quantize, to_base64, to_json
from gigarouter.router.router import Router

router = APIRouter()

#: Bodies larger than this are validated off the event loop.
_INLINE_PARSE_BYTES = 1024 * 1024


@router.post("/v1/embeddings")
async def create_embeddings(request: Request, body: JsonBody, settings: SettingsDep, models: RouterDep,
                            gate: GateDep, metrics: MetricsDep) -> Response:
    timeout_s = request_timeout_s(request.headers, settings.request_timeout_s)
    _refuse_if_saturated(request, body, models, timeout_s)      # the cheapest refusal, before any lookup
    principal = await gate.authenticate(request.headers.get("authorization"), scope="embed")
    # Before any slot is claimed. A big body's million token ids are checked on a worker thread, so the
    # event loop keeps serving meanwhile (orjson's parse itself holds the GIL: no thread would help it).
    parse = partial(parse_embedding_request, body, max_inputs=settings.max_inputs)
    req = await run_in_threadpool(parse) if len(getattr(request, "_body", b"")) > _INLINE_PARSE_BYTES else parse()
    return await serve_embeddings(request, req, principal, body=body, render=partial(openai_payload, req),
                                  settings=settings, models=models, gate=gate, metrics=metrics, timeout_s=timeout_s)


def _refuse_if_saturated(request: Request, body: object, models: Router, timeout_s: float) -> None:
    """Under saturation a refusal must cost almost nothing: before the key's database lookup and the
    tokenizer, ask the model's queue with an estimate from the body's size (api/shedding.py refused
    already if every model is saturated; this is the one model named, with the request's deadline).
    Eight bytes a token is on the low side for JSON text and token ids alike, so this refuses only
    what the exact check, after tokenizing, would refuse too."""
    name = body.get("model") if isinstance(body, dict) else None
    size = len(getattr(request, "_body", b"") or b"")
    refusal = models.admission_error(name, size // BODY_BYTES_PER_TOKEN, max_wait_s=timeout_s)
    if refusal is not None:
        raise refusal


def openai_payload(req: EmbeddingRequest, vectors: np.ndarray, *, model: str, tokens: int,
                   cached_tokens: int = 0) -> dict:
    """OpenAI's response body (also each batch output line's): ``dimensions``, normalisation, then the
    compact type, then float JSON or base64."""
    vectors = quantize(finish(vectors, dimensions=req.dimensions, normalize=req.normalize), req.embedding_type)
    if req.encoding_format == "base64":
        embeddings = [to_base64(v) for v in vectors]
    else:
        embeddings = to_json(vectors)
    return {
        "object": "list",
        "data": [{"object": "embedding", "index": i, "embedding": e} for i, e in enumerate(embeddings)],
        "model": model,
        "usage": {"prompt_tokens": tokens, "total_tokens": tokens,
                  "prompt_tokens_details": {"cached_tokens": cached_tokens}},
    }
