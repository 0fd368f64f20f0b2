"""Typed dependencies: the services built in the app's lifespan, injected into handlers; and the one JSON reader.

Every JSON body the service accepts (``/v1/embeddings``, the accounts routes,
the web's try-it) goes through ``parse_json``: strict UTF-8, then orjson, which
refuses what Python's ``json.loads`` lets through and then fails on later
(NaN and Infinity, lone surrogates that no tokenizer, database or encoder can
take, integers of thousands of digits, nesting deeper than 1024). Each of those
is a 400 ``invalid_json`` in the OpenAI error shape, never a 500.

The dependencies are ``async def`` although they do not await: FastAPI runs a plain ``def``
dependency in a worker thread, a thread hop per dependency per request.
"""

from __future__ import annotations

import email.message
from collections.abc import Callable, Coroutine
from typing import Annotated, Any

import orjson
from fastapi import Depends, Request, Response
from fastapi.routing import APIRoute

from gigarouter.accounts.gate import Gate
from gigarouter.errors import Forbidden, InvalidRequest, PayloadTooLarge
from gigarouter.metrics import Metrics
from gigarouter.router.router import Router
from gigarouter.settings import Settings


async def get_settings(request: Request) -> Settings:
    return request.app.state.settings


async def get_router(request: Request) -> Router:
    return request.app.state.router


async def get_gate(request: Request) -> Gate:
    return request.app.state.gate


async def get_metrics(request: Request) -> Metrics:
    return request.app.state.metrics


def parse_json(raw: bytes) -> Any:
    """A request body as JSON, or ``InvalidRequest``; nothing a client sends makes it raise anything else.

    orjson parses integers up to 64 bits as ints and wider ones as floats (so no
    huge int ever exists), refuses numbers that overflow a double, NaN,
    Infinity, lone surrogates (``"\\ud800"``) and nesting past 1024 levels, and
    never recurses on the Python stack.
    """
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InvalidRequest(f"request body is not valid UTF-8 (byte {exc.start})", code="invalid_encoding") from None
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise InvalidRequest(f"request body is not valid JSON: {_reason(exc.msg)} at line {exc.lineno} "
                             f"column {exc.colno}", code="invalid_json") from None


def _reason(message: str) -> str:
    if "infinity" in message:
        return "a number too large for a double (or Infinity)"
    if "surrogate" in message:
        return f"{message} (a lone UTF-16 surrogate is not text)"
    if "depth" in message:
        return "nested too deep"
    return message


async def read_body(request: Request) -> bytes:
    """The raw body, read with ``max_body_bytes`` enforced even without Content-Length (413 past it)."""
    cached = getattr(request, "_body", None)
    if cached is not None:
        return cached
    settings = getattr(request.app.state, "settings", None)   # an app without settings: the default cap
    limit = settings.max_body_bytes if settings is not None else Settings.max_body_bytes
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise PayloadTooLarge(f"request body exceeds the limit of {limit} bytes")
        chunks.append(chunk)
    request._body = b"".join(chunks)
    return request._body


async def read_json_body(request: Request) -> Any:
    """The body as JSON, read with the size cap enforced even without Content-Length."""
    return parse_json(await read_body(request))


def is_json(content_type: str | None) -> bool:
    """No Content-Type, or application/json or application/*+json (FastAPI's own rule for JSON bodies)."""
    if not content_type:
        return True
    message = email.message.Message()
    message["content-type"] = content_type
    subtype = message.get_content_subtype()
    return message.get_content_maintype() == "application" and (subtype == "json" or subtype.endswith("+json"))


class JsonRoute(APIRoute):
    """A route whose pydantic body is parsed by ``parse_json`` (FastAPI's own parser is ``json.loads``).

    The body is read (size cap enforced while streaming) and parsed before
    FastAPI sees it; FastAPI then finds it already parsed on the request.
    """

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()
        if self.body_field is None:
            return handler

        async def checked(request: Request) -> Response:
            raw = await read_body(request)
            if raw and is_json(request.headers.get("content-type")):
                request._json = parse_json(raw)
            return await handler(request)

        return checked


async def private_unless_public(request: Request) -> None:
    """/metrics, /docs and /openapi.json: anyone, or with ``public_metrics = false`` only a loopback
    client (the address after trusted proxies) or a caller with an ``admin`` key (401/403 otherwise)."""
    if request.app.state.settings.public_metrics:
        return
    from gigarouter.accounts.gate import OpenGate
    from gigarouter.api.middleware import is_loopback_ip

    if request.client is not None and is_loopback_ip(request.client.host):
        return
    gate = request.app.state.gate
    if isinstance(gate, OpenGate):     # no keys exist, so no admin key either
        raise Forbidden("this server keeps its metrics and API schema to loopback (public_metrics = false)",
                        code="not_public")
    await gate.authenticate(request.headers.get("authorization"), scope="admin")


SettingsDep = Annotated[Settings, Depends(get_settings)]
RouterDep = Annotated[Router, Depends(get_router)]
GateDep = Annotated[Gate, Depends(get_gate)]
MetricsDep = Annotated[Metrics, Depends(get_metrics)]
JsonBody = Annotated[Any, Depends(read_json_body)]
