"""POST /models/{slug}/vote: "we want it", once per signed-in user and model (or withdraw it)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Form, Request
from fastapi.responses import Response
from starlette.concurrency import run_in_threadpool

from gigarouter.web.context import WebDep, check_csrf
from gigarouter.web.routes.auth import redirect
from gigarouter.web.routes.catalog import find_model
from gigarouter.web.routes.dashboard import signed_in

router = APIRouter(include_in_schema=False)


@router.post("/models/{slug}/vote")
async def vote(request: Request, slug: str, web: WebDep, action: Annotated[str, Form()] = "vote") -> Response:
    await check_csrf(request, web)
    card = find_model(slug)
    accounts = signed_in(web, f"/models/{card.slug}%23want")
    if isinstance(accounts, Response):
        return accounts
    if action == "unvote":
        await run_in_threadpool(accounts.store.unvote, web.user.id, card.slug)
        return redirect(web, f"/models/{card.slug}?done=unvoted#want")
    await run_in_threadpool(accounts.store.vote, web.user.id, card.slug)
    return redirect(web, f"/models/{card.slug}?done=voted#want")
