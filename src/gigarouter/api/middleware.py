"""ASGI middleware: request id, body-size cap, last-resort 500, request metrics (outermost); the client's
address from trusted proxies only, and open mode kept to loopback; secrets kept out of the access log;
CORS for the API.

Pure ASGI (not BaseHTTPMiddleware) so it adds no task hop per request and can
see every response, including the ones produced for unexpected exceptions.
"""

from __future__ import annotations

import functools
import ipaddress
import json
import logging
import re
import time
import uuid

from starlette.middleware.cors import CORSMiddleware
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from gigarouter.metrics import Metrics
from gigarouter.settings import Settings

log = logging.getLogger(__name__)
_SAFE_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")
#: Retry-After for a 503 that named none (the error tree gives its own; this is the net under web pages).
DEFAULT_RETRY_AFTER = b"1"


class RequestContextMiddleware:
    def __init__(self, app: ASGIApp, *, metrics: Metrics, max_body_bytes: int,
                 body_limits: dict[str, int] | None = None) -> None:
        self.app = app
        self.metrics = metrics
        self.max_body_bytes = max_body_bytes
        self.body_limits = body_limits or {}     # path -> its own limit (file uploads), counted by its route

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
                headers = [*message.get("headers", []), (b"x-request-id", request_id.encode())]
                if message["status"] == 503 and not any(k.lower() == b"retry-after" for k, _ in headers):
                    headers.append((b"retry-after", DEFAULT_RETRY_AFTER))    # every 503 says when to come back
                message["headers"] = headers
            await send(message)

        declared = headers.get(b"content-length")
        limit = self.body_limits.get(scope.get("path", ""), self.max_body_bytes)
        if declared is not None and declared.isdigit() and int(declared) > limit:
            await self._error(send_with_id, 413, "payload_too_large",
                              f"request body is {int(declared)} bytes; the limit is {limit}")
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


@functools.lru_cache(maxsize=4096)      # the same few peers, every request: parse each once
def _ip(value: str | None) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    if not value:
        return None
    try:
        return ipaddress.ip_address(value.strip().strip("[]"))
    except ValueError:
        return None


def is_loopback_ip(value: str | None) -> bool:
    address = _ip(value)
    return address is not None and address.is_loopback


class ClientAddressMiddleware:
    """Who the client is, from the socket and only trusted proxies; and open mode kept to loopback.

    - ``X-Forwarded-For``/``X-Forwarded-Proto`` are believed only when the peer is one of
      ``trusted_proxies``: the client is then the right-most address in the chain that is not a
      trusted proxy, and the scheme the last proxy's. From anyone else they are ignored (uvicorn's
      own ``--proxy-headers`` trusts 127.0.0.1 by default: ``gigarouter serve`` turns it off).
    - An open server (no API keys) answers only requests that arrived on a loopback socket from a
      loopback client, whatever ``host`` the settings name: run directly by uvicorn on 0.0.0.0 it
      refuses everything from outside (403 ``open_mode_loopback_only``) unless
      ``allow_open_non_loopback`` is set. A local address or client that is not an IP address
      (a Unix socket, a test client) is not refused.
    """

    def __init__(self, app: ASGIApp, *, settings: Settings) -> None:
        self.app = app
        self.trusted = settings.trusted_networks()
        self.allow_open = settings.allow_open_non_loopback
        self._warned = False

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if self.trusted:
            self._forwarded(scope)
        if not self.allow_open and self._outside(scope) and self._is_open(scope):
            if not self._warned:
                self._warned = True
                log.warning("open mode (no API keys): refusing requests that do not come over loopback; "
                            "create a key, or set allow_open_non_loopback = true if this is meant")
            body = json.dumps({"error": {
                "message": "this server runs without API keys, so it only answers on loopback "
                           "(127.0.0.1 or ::1); ask its operator for an API key",
                "type": "permission_error", "param": None, "code": "open_mode_loopback_only"}}).encode()
            await send({"type": "http.response.start", "status": 403,
                        "headers": [(b"content-type", b"application/json"),
                                    (b"content-length", str(len(body)).encode())]})
            await send({"type": "http.response.body", "body": body})
            return
        await self.app(scope, receive, send)

    def _trusted(self, host: str | None) -> bool:
        address = _ip(host)
        return address is not None and any(address in network for network in self.trusted)

    def _forwarded(self, scope: Scope) -> None:
        client = scope.get("client")
        if not client or not self._trusted(client[0]):
            return
        hops: list[str] = []
        protos: list[str] = []
        for name, value in scope["headers"]:
            if name == b"x-forwarded-for":
                hops += [h.strip() for h in value.decode("latin-1").split(",") if h.strip()]
            elif name == b"x-forwarded-proto":
                protos += [p.strip().lower() for p in value.decode("latin-1").split(",") if p.strip()]
        real = None
        for hop in reversed(hops):      # the right-most hop that is not one of our proxies
            real = hop
            if not self._trusted(hop):
                break
        if real is not None:
            address = _ip(real)
            scope["client"] = (str(address) if address is not None else real[:64], 0)
        if protos and protos[-1] in ("http", "https"):
            scope["scheme"] = protos[-1]

    @staticmethod
    def _outside(scope: Scope) -> bool:
        """The request came over a non-loopback socket or from a non-loopback client (IPs only)."""
        for end in (scope.get("server"), scope.get("client")):
            host = end[0] if end else None
            if isinstance(host, str) and _ip(host) is not None and not is_loopback_ip(host):
                return True
        return False

    @staticmethod
    def _is_open(scope: Scope) -> bool:
        from gigarouter.accounts.gate import OpenGate

        app = scope.get("app")
        return isinstance(getattr(getattr(app, "state", None), "gate", None), OpenGate)


#: An API key anywhere in a logged line, and the value of a credential-like query parameter.
_KEY = re.compile(r"gr-([a-z0-9]{10})-[A-Za-z0-9]{40}")
_SECRET_PARAM = re.compile(r"(?i)([?&](?:api[_-]?key|key|token|access[_-]?token|authorization|password|secret)=)"
                           r"[^&#\s]*")


def redact(text: str) -> str:
    """A log line without secrets: keys keep only their public prefix, credential parameters lose their value."""
    return _SECRET_PARAM.sub(r"\1[redacted]", _KEY.sub(r"gr-\1-[redacted]", text))


class RedactSecrets(logging.Filter):
    """On uvicorn's access log: a key sent in a URL (``?api_key=gr-...``) never reaches the log."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, tuple):
            record.args = tuple(redact(a) if isinstance(a, str) else a for a in record.args)
        if isinstance(record.msg, str):
            record.msg = redact(record.msg)
        return True


def redact_access_log() -> None:
    """Install ``RedactSecrets`` on uvicorn's access logger (once), however uvicorn was started."""
    access = logging.getLogger("uvicorn.access")
    if not any(isinstance(f, RedactSecrets) for f in access.filters):
        access.addFilter(RedactSecrets())


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
