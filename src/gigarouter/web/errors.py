"""Errors on web pages become HTML pages (the API's JSON error mapping stays as it is)."""

from __future__ import annotations

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse


class WebError(Exception):
    """A page-level failure shown to a person: status, a title and one sentence of help."""

    def __init__(self, status: int, title: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.title = title
        self.message = message


def not_found(what: str) -> WebError:
    return WebError(404, "Not found", f"There is no {what} here. The catalog lists every model.")


def install(app: FastAPI) -> None:
    from gigarouter.web.templating import render

    @app.exception_handler(WebError)
    async def _web_error(request: Request, exc: WebError) -> HTMLResponse | JSONResponse:
        if "application/json" in request.headers.get("accept", ""):
            return JSONResponse({"error": {"message": exc.message, "type": "invalid_request_error",
                                           "param": None, "code": exc.title.lower().replace(" ", "_")}},
                                status_code=exc.status)
        if not hasattr(request.state, "web"):
            from gigarouter.web.context import get_web
            await get_web(request)
        return render(request, "error.html", {"title": exc.title, "message": exc.message}, status_code=exc.status)
