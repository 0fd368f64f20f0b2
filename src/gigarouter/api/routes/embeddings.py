"""POST /v1/embeddings: OpenAI's shape, our extensions; the pipeline is api/pipeline.py."""

from __future__ import annotations

import numpy as np
from fastapi import APIRouter, Request, Response

from gigarouter.api.deps import GateDep, JsonBody, MetricsDep, RouterDep, SettingsDep
from gigarouter.api.pipeline import serve_embeddings
from gigarouter.api.schemas import EmbeddingRequest, parse_embedding_request
from gigarouter.pooling.encoding import finish, quantize, to_base64, to_json

router = APIRouter()


@router.post("/v1/embeddings")
async def create_embeddings(request: Request, body: JsonBody, settings: SettingsDep, models: RouterDep,
                            gate: GateDep, metrics: MetricsDep) -> Response:
    principal = await gate.authenticate(request.headers.get("authorization"), scope="embed")
    req = parse_embedding_request(body, max_inputs=settings.max_inputs)     # before any slot is claimed
    return await serve_embeddings(request, req, principal, body=body, render=lambda v, **f: _payload(req, v, **f),
                                  settings=settings, models=models, gate=gate, metrics=metrics)


def _payload(req: EmbeddingRequest, vectors: np.ndarray, *, model: str, tokens: int, cached_tokens: int = 0) -> dict:
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
