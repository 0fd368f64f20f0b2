"""Try-it: embed two short texts with a live model and return their cosine similarity.

Runs server-side through the router, like an API request (default provider
choice, interactive lane), so the browser never needs an API key. Who may use it: a signed-in user, or
anyone when the server is open (the gate lets unauthenticated requests embed,
as in loopback mode). It is free and not metered, so it is held small: two
texts of at most ``TRY_MAX_CHARS`` characters, ``TRY_PER_MINUTE`` tries per
user (or client address), and only the similarity comes back, never vectors.
"""

from __future__ import annotations

import asyncio
import time
from functools import partial
from typing import Any

import numpy as np
from fastapi import Request
from starlette.concurrency import run_in_threadpool

from gigarouter.api.deps import parse_json, read_body
from gigarouter.catalog.cards import ModelCard
from gigarouter.errors import GigarouterError
from gigarouter.pooling.encoding import finish
from gigarouter.router.preferences import Preferences
from gigarouter.router.route import Route
from gigarouter.web import catalog
from gigarouter.web.context import WebContext
from gigarouter.web.errors import WebError
from gigarouter.web.limits import SlidingWindow

TRY_MAX_CHARS = 1000
TRY_PER_MINUTE = 30
MODES = ("query-document", "document-document")


async def try_access(request: Request, web: WebContext) -> str:
    """``ok`` when this visitor may use try-it, ``signin`` when they must sign in first."""
    if web.user is not None:
        return "ok"
    try:
        await request.app.state.gate.authenticate(None, scope="embed")
    except GigarouterError:
        return "signin"
    return "ok"


def _limiter(request: Request) -> SlidingWindow:
    limiter = getattr(request.app.state, "web_try_limiter", None)
    if limiter is None:
        limiter = request.app.state.web_try_limiter = SlidingWindow(TRY_PER_MINUTE, 60.0)
    return limiter


async def read_fields(request: Request) -> dict[str, str]:
    raw: Any
    if "application/json" in request.headers.get("content-type", ""):
        try:
            raw = parse_json(await read_body(request))
        except GigarouterError as exc:   # invalid JSON (NaN, lone surrogates, nesting...) or over the size cap
            raise WebError(exc.status, "Bad request", exc.message) from None
        if not isinstance(raw, dict):
            raise WebError(400, "Bad request", "The body must be a JSON object.")
    else:
        raw = await request.form()
    a, b, mode = (raw.get(k) for k in ("a", "b", "mode"))
    if not isinstance(a, str) or not isinstance(b, str):
        raise WebError(400, "Bad request", "Send two texts, a and b.")
    return {"a": a, "b": b, "mode": mode if mode in MODES else MODES[0]}


async def similarity(request: Request, web: WebContext, card: ModelCard, *, a: str, b: str,
                     mode: str) -> dict[str, Any]:
    route = catalog.live_route(getattr(request.app.state, "router", None), card)
    if route is None:
        raise WebError(409, "Not live", f"{card.display_name} is not live on this server yet.")
    if await try_access(request, web) != "ok":
        raise WebError(401, "Sign in", "Sign in to try models.")
    if not a.strip() or not b.strip():
        raise WebError(400, "Empty text", "Both texts need some words in them.")
    if max(len(a), len(b)) > TRY_MAX_CHARS:
        raise WebError(400, "Too long", f"Each text may have at most {TRY_MAX_CHARS} characters here.")
    who = web.user.id if web.user else (request.client.host if request.client else "unknown")
    if not _limiter(request).allow(who):
        raise WebError(429, "Slow down", f"Try-it allows {TRY_PER_MINUTE} comparisons a minute; wait a moment.")
    started = time.perf_counter()
    deadline = time.monotonic() + request.app.state.settings.request_timeout_s
    query_type = "query" if mode == "query-document" else "document"
    account = web.user.account_id if web.user else None    # the cache keeps each account's inputs apart
    try:
        (va, ta), (vb, tb) = await asyncio.gather(_embed(route, a, query_type, deadline, account),
                                                  _embed(route, b, "document", deadline, account))
    except GigarouterError as exc:
        raise WebError(exc.status, "Could not embed", exc.message) from None
    # va, vb: [1, dim] unit vectors, so the dot product is the cosine similarity
    similarity = float(np.dot(va[0], vb[0]))
    return {"similarity": round(similarity, 6), "tokens": ta + tb,
            "ms": round((time.perf_counter() - started) * 1000, 1), "model": route.name}


async def _embed(route: Route, text: str, input_type: str, deadline: float,
                 account: str | None) -> tuple[np.ndarray, int]:
    call = await run_in_threadpool(partial(route.prepare, texts=[text], token_ids=None, input_type=input_type))
    routed = await route.embed(route.plan(Preferences()), call, deadline=deadline, account=account)
    return finish(routed.result.vectors, dimensions=None, normalize=True), call.tokens
