"""Load shedding at the door: while every model is saturated, ``POST /v1/embeddings`` gets its 429
before FastAPI routes it, solves its dependencies, reads its body or looks up its key.

Under a flood of N clients that resend at once, the event loop runs one round of
all the refused requests between any two answers, so /health waits a round and
every admitted request waited a round before it was even read: what a refusal
costs, times N, is the latency of everything else. Refused in the handler, a
request costs FastAPI's routing and dependency solving and an exception's trip
through the handlers; refused here it costs a header scan and one preformatted
answer (docs/benchmarks.md, section 11, measures both).

Pure ASGI. It asks ``Router.saturated`` with no model name: "would every
served model refuse this many tokens now?", estimated from Content-Length, so
with several models a saturated one does not shed requests for the others (the
handler then refuses per model, still before the key lookup and the tokenizer).
"""

from __future__ import annotations

from starlette.types import ASGIApp, Receive, Scope, Send

from gigarouter.errors import GigarouterError

#: Body bytes per token: a low estimate for JSON text and token ids alike, so only what the exact
#: check would refuse too is refused early (shared with the handler's per-model check).
BODY_BYTES_PER_TOKEN = 8
_PATH = "/v1/embeddings"


class _ShedRoute:
    """What the request metrics read from ``scope["route"]``: the path label a refused request counts under."""

    path = _PATH


class SheddingMiddleware:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"] == _PATH and scope["method"] == "POST":
            refusal = self._refusal(scope)
            if refusal is not None:
                scope["route"] = _ShedRoute
                await _answer(send, refusal)
                return
        await self.app(scope, receive, send)

    @staticmethod
    def _refusal(scope: Scope) -> GigarouterError | None:
        router = getattr(getattr(scope.get("app"), "state", None), "router", None)
        if router is None:
            return None
        length = next((v for k, v in scope["headers"] if k == b"content-length"), b"0")
        tokens = int(length) // BODY_BYTES_PER_TOKEN if length.isdigit() else 0
        return router.saturated(tokens)


async def _answer(send: Send, error: GigarouterError) -> None:
    import orjson

    body = orjson.dumps(error.body())
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    headers += [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in error.headers.items()]
    await send({"type": "http.response.start", "status": error.status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
