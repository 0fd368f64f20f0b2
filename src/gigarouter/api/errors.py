"""The one mapping from errors to HTTP responses.

Every route answers errors in OpenAI's shape, except the other wire protocols' routes, whose
clients read their own: TEI's (``{"error", "error_type"}``, ``api/routes/tei.py``) and
Cohere's (``{"id", "message"}``, ``api/routes/cohere.py``). The status is the same whatever
the shape; only the body differs.
"""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from gigarouter.errors import GigarouterError

log = logging.getLogger(__name__)

_HTTP_TYPES = {401: "authentication_error", 403: "permission_error", 404: "invalid_request_error",
               405: "invalid_request_error", 413: "invalid_request_error", 429: "rate_limit_error"}
#: Paths served in TEI's protocol and in Cohere's.
TEI_PATHS = frozenset({"/embed", "/info", "/tokenize"})
COHERE_PATHS = frozenset({"/v2/embed"})
#: TEI's error_type names (its ErrorType enum) by status; anything else is a validation error.
_TEI_TYPES = {401: "Unauthorized", 403: "Unauthorized", 429: "Overloaded", 503: "Unhealthy"}


def error_response(status: int, message: str, *, type: str, param: str | None = None,
                   code: str | None = None, headers: dict[str, str] | None = None) -> JSONResponse:
    body = {"error": {"message": message, "type": type, "param": param, "code": code}}
    return JSONResponse(body, status_code=status, headers=headers)


def protocol_error(request: Request, status: int, body: dict, headers: dict[str, str] | None = None) -> JSONResponse:
    """``body`` (OpenAI's shape) as the protocol of ``request``'s path writes errors."""
    path = request.url.path
    error = body["error"]
    if path in TEI_PATHS or (path == "/" and request.method == "POST"):
        kind = _TEI_TYPES.get(status, "Backend" if status >= 500 else "Validation")
        body = {"error": error["message"], "error_type": kind}
    elif path in COHERE_PATHS:
        body = {"id": getattr(request.state, "request_id", None), "message": error["message"]}
    return JSONResponse(body, status_code=status, headers=headers)


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(GigarouterError)
    async def _domain(request: Request, exc: GigarouterError) -> JSONResponse:
        return protocol_error(request, exc.status, exc.body(), exc.headers)

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {}
        loc = [str(p) for p in first.get("loc", ()) if p not in ("body", "query", "path")]
        param = ".".join(loc) or None
        message = f"{param}: {first.get('msg', 'invalid value')}" if param else first.get("msg", "invalid request")
        return protocol_error(request, 400, {"error": {"message": message, "type": "invalid_request_error",
                                                       "param": param, "code": "invalid_value"}})

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        message = exc.detail if isinstance(exc.detail, str) else "request failed"
        if exc.status_code == 404 and message == "Not Found":
            message = f"no route {request.method} {request.url.path}"
        body = {"error": {"message": message, "type": _HTTP_TYPES.get(exc.status_code, "invalid_request_error"),
                          "param": None, "code": None}}
        return protocol_error(request, exc.status_code, body, getattr(exc, "headers", None))
