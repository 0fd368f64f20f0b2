"""The admin onboarding queue: GET /admin/onboarding, POST /admin/onboarding/{slug}/start, and a run's progress.

Only operators see it: signed-in web users whose account holds an active key with the ``admin`` scope
(``gigarouter keys create ACCOUNT --scope admin``; sign-up does not prove an email, so an email list
would let whoever signs up first with it in). docs/web.md.
Coming-soon models are ranked by votes, each with its last onboarding result and a form that
starts a run in the background: against this server's own deployment of the model, or an
OpenAI-compatible provider URL. The page polls ``/admin/onboarding/runs/{id}`` while a run goes.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from typing import Annotated

from fastapi import APIRouter, Form, Request
from fastapi.responses import JSONResponse, Response
from starlette.concurrency import run_in_threadpool

from gigarouter.catalog.cards import load_cards
from gigarouter.web import catalog
from gigarouter.web.context import WebContext, WebDep, check_csrf
from gigarouter.web.errors import WebError
from gigarouter.web.routes.auth import redirect
from gigarouter.web.routes.catalog import find_model, onboarding_records, router_of, vote_counts
from gigarouter.web.routes.dashboard import signed_in
from gigarouter.web.templating import render

router = APIRouter(include_in_schema=False)

#: Speed-step sample the form offers (texts of the bench mix).
DEFAULT_SAMPLE = 512
MAX_SAMPLE = 20_000


async def require_admin(web: WebContext, next_url: str) -> Response | None:
    """None for an operator; a redirect to sign in for a visitor; 403 for anyone else."""
    accounts = signed_in(web, next_url)
    if isinstance(accounts, Response):
        return accounts
    keys = await run_in_threadpool(accounts.gate.store.list_keys, web.user.account_id)
    now = datetime.now(UTC)
    if not any("admin" in k.scopes and k.revoked_at is None and (k.expires_at is None or k.expires_at > now)
               for k in keys):
        raise WebError(403, "Operators only", "The onboarding queue is for this server's operators: an account "
                                              "with an active admin-scoped key (gigarouter keys create ACCOUNT "
                                              "--scope admin).")
    return None


@router.get("/admin/onboarding")
async def queue(request: Request, web: WebDep) -> Response:
    refused = await require_admin(web, "/admin/onboarding")
    if refused is not None:
        return refused
    return await render_queue(request, web)


async def render_queue(request: Request, web: WebContext, *, error: str | None = None,
                       status_code: int = 200) -> Response:
    onboarding = await onboarding_records(web, latest=True)
    models = catalog.views(load_cards().values(), router_of(request), await vote_counts(web), onboarding)
    waiting = sorted((m for m in models if not m.live), key=lambda m: (-m.votes, m.card.display_name.lower()))
    live = sorted((m for m in models if m.live), key=lambda m: m.card.display_name.lower())
    # The tasks field left empty means the card's benchmark columns (their MTEB tasks): say which.
    task_hint = {m.slug: ("the card's: " + ", ".join(m.card.mteb_tasks)) if m.card.mteb_tasks
                 else "the card quotes none: name MTEB tasks" for m in models}
    served = {m.slug for m in models if catalog.route_of(router_of(request), m.card)}
    return render(request, "admin_onboarding.html", {
        "waiting": waiting, "live_models": live, "latest": onboarding.latest, "served": served,
        "task_hint": task_hint, "default_sample": DEFAULT_SAMPLE, "error": error,
    }, status_code=status_code)


@router.post("/admin/onboarding/{slug}/start")
async def start(request: Request, slug: str, web: WebDep,
                provider: Annotated[str, Form()] = "", api_key: Annotated[str, Form()] = "",
                provider_model: Annotated[str, Form()] = "",
                tasks: Annotated[str, Form()] = "", sample: Annotated[int, Form()] = DEFAULT_SAMPLE) -> Response:
    await check_csrf(request, web)
    refused = await require_admin(web, "/admin/onboarding")
    if refused is not None:
        return refused
    from gigarouter.onboarding.pipeline import Options
    from gigarouter.onboarding.store import RunInProgress
    from gigarouter.onboarding.targets import HttpTarget
    from gigarouter.onboarding.web_runs import RouteTarget, start_in_background

    card = find_model(slug)
    provider = provider.strip()
    if provider and not provider.startswith(("http://", "https://")):
        return await render_queue(request, web, error="The provider must be an http(s) base URL ending in /v1.",
                                  status_code=400)
    if not 8 <= sample <= MAX_SAMPLE:
        return await render_queue(request, web, error=f"The speed sample must be 8 to {MAX_SAMPLE} texts.",
                                  status_code=400)
    routes = catalog.route_of(router_of(request), card)
    if provider:
        target = HttpTarget(provider, provider_model.strip() or (routes[0].name if routes else card.slug),
                            api_key=api_key.strip() or None)
    elif routes:
        target = RouteTarget(routes[0], asyncio.get_running_loop())
    else:
        return await render_queue(request, web, status_code=400, error=(
            f"{card.display_name} is not served by this server: give the base URL of a provider that serves it."))
    options = Options(tasks=[t.strip() for t in tasks.split(",") if t.strip()] or None, speed_sample=sample,
                      published=catalog.benchmark_scores(card, load_cards().values()))
    store = web.services.onboarding
    try:
        await run_in_threadpool(start_in_background, store, card, target, options)
    except RunInProgress:
        target.close()
        return await render_queue(request, web, status_code=409,
                                  error=f"{card.display_name} is being onboarded already: wait for that run.")
    return redirect(web, f"/admin/onboarding#run-{card.slug}")


@router.get("/admin/onboarding/runs/{run_id}")
async def run_progress(request: Request, run_id: str, web: WebDep) -> Response:
    refused = await require_admin(web, "/admin/onboarding")
    if refused is not None:
        return refused
    try:
        run = await run_in_threadpool(web.services.onboarding.run, run_id)
    except KeyError:
        return JSONResponse({"error": {"message": f"no onboarding run {run_id}", "type": "not_found",
                                       "param": "run_id", "code": "run_not_found"}}, status_code=404)
    return JSONResponse({"id": run.id, "model": run.model, "state": run.state, "step": run.step,
                         "progress": run.progress, "reason": run.reason},
                        headers={"Cache-Control": "no-store"})
