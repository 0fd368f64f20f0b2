"""POST /v1/embeddings: authenticate, validate, tokenize, meter, schedule, encode."""

from __future__ import annotations

import asyncio
import time

import numpy as np
import orjson
from fastapi import APIRouter, Request, Response
from starlette.concurrency import run_in_threadpool

from gigarouter.accounts.gate import Charge, Gate
from gigarouter.accounts.idempotency import fingerprint
from gigarouter.api.deps import GateDep, JsonBody, MetricsDep, RegistryDep, SettingsDep
from gigarouter.api.schemas import EmbeddingRequest, parse_embedding_request
from gigarouter.catalog.registry import Deployment
from gigarouter.errors import InvalidRequest
from gigarouter.pooling.encoding import finish, to_base64
from gigarouter.recipes.base import PreparedInput
from gigarouter.scheduler.queue import Job, Scheduler

router = APIRouter()

#: Responses with more floats than this are serialised off the event loop.
_INLINE_FLOATS = 64 * 1024
#: How often a waiting request checks whether its client is still there.
_DISCONNECT_POLL_SECONDS = 0.25


@router.post("/v1/embeddings")
async def create_embeddings(request: Request, body: JsonBody, settings: SettingsDep, registry: RegistryDep,
                            gate: GateDep, metrics: MetricsDep) -> Response:
    started = time.perf_counter()
    principal = await gate.authenticate(request.headers.get("authorization"), scope="embed")
    key = request.headers.get("idempotency-key")
    async with gate.idempotency(principal, key, fingerprint(body)) as slot:
        if slot.replay is not None:  # a retry: the first answer again, not charged again
            return Response(slot.replay.body, status_code=slot.replay.status, media_type="application/json",
                            headers={"Idempotent-Replayed": "true"})
        await gate.check_rate(principal, tokens=0)
        req = parse_embedding_request(body, max_inputs=settings.max_inputs)
        dep = registry.lookup(req.model)
        request.state.model = dep.name
        _check_dimensions(req, dep)
        tokenize_started = time.perf_counter()
        items = await run_in_threadpool(_prepare, dep, req)
        tokenized = time.perf_counter()
        tokens = sum(len(item.token_ids) for item in items)
        rate_headers = await gate.check_rate(principal, tokens=tokens)
        charge = await gate.reserve(principal, model=dep.name, tokens=tokens, idempotency=slot,
                                    price_per_million_usd=dep.price_per_million_usd,
                                    request_id=request.state.request_id)
        job, vectors = await _compute(request, gate, charge, dep, items, settings.interactive_max_tokens)
        if vectors is None:  # the client left: nothing to send, nothing charged
            return Response(status_code=499)
        payload = _payload(req, dep, vectors, tokens)
        content = await run_in_threadpool(_dumps, payload) if vectors.size > _INLINE_FLOATS else _dumps(payload)
        await gate.settle(charge, status=200, latency_ms=(time.perf_counter() - started) * 1000, response=content)
    timings = {"tokenize": tokenized - tokenize_started, "queue": job.queue_seconds, "inference": job.infer_seconds}
    _observe(metrics, dep.name, tokens, timings)
    headers = {**rate_headers, **{f"x-{stage}-time": f"{seconds * 1000:.2f}" for stage, seconds in timings.items()}}
    return Response(content, media_type="application/json", headers=headers)


async def _compute(request: Request, gate: Gate, charge: Charge, dep: Deployment, items: list[PreparedInput],
                   interactive_max_tokens: int) -> tuple[Job | None, np.ndarray | None]:
    """Schedule the work; refund the reservation if it fails or the client leaves."""
    tokens = charge.tokens
    try:
        job = await dep.scheduler.submit(items, interactive=tokens <= interactive_max_tokens)
        vectors = await _wait(request, dep.scheduler, job)
    except BaseException as exc:
        await gate.refund(charge, status=getattr(exc, "status", 500))
        raise
    if vectors is None:
        await gate.refund(charge, status=499)
    return job, vectors


def _check_dimensions(req: EmbeddingRequest, dep: Deployment) -> None:
    if req.dimensions is not None and req.dimensions > dep.engine.dim:
        raise InvalidRequest(f"dimensions={req.dimensions} exceeds the model's {dep.engine.dim}", param="dimensions")


def _prepare(dep: Deployment, req: EmbeddingRequest) -> list[PreparedInput]:
    kwargs = dict(input_type=req.input_type, instruction=req.instruction, truncate=req.truncate)
    if req.texts is not None:
        return dep.recipe.prepare_texts(req.texts, **kwargs)
    return dep.recipe.prepare_token_ids(req.token_ids, **kwargs)


async def _wait(request: Request, scheduler: Scheduler, job: Job) -> np.ndarray | None:
    """The job's vectors, or None if the client disconnected first (its work is then dropped)."""
    while True:
        done, _ = await asyncio.wait({job.future}, timeout=_DISCONNECT_POLL_SECONDS)
        if done:
            return job.future.result()
        if await request.is_disconnected():
            scheduler.cancel(job)
            return None


def _payload(req: EmbeddingRequest, dep: Deployment, vectors: np.ndarray, tokens: int) -> dict:
    vectors = finish(vectors, dimensions=req.dimensions, normalize=req.normalize)
    if req.encoding_format == "base64":
        encode = to_base64
    else:
        # Each float32 is written as its exact float64 value (as OpenAI does), so a client
        # parsing the JSON gets bit-for-bit the numbers that base64 would have given it.
        vectors = vectors.astype(np.float64)
        encode = lambda v: v  # noqa: E731
    return {
        "object": "list",
        "data": [{"object": "embedding", "index": i, "embedding": encode(v)} for i, v in enumerate(vectors)],
        "model": dep.name,
        "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
    }


def _dumps(payload: dict) -> bytes:
    return orjson.dumps(payload, option=orjson.OPT_SERIALIZE_NUMPY)


def _observe(metrics, model: str, tokens: int, timings: dict[str, float]) -> None:
    metrics.tokens.labels(model).inc(tokens)
    for stage, seconds in timings.items():
        metrics.stage_seconds.labels(stage, model).observe(seconds)

