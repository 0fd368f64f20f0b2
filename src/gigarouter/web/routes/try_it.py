"""POST /models/{slug}/try: the try-it box (see ``web/trying.py`` for who may use it and its limits)."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response

from gigarouter.web.context import WebDep, check_csrf
from gigarouter.web.errors import WebError
from gigarouter.web.routes.catalog import find_model, render_model
from gigarouter.web.trying import read_fields, similarity

router = APIRouter(include_in_schema=False)


@router.post("/models/{slug}/try")
async def try_model(request: Request, slug: str, web: WebDep) -> Response:
    await check_csrf(request, web)
    card = find_model(slug)
    fields = await read_fields(request)
    wants_json = "application/json" in request.headers.get("accept", "")
    result = {"a": fields["a"], "b": fields["b"], "mode": fields["mode"]}
    try:
        result |= await similarity(request, web, card, **fields)
        status = 200
    except WebError as exc:
        result["error"], status = exc.message, exc.status
    if wants_json:
        return JSONResponse(result, status_code=status, headers={"Cache-Control": "no-store"})
    return await render_model(request, web, card, try_result=result, status_code=status)
