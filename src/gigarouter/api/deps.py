"""Typed dependencies: the services built in the app's lifespan, injected into handlers.

They are ``async def`` although they do not await: FastAPI runs a plain ``def``
dependency in a worker thread, a thread hop per dependency per request.
"""

from __future__ import annotations

import json
from typing import Annotated, Any

from fastapi import Depends, Request

from gigarouter.accounts.gate import Gate
from gigarouter.errors import InvalidRequest, PayloadTooLarge
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


async def read_json_body(request: Request) -> Any:
    """The body as JSON, read with the size cap enforced even without Content-Length."""
    limit = request.app.state.settings.max_body_bytes
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise PayloadTooLarge(f"request body exceeds the limit of {limit} bytes")
        chunks.append(chunk)
    raw = b"".join(chunks)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InvalidRequest(f"request body is not valid UTF-8 (byte {exc.start})", code="invalid_encoding") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise InvalidRequest(f"request body is not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}",
                             code="invalid_json") from None


SettingsDep = Annotated[Settings, Depends(get_settings)]
RouterDep = Annotated[Router, Depends(get_router)]
GateDep = Annotated[Gate, Depends(get_gate)]
MetricsDep = Annotated[Metrics, Depends(get_metrics)]
JsonBody = Annotated[Any, Depends(read_json_body)]
