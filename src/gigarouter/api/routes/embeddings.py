"""POST /v1/embeddings: refuse early if saturated, authenticate, validate, route, tokenize once, meter, embed, answer.

Checks run cheapest first, so that under a flood a refusal costs almost nothing: while
every model is saturated, api/shedding.py answers 429 before this handler runs; here, the
deadline headers, then the named model's queue asked with an estimate from the body size
(429 + Retry-After before the key's database lookup and the tokenizer), then
authentication and the rest; the exact admission check runs on the token count.
"""

from __future__ import annotations

import asyncio
import logging
import time
from functools import partial

import numpy as np
import orjson
from fastapi import APIRouter, Request, Response
from starlette.concurrency import run_in_threadpool

from gigarouter.accounts.idempotency import fingerprint
from gigarouter.accounts.metering import metered
from gigarouter.api.deadlines import request_timeout_s
from gigarouter.api.deps import GateDep, JsonBody, MetricsDep, RouterDep, SettingsDep
from gigarouter.api.schemas import EmbeddingRequest, parse_embedding_request
from gigarouter.api.shedding import BODY_BYTES_PER_TOKEN
from gigarouter.errors import InvalidRequest
from gigarouter.metrics import Metrics
from gigarouter.pooling.encoding import finish, to_base64
from gigarouter.providers.base import EmbedCall
from gigarouter.router.preferences import parse_preferences
from gigarouter.router.route import Plan, Route, Routed
from gigarouter.router.router import Router

router = APIRouter()
log = logging.getLogger(__name__)

#: Responses with more floats than this are serialised off the event loop.
_INLINE_FLOATS = 64 * 1024
#: Bodies larger than this are validated off the event loop.
_INLINE_PARSE_BYTES = 1024 * 1024
#: How often a waiting request checks whether its client is still there.
_DISCONNECT_POLL_SECONDS = 0.25


@router.post("/v1/embeddings")
async def create_embeddings(request: Request, body: JsonBody, settings: SettingsDep, models: RouterDep,
                            gate: GateDep, metrics: MetricsDep) -> Response:
    started = time.perf_counter()
    timeout_s = request_timeout_s(request.headers, settings.request_timeout_s)
    deadline = time.monotonic() + timeout_s
    _refuse_if_saturated(request, body, models, timeout_s)      # the cheapest refusal, before any lookup
    principal = await gate.authenticate(request.headers.get("authorization"), scope="embed")
    # Before any slot is claimed. A big body's million token ids are checked on a worker thread, so the
    # event loop keeps serving meanwhile (orjson's parse itself holds the GIL: no thread would help it).
    parse = partial(parse_embedding_request, body, max_inputs=settings.max_inputs)
    req = await run_in_threadpool(parse) if len(getattr(request, "_body", b"")) > _INLINE_PARSE_BYTES else parse()
    key = request.headers.get("idempotency-key")
    async with gate.idempotency(principal, key, fingerprint(body) if key is not None else "") as slot:
        if slot.replay is not None:  # a retry: the first answer again, not charged again
            return Response(slot.replay.body, status_code=slot.replay.status, media_type="application/json",
                            headers={"Idempotent-Replayed": "true"})
        await gate.check_rate(principal, tokens=0)
        route, suffix_sort = models.route(req.model)
        request.state.model = route.name
        plan = route.plan(parse_preferences(req.provider, suffix_sort=suffix_sort))
        _check_dimensions(req.dimensions, route.dim)
        tokenize_started = time.perf_counter()
        prepare = partial(route.prepare, texts=req.texts, token_ids=req.token_ids, input_type=req.input_type,
                          instruction=req.instruction, truncate=req.truncate,
                          interactive_max_tokens=settings.interactive_max_tokens)
        # Tokenizing blocks: off the loop. Without a tokenizer here (a remote-only model) it is a
        # byte count, cheaper than the hop to a worker thread.
        call = await run_in_threadpool(prepare) if route.recipe is not None else prepare()
        tokenized = time.perf_counter()
        # The tokens-per-minute limit counts what the request is likely to cost: exact where we
        # tokenize, else a typical count rather than the reservation's much larger bound.
        rate_headers = await gate.check_rate(principal, tokens=call.tokens if call.exact_tokens
                                             else _typical_tokens(call))
        async with metered(gate, principal, model=route.name, tokens=call.tokens,
                           price_per_million_usd=_reserve_price(plan, route, req),
                           request_id=request.state.request_id, idempotency=slot) as meter:
            routed = await _until_disconnect(request, route.embed(plan, call, deadline=deadline, metrics=metrics,
                                                                  account=principal.account_id, use_cache=req.cache))
            if routed is None:  # the client left: nothing to send; leaving unsettled refunds
                return Response(status_code=499)
            _check_dimensions(req.dimensions, routed.result.vectors.shape[1])
            tokens = _billed_tokens(call, routed, route.name, metrics)
            cached = min(routed.cached_tokens, tokens)
            payload = _payload(req, route.name, routed.result.vectors, tokens, cached)
            content = await run_in_threadpool(_dumps, payload) if routed.result.vectors.size > _INLINE_FLOATS \
                else _dumps(payload)
            await meter.settle(status=200, latency_ms=(time.perf_counter() - started) * 1000, response=content,
                               price_per_million_usd=routed.binding.price_per_million_usd, tokens=tokens,
                               provider=routed.binding.name, upstream_tokens=routed.result.upstream_tokens,
                               cached_tokens=cached,
                               cached_price_per_million_usd=route.cached_price_per_million_usd)
    timings = {"tokenize": tokenized - tokenize_started, **routed.result.timings}
    _observe(metrics, route.name, tokens, timings)
    headers = {**rate_headers, **{f"x-{stage}-time": f"{seconds * 1000:.2f}" for stage, seconds in timings.items()},
               "x-gigarouter-provider": routed.binding.name}
    if route.fingerprint:
        headers["x-gigarouter-fingerprint"] = route.fingerprint
    if routed.result.replica:
        headers["x-gigarouter-replica"] = routed.result.replica
    if routed.cache is not None:
        headers["x-gigarouter-cache"] = routed.cache
    return Response(content, media_type="application/json", headers=headers)


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


async def _until_disconnect(request: Request, work) -> Routed | None:
    """The routed answer, or None if the client disconnected first (its work is then cancelled)."""
    task = asyncio.ensure_future(work)
    try:
        while True:
            done, _ = await asyncio.wait({task}, timeout=_DISCONNECT_POLL_SECONDS)
            if done:
                return task.result()
            if await request.is_disconnected():
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
                return None
    except BaseException:
        task.cancel()
        raise


def _check_dimensions(dimensions: int | None, width: int | None) -> None:
    if dimensions is not None and width is not None and dimensions > width:
        raise InvalidRequest(f"dimensions={dimensions} exceeds the model's {width}", param="dimensions")


def _reserve_price(plan: Plan, route: Route, req: EmbeddingRequest) -> float:
    """The dearest price a token of this request may bill at: a provider's, or a cached token's."""
    if req.cache and route.cache is not None:
        return max(plan.max_price_per_million_usd, route.cached_price_per_million_usd)
    return plan.max_price_per_million_usd


def _billed_tokens(call: EmbedCall, routed: Routed, model: str, metrics: Metrics) -> int:
    """Our own count where we have the tokenizer; else the upstream's, never above what was reserved.

    With the cache, a provider computed only part of the request (``routed.sent``, or
    nothing on a hit): its report is checked against that part, and the cached inputs
    add the tokens stored with them (router/cache.py keeps its split in step with this).
    """
    upstream = routed.result.upstream_tokens
    sent = None if routed.cache == "hit" else (routed.sent or call)
    if call.exact_tokens:
        computed = sent.tokens if sent is not None else 0
        if upstream is not None and upstream != computed:
            metrics.usage_disagreements.labels(model, routed.binding.name).inc()
            log.info("model %s: provider %s reported %d tokens, we counted %d", model, routed.binding.name,
                     upstream, computed)
        return call.tokens
    if sent is None:
        return min(routed.cached_tokens, call.tokens)
    if upstream is None or upstream < 1:
        metrics.usage_disagreements.labels(model, routed.binding.name).inc()
        return min(_typical_tokens(sent) + routed.cached_tokens, call.tokens)
    if upstream > sent.tokens:
        log.warning("model %s: provider %s reported %d tokens, above the bound %d; billing the bound", model,
                    routed.binding.name, upstream, sent.tokens)
    return min(min(upstream, sent.tokens) + routed.cached_tokens, call.tokens)


def _typical_tokens(call: EmbedCall) -> int:
    """No count from anyone (an upstream without usage): about four bytes a token, as BPE vocabularies average;
    token ids are counted, not guessed (``call.tokens`` is then a bound with room for templates, not a count).
    Two per input for the special tokens either way."""
    if call.texts is None:
        return max(call.count, min(call.tokens, sum(len(ids) + 2 for ids in call.token_ids)))
    return max(call.count, min(call.tokens, sum(-(-len(t.encode()) // 4) + 2 for t in call.texts)))


def _payload(req: EmbeddingRequest, model: str, vectors: np.ndarray, tokens: int, cached_tokens: int = 0) -> dict:
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
        "model": model,
        "usage": {"prompt_tokens": tokens, "total_tokens": tokens,
                  "prompt_tokens_details": {"cached_tokens": cached_tokens}},
    }


def _dumps(payload: dict) -> bytes:
    return orjson.dumps(payload, option=orjson.OPT_SERIALIZE_NUMPY)


def _observe(metrics: Metrics, model: str, tokens: int, timings: dict[str, float]) -> None:
    metrics.tokens.labels(model).inc(tokens)
    for stage, seconds in timings.items():
        metrics.stage_seconds.labels(stage, model).observe(seconds)
