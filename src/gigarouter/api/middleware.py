"""Outermost ASGI middleware: request id, body-size cap, last-resort 500, request metrics; CORS for the API.

Pure ASGI (not BaseHTTPMiddleware) so it adds no task hop per request and can
see every response, including the ones produced for unexpected exceptions.
"""

from __future__ import annotations

import json
import logging
import re
import time
import uuid

from starlette.middleware.cors import CORSMiddleware
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from gigarouter.metrics import Metrics

log = logging.getLogger(__name__)
_SAFE_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")


class RequestContextMiddleware:
    def __init__(self, app: ASGIApp, *, metrics: Metrics, max_body_bytes: int) -> None:
        self.app = app
        self.metrics = metrics
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        headers = dict(scope["headers"])
        incoming = headers.get(b"x-request-id", b"").decode("latin-1")
        request_id = incoming if _SAFE_ID.match(incoming) else f"req_{uuid.uuid4().hex}"
        scope.setdefault("state", {})["request_id"] = request_id
        status_holder = {"status": 500, "started": False}

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                status_holder["status"] = message["status"]
                status_holder["started"] = True
                message["headers"] = [*message.get("headers", []), (b"x-request-id", request_id.encode())]
            await send(message)

        declared = headers.get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_body_bytes:
            await self._error(send_with_id, 413, "payload_too_large",
                              f"request body is {int(declared)} bytes; the limit is {self.max_body_bytes}")
        else:
            try:
                await self.app(scope, receive, send_with_id)
            except Exception:
                log.exception("unhandled error in request %s", request_id)
                if not status_holder["started"]:
                    await self._error(send_with_id, 500, "internal_error",
                                      f"internal server error (request id {request_id})", type="server_error")
        self._count(scope, status_holder["status"], time.perf_counter() - started)

    async def _error(self, send: Send, status: int, code: str, message: str,
                     type: str = "invalid_request_error") -> None:
        body = json.dumps({"error": {"message": message, "type": type, "param": None, "code": code}}).encode()
        await send({"type": "http.response.start", "status": status,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})

    def _count(self, scope: Scope, status: int, seconds: float) -> None:
        route = scope.get("route")
        path = getattr(route, "path", None) or "unmatched"
        model = scope.get("state", {}).get("model", "")
        self.metrics.requests.labels(path, str(status), model).inc()
        self.metrics.request_seconds.labels(path, model).observe(seconds)


#: What a browser page may read from an API response (besides the CORS-safelisted headers).
EXPOSED_HEADERS = ("x-request-id", "x-gigarouter-provider", "x-gigarouter-fingerprint", "x-gigarouter-replica",
                   "x-tokenize-time", "x-queue-time", "x-inference-time", "x-upstream-time", "retry-after",
                   "idempotent-replayed", "x-ratelimit-limit-requests", "x-ratelimit-remaining-requests",
                   "x-ratelimit-reset-requests", "x-ratelimit-limit-tokens", "x-ratelimit-remaining-tokens",
                   "x-ratelimit-reset-tokens")


class ApiCorsMiddleware:
    """CORS (``settings.cors_origins``) for the API only: paths under /v1/.

    The web pages stay same-origin. Keys travel in the Authorization header, not in
    cookies, so credentials are not allowed; any request header may be sent (the openai
    clients add their own x-stainless-* headers), and the gigarouter and rate-limit
    headers are exposed to the page.
    """

    def __init__(self, app: ASGIApp, *, origins: tuple[str, ...], prefix: str = "/v1/") -> None:
        self.app = app
        self.prefix = prefix
        self.cors = CORSMiddleware(app, allow_origins=list(origins), allow_methods=["GET", "POST", "DELETE"],
                                   allow_headers=["*"], allow_credentials=False, expose_headers=list(EXPOSED_HEADERS),
                                   max_age=600)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"].startswith(self.prefix):
            await self.cors(scope, receive, send)
        else:
            await self.app(scope, receive, send)
