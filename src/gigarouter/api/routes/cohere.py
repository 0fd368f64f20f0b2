"""Cohere's protocol: ``POST /v2/embed``, so the ``cohere`` Python client works with a base_url.

The body is translated into the OpenAI request and runs the same pipeline (api/pipeline.py):
the same key (``Authorization: Bearer``, which the client sends), limits, metering and cache.
``input_type``: ``search_query`` is a query (the model's default query instruction);
``search_document`` a document; ``classification`` and ``clustering`` are embedded as
documents, as they are (one side, no instruction: the request names no task for an
instruction to describe). ``embedding_types`` are any of float, int8, uint8, binary, ubinary
(pooling/encoding.py says how each is made) and base64 (float32 bytes); several may be asked
for at once and are computed from the one vector. ``truncate``: ``END`` (default), ``START``
or ``NONE``. ``output_dimension`` is ``dimensions``. Errors: ``{"id", "message"}``.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from fastapi import APIRouter, Request, Response

from gigarouter.api.deps import GateDep, JsonBody, MetricsDep, RouterDep, SettingsDep
from gigarouter.api.pipeline import serve_embeddings
from gigarouter.api.schemas import EmbeddingRequest, parse_embedding_request
from gigarouter.errors import InputTooLong, InvalidRequest, shown
from gigarouter.pooling.encoding import EMBEDDING_TYPES, finish, quantize, to_base64, to_json

router = APIRouter()

INPUT_TYPES = {"search_query": "query", "search_document": "document", "classification": "document",
               "clustering": "document"}
TRUNCATE = {"END": "end", "START": "start", "NONE": "none"}
COHERE_TYPES = (*EMBEDDING_TYPES, "base64")
KNOWN_FIELDS = {"model", "texts", "input_type", "embedding_types", "truncate", "output_dimension"}


@router.post("/v2/embed")
async def embed(request: Request, body: JsonBody, settings: SettingsDep, models: RouterDep, gate: GateDep,
                metrics: MetricsDep) -> Response:
    principal = await gate.authenticate(request.headers.get("authorization"), scope="embed")
    req, types = parse_embed(body, max_inputs=settings.max_inputs)
    texts = req.texts or []

    def render(vectors: np.ndarray, *, model: str, tokens: int, cached_tokens: int) -> dict[str, Any]:
        return {
            "id": request.state.request_id,
            "embeddings": _by_type(finish(vectors, dimensions=req.dimensions, normalize=True), types),
            "texts": texts,
            "meta": {"api_version": {"version": "2"}, "billed_units": {"input_tokens": tokens}},
            "response_type": "embeddings_by_type",
        }

    try:
        return await serve_embeddings(request, req, principal, body=body, render=render, settings=settings,
                                      models=models, gate=gate, metrics=metrics)
    except InputTooLong as exc:   # say how to cut it in Cohere's terms
        raise InputTooLong(exc.message.replace("send truncate='end' or 'start'", "send truncate END or START"),
                           param="texts") from None


def parse_embed(body: Any, *, max_inputs: int) -> tuple[EmbeddingRequest, list[str]]:
    if not isinstance(body, dict):
        raise InvalidRequest("the request body must be a JSON object", param=None)
    unknown = sorted(set(body) - KNOWN_FIELDS)
    if unknown:
        name = shown(unknown[0])
        hint = " (gigarouter embeds texts only)" if unknown[0] in ("images", "inputs") else ""
        raise InvalidRequest(f"unknown field {name}{hint}", param=name)
    if "texts" not in body:
        raise InvalidRequest("you must provide texts", param="texts")
    input_type = body.get("input_type")
    if not isinstance(input_type, str) or input_type not in INPUT_TYPES:
        raise InvalidRequest("input_type must be one of " + ", ".join(repr(t) for t in INPUT_TYPES), param="input_type")
    truncate = body.get("truncate")
    truncate = "END" if truncate is None else truncate
    if not isinstance(truncate, str) or truncate not in TRUNCATE:
        raise InvalidRequest("truncate must be 'END', 'START' or 'NONE'", param="truncate")
    types = body.get("embedding_types")
    types = ["float"] if types is None else types
    if not isinstance(types, list) or not types or any(t not in COHERE_TYPES for t in types):
        raise InvalidRequest("embedding_types must be a non-empty array of " + ", ".join(COHERE_TYPES),
                             param="embedding_types")
    texts = body["texts"]
    if not isinstance(texts, list) or not all(isinstance(t, str) for t in texts):
        raise InvalidRequest("texts must be an array of strings", param="texts")
    openai = {"model": body.get("model"), "input": texts, "input_type": INPUT_TYPES[input_type],
              "truncate": TRUNCATE[truncate], "dimensions": body.get("output_dimension")}
    try:
        req = parse_embedding_request(openai, max_inputs=max_inputs)
    except InvalidRequest as exc:
        param = {"input": "texts", "dimensions": "output_dimension"}.get(exc.param or "", exc.param)
        if param is not None and param.startswith("input["):
            param = "texts" + param[len("input"):]
        raise InvalidRequest(exc.message.replace("input", "texts", 1), param=param, code=exc.code) from None
    return req, list(dict.fromkeys(types))


def _by_type(vectors: np.ndarray, types: list[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for kind in types:
        if kind == "base64":
            out[kind] = [to_base64(v) for v in vectors]
        else:
            out[kind] = to_json(quantize(vectors, kind))
    return out
