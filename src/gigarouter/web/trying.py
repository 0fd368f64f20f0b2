"""Try-it: embed two short texts with a live model and return their cosine similarity.

Runs server-side, on the model's own recipe and scheduler (interactive lane),
so the browser never needs an API key. Who may use it: a signed-in user, or
anyone when the server is open (the gate lets unauthenticated requests embed,
as in loopback mode). It is free and not metered, so it is held small: two
texts of at most ``TRY_MAX_CHARS`` characters, ``TRY_PER_MINUTE`` tries per
user (or client address), and only the similarity comes back, never vectors.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
from fastapi import Request
from starlette.concurrency import run_in_threadpool

from gigarouter.catalog.cards import ModelCard
from gigarouter.catalog.registry import Deployment
from gigarouter.errors import GigarouterError
from gigarouter.pooling.encoding import finish
from gigarouter.recipes.base import PreparedInput
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
            raw = await request.json()
        except ValueError:
            raise WebError(400, "Bad request", "The body is not valid JSON.") from None
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
    deployments = catalog.ready_deployments(getattr(request.app.state, "registry", None), card)
    if not deployments:
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
    dep = deployments[0]
    try:
        items = await run_in_threadpool(_prepare, dep, a, b, mode)
        job = await dep.scheduler.submit(items, interactive=True)
        vectors = finish(await job.future, dimensions=None, normalize=True)
    except GigarouterError as exc:
        raise WebError(exc.status, "Could not embed", exc.message) from None
    # vectors: [2, dim], unit length, so the dot product is the cosine similarity
    similarity = float(np.dot(vectors[0], vectors[1]))
    return {"similarity": round(similarity, 6), "tokens": sum(len(i.token_ids) for i in items),
            "ms": round((time.perf_counter() - started) * 1000, 1), "model": dep.name}


def _prepare(dep: Deployment, a: str, b: str, mode: str) -> list[PreparedInput]:
    kwargs = dict(instruction=None, truncate="end")
    if mode == "query-document":
        return (dep.recipe.prepare_texts([a], input_type="query", **kwargs)
                + dep.recipe.prepare_texts([b], input_type="document", **kwargs))
    return dep.recipe.prepare_texts([a, b], input_type="document", **kwargs)
