"""The embeddings pipeline every wire protocol shares (OpenAI, TEI, Cohere).

A protocol's handler authenticates, turns its body into an ``EmbeddingRequest`` and
hands it here with a ``render`` that writes its own response body. Everything between
is one path, whatever the protocol: idempotency, rate limits, routing, tokenizing once
(or into windows for ``truncate: "chunk"``), the metering context, the route's cache and
providers, the client-disconnect watch, billing and the response headers.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from functools import partial
from typing import Any

import numpy as np
import orjson
from fastapi import Request, Response
from starlette.concurrency import run_in_threadpool

from gigarouter.accounts.gate import Gate, IdempotencySlot, Principal
from gigarouter.accounts.idempotency import fingerprint
from gigarouter.accounts.metering import Price, metered
from gigarouter.api.deadlines import request_timeout_s
from gigarouter.api.schemas import EmbeddingRequest
from gigarouter.errors import InvalidRequest
from gigarouter.metrics import Metrics
from gigarouter.pooling.encoding import pool_windows
from gigarouter.providers.base import EmbedCall
from gigarouter.router.preferences import parse_preferences
from gigarouter.router.route import Plan, Route, Routed
from gigarouter.router.router import Router
from gigarouter.settings import Settings

log = logging.getLogger(__name__)

#: Responses with more values than this are serialised off the event loop.
_INLINE_VALUES = 64 * 1024
#: How often a waiting request checks whether its client is still there.
_DISCONNECT_POLL_SECONDS = 0.25


#: render(vectors, model=..., tokens=..., cached_tokens=...) -> the JSON payload (orjson-serialisable), where
#: vectors are one raw float32 vector per input (windows already pooled; not normalised, not truncated).
Renderer = Callable[..., Any]


async def serve_embeddings(request: Request, req: EmbeddingRequest, principal: Principal, *, body: Any,
                           render: Renderer, settings: Settings, models: Router, gate: Gate,
                           metrics: Metrics, timeout_s: float | None = None) -> Response:
    """Run ``req`` for ``principal`` and answer with ``render``'s payload; ``body`` is what an
    Idempotency-Key's fingerprint covers (the request body as the client sent it).

    ``timeout_s``: the request's deadline, when the handler read it already (else from the headers:
    ``X-Request-Timeout`` or openai-python's ``X-Stainless-Read-Timeout`` may lower the server's)."""
    started = time.perf_counter()
    if timeout_s is None:
        timeout_s = request_timeout_s(request.headers, settings.request_timeout_s)
    deadline = time.monotonic() + timeout_s
    key = request.headers.get("idempotency-key")
    async with gate.idempotency(principal, key, fingerprint(body) if key is not None else "") as slot:
        if slot.replay is not None:  # a retry: the first answer again, not charged again
            return Response(slot.replay.body, status_code=slot.replay.status, media_type="application/json",
                            headers={"Idempotent-Replayed": "true"})
        await gate.check_rate(principal, tokens=0)
        route, suffix_sort = models.route(req.model)
        request.state.model = route.name
        plan = route.plan(parse_preferences(req.provider, suffix_sort=suffix_sort))
        check_dimensions(req.dimensions, route.dim)
        tokenize_started = time.perf_counter()
        call, windows = await prepare_call(route, req, interactive_max_tokens=settings.interactive_max_tokens)
        tokenized = time.perf_counter()
        # The tokens-per-minute limit counts what the request is likely to cost: exact where we
        # tokenize, else a typical count rather than the reservation's much larger bound.
        rate_headers = await gate.check_rate(principal, tokens=call.tokens if call.exact_tokens
                                             else _typical_tokens(call))
        answered = await run_metered(gate, principal, req, route=route, plan=plan, call=call, windows=windows,
                                     render=render, request_id=request.state.request_id, slot=slot,
                                     deadline=deadline, started=started, metrics=metrics,
                                     watch=partial(_until_disconnect, request))
        if answered is None:  # the client left: nothing to send, and nothing was charged
            return Response(status_code=499)
    routed, content, tokens = answered.routed, answered.content, answered.tokens
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


@dataclass(frozen=True)
class Answered:
    """A request computed, billed and settled: the response body and what it was charged."""

    routed: Routed
    content: bytes
    tokens: int
    cost_micro: int


def list_price(price: Price) -> Price:
    return price


async def run_metered(gate: Gate, principal: Principal, req: EmbeddingRequest, *, route: Route, plan: Plan,
                      call: EmbedCall, windows: list | None, render: Renderer, request_id: str,
                      slot: IdempotencySlot | None, deadline: float, started: float, metrics: Metrics,
                      price: Callable[[Price], Price] = list_price,
                      watch: Callable[[Awaitable[Routed]], Awaitable[Routed | None]] | None = None,
                      ) -> Answered | None:
    """Reserve, route, bill, answer and settle one prepared request: the one metering block that
    every HTTP protocol and every batch line runs.

    ``price`` maps each list price (the reservation's bound, the serving provider's, a cached
    token's) to the one charged: a batch line's discount. ``watch`` wraps the routed work, and
    returns None when the client left; this then returns None with nothing settled, so the
    reservation is refunded.
    """
    async with metered(gate, principal, model=route.name, tokens=call.tokens,
                       price_per_million_usd=price(reserve_price(plan, route, req)),
                       request_id=request_id, idempotency=slot) as meter:
        work = route.embed(plan, call, deadline=deadline, metrics=metrics, account=principal.account_id,
                           use_cache=req.cache)
        routed = await (watch(work) if watch is not None else work)
        if routed is None:
            return None
        vectors = routed.result.vectors
        check_dimensions(req.dimensions, vectors.shape[1])
        tokens = billed_tokens(call, routed, route.name, metrics)
        cached = min(routed.cached_tokens, tokens)
        answer = partial(answer_bytes, render, vectors, windows, model=route.name, tokens=tokens,
                         cached_tokens=cached)
        content = await run_in_threadpool(answer) if vectors.size > _INLINE_VALUES else answer()
        cost = await meter.settle(status=200, latency_ms=(time.perf_counter() - started) * 1000, response=content,
                                  price_per_million_usd=price(routed.binding.price_per_million_usd), tokens=tokens,
                                  provider=routed.binding.name, upstream_tokens=routed.result.upstream_tokens,
                                  cached_tokens=cached,
                                  cached_price_per_million_usd=price(route.cached_price_per_million_usd))
    return Answered(routed=routed, content=content, tokens=tokens, cost_micro=cost)


async def prepare_call(route: Route, req: EmbeddingRequest, *,
                       interactive_max_tokens: int) -> tuple[EmbedCall, list | None]:
    """The prepared call, and for ``truncate: "chunk"`` each input's window weights."""
    options = dict(texts=req.texts, token_ids=req.token_ids, input_type=req.input_type,
                   instruction=req.instruction, interactive_max_tokens=interactive_max_tokens)
    if req.truncate == "chunk":
        return await run_in_threadpool(partial(route.prepare_windows, **options))
    prepare = partial(route.prepare, truncate=req.truncate, **options)
    # Tokenizing blocks: off the loop. Without a tokenizer here (a remote-only model) it is a
    # byte count, cheaper than the hop to a worker thread.
    return (await run_in_threadpool(prepare) if route.recipe is not None else prepare()), None


def answer_bytes(render: Renderer, vectors: np.ndarray, windows: list | None, **fields: Any) -> bytes:
    if windows is not None:
        vectors = pool_windows(vectors, windows)
    return orjson.dumps(render(vectors, **fields), option=orjson.OPT_SERIALIZE_NUMPY)


async def _until_disconnect(request: Request, work: Awaitable[Routed]) -> Routed | None:
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


def check_dimensions(dimensions: int | None, width: int | None) -> None:
    if dimensions is not None and width is not None and dimensions > width:
        raise InvalidRequest(f"dimensions={dimensions} exceeds the model's {width}", param="dimensions")


def reserve_price(plan: Plan, route: Route, req: EmbeddingRequest) -> float:
    """The dearest price a token of this request may bill at: a provider's, or a cached token's."""
    if req.cache and route.cache is not None:
        return max(plan.max_price_per_million_usd, route.cached_price_per_million_usd)
    return plan.max_price_per_million_usd


def billed_tokens(call: EmbedCall, routed: Routed, model: str, metrics: Metrics) -> int:
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


def _observe(metrics: Metrics, model: str, tokens: int, timings: dict[str, float]) -> None:
    metrics.tokens.labels(model).inc(tokens)
    for stage, seconds in timings.items():
        metrics.stage_seconds.labels(stage, model).observe(seconds)
