"""GET /dashboard (balance, keys, usage charts); POST to create and revoke keys."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from typing import Annotated

from fastapi import APIRouter, Form, Request
from fastapi.responses import HTMLResponse, Response

from gigarouter.accounts.store import CreatedKey
from gigarouter.errors import GigarouterError
from gigarouter.web import charts, formatting
from gigarouter.web.accounts import USAGE_DAYS, AccountsPort
from gigarouter.web.catalog import example_model
from gigarouter.web.context import WebContext, WebDep, check_csrf
from gigarouter.web.errors import WebError
from gigarouter.web.flash import flash_store
from gigarouter.web.routes.auth import accounts_on, redirect
from gigarouter.web.templating import render

router = APIRouter(include_in_schema=False)


def signed_in(web: WebContext, next_url: str) -> AccountsPort | Response:
    """The accounts port for a signed-in user, or a redirect to the sign-in page."""
    accounts = accounts_on(web)
    if web.user is None:
        return redirect(web, f"/signin?next={next_url}")
    return accounts


@router.get("/dashboard")
async def dashboard(request: Request, web: WebDep) -> Response:
    accounts = signed_in(web, "/dashboard")
    if isinstance(accounts, Response):
        return accounts
    new_key = flash_store(request.app).take(web.session_token, "new-key")   # once, after POST /dashboard/keys
    return await render_dashboard(request, web, accounts, new_key=new_key)


async def render_dashboard(request: Request, web: WebContext, accounts: AccountsPort, *,
                           new_key: CreatedKey | None = None, errors: list[str] | None = None,
                           status_code: int = 200) -> HTMLResponse:
    user = web.user
    # Independent reads: let the gate's DB threads run them side by side.
    account, keys, usage, batches = await asyncio.gather(accounts.account(user), accounts.keys(user),
                                                         accounts.usage(user), _batches(request, user.account_id))
    day_points = [(formatting.day(d), tokens) for d, _, tokens, _, _ in usage.days]
    model_points = [(model, tokens) for model, _, tokens, _, _ in usage.models]
    day = {"unit": "tokens", "title": f"Tokens per day, last {USAGE_DAYS} days", "desc": _days_summary(day_points)}
    per_model = {"unit": "tokens", "title": f"Tokens per model, last {USAGE_DAYS} days",
                 "desc": "; ".join(f"{m}: {t:,} tokens" for m, t in model_points) or "No usage yet."}
    return render(request, "dashboard.html", {
        "account": account, "keys": sorted(keys, key=lambda k: (k.revoked_at is not None, k.created_at), reverse=False),
        "usage": usage, "days": USAGE_DAYS, "new_key": new_key, "errors": errors or [], "batches": batches,
        "day_chart": charts.columns(day_points, chart_id="usage-days", **day),
        "day_chart_narrow": charts.columns(day_points, chart_id="usage-days-narrow", width=360, height=200,
                                           label_every=7, variant="narrow", **day),
        "model_chart": charts.bars(model_points, chart_id="usage-models", **per_model),
        "model_chart_narrow": charts.bars(model_points, chart_id="usage-models-narrow", width=360, label_w=130,
                                          value_w=50, variant="narrow", **per_model),
        "base_url": str(request.base_url).rstrip("/"),
        "model": example_model(getattr(request.app.state, "router", None)),
    }, status_code=status_code)


async def _batches(request: Request, account_id: str) -> list[dict]:
    """The account's newest batch jobs (docs/batches.md), for their progress."""
    jobs = getattr(request.app.state, "batches", None)
    recent = await jobs.recent(account_id) if jobs is not None else []
    return [{**b, "created": datetime.fromtimestamp(b["created_at"], UTC).strftime("%Y-%m-%d %H:%M")} for b in recent]


def _days_summary(points: list[tuple[str, int]]) -> str:
    total = sum(tokens for _, tokens in points)
    if not total:
        return f"No tokens in the last {USAGE_DAYS} days."
    busiest, most = max(points, key=lambda p: p[1])
    return f"{total:,} tokens in the last {USAGE_DAYS} days; the busiest day was {busiest} with {most:,}."


@router.post("/dashboard/keys")
async def create_key(request: Request, web: WebDep, name: Annotated[str, Form(max_length=100)] = "") -> Response:
    await check_csrf(request, web)
    accounts = signed_in(web, "/dashboard")
    if isinstance(accounts, Response):
        return accounts
    try:
        key = await accounts.create_key(web.user, name.strip() or None)
    except GigarouterError as exc:
        return await render_dashboard(request, web, accounts, errors=[exc.message], status_code=exc.status)
    # POST/redirect/GET: the dashboard shows the key once; a reload does not create another.
    flash_store(request.app).put(web.session_token, "new-key", key)
    return redirect(web, "/dashboard#new-key")


@router.post("/dashboard/keys/{key_id}/revoke")
async def revoke_key(request: Request, key_id: str, web: WebDep) -> Response:
    await check_csrf(request, web)
    accounts = signed_in(web, "/dashboard")
    if isinstance(accounts, Response):
        return accounts
    try:
        await accounts.revoke_key(web.user, key_id)
    except GigarouterError:
        raise WebError(404, "No such key", "That key does not exist or is not yours.") from None
    return redirect(web, "/dashboard?done=key-revoked#keys")
