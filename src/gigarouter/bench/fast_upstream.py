"""A fast upstream: an OpenAI-compatible ``/v1/embeddings`` that answers at once with fixed vectors.

What a gateway benchmark puts behind the gateway so that it measures the gateway,
not a model. It is a raw asyncio protocol on uvloop with httptools' parser (both
come with ``uvicorn[standard]``), no framework: one process answers tens of
thousands of requests a second on one core, so it is not what limits a gateway in
front of it (``gigarouter bench gateway`` measures its ceiling in the same run).

Every input gets the same unit vector (``--dim`` wide, 384 by default), as base64
float32 or a JSON array, with ``usage`` (about four bytes a token); answers are
cached per (inputs, format, model). ``GET /health`` answers 200. Keep-alive and
pipelined requests are served in order; anything else is a 404 or a 400.

    python -m gigarouter.bench.fast_upstream --port 18400 --dim 384
"""

from __future__ import annotations

import argparse
import asyncio
import base64

import numpy as np
import orjson

_JSON = b"application/json"


def _response(status: bytes, body: bytes, content_type: bytes = _JSON) -> bytes:
    return (b"HTTP/1.1 " + status + b"\r\ncontent-type: " + content_type + b"\r\ncontent-length: "
            + str(len(body)).encode() + b"\r\n\r\n" + body)


def _error(status: bytes, message: str) -> bytes:
    return _response(status, orjson.dumps({"error": {"message": message, "type": "invalid_request_error"}}))


class Answers:
    """The bytes to send for a request body: the fixed vector for each input, cached by shape."""

    def __init__(self, dim: int) -> None:
        vector = np.full(dim, 1.0 / np.sqrt(dim), dtype=np.float32)
        self.base64 = base64.b64encode(vector.astype("<f4").tobytes()).decode()
        self.floats = vector.astype(np.float64).tolist()
        self._cache: dict[tuple, bytes] = {}

    def answer(self, body: bytes) -> bytes:
        try:
            request = orjson.loads(body)
            inputs = request["input"]
            model = request.get("model", "fast")
            fmt = request.get("encoding_format") or "float"
        except (orjson.JSONDecodeError, KeyError, TypeError, AttributeError):
            return _error(b"400 Bad Request", "the body is not an embeddings request")
        if isinstance(inputs, str) or (isinstance(inputs, list) and inputs and isinstance(inputs[0], int)):
            inputs = [inputs]
        if not isinstance(inputs, list) or not inputs or fmt not in ("float", "base64") or not isinstance(model, str):
            return _error(b"400 Bad Request", "input must be a non-empty list; encoding_format float or base64")
        tokens = sum(len(x) if isinstance(x, list) else len(x.encode()) // 4 + 1 for x in inputs)
        key = (len(inputs), fmt, model, tokens)
        cached = self._cache.get(key)
        if cached is None:
            embedding = self.base64 if fmt == "base64" else self.floats
            data = [{"object": "embedding", "index": i, "embedding": embedding} for i in range(len(inputs))]
            payload = {"object": "list", "model": model, "data": data,
                       "usage": {"prompt_tokens": tokens, "total_tokens": tokens}}
            cached = _response(b"200 OK", orjson.dumps(payload))
            if len(self._cache) < 4096:
                self._cache[key] = cached
        return cached


class _Protocol(asyncio.Protocol):
    def __init__(self, answers: Answers) -> None:
        import httptools

        self.answers = answers
        self.parser = httptools.HttpRequestParser(self)
        self.transport: asyncio.Transport | None = None
        self.url = b""
        self.body: list[bytes] = []

    def connection_made(self, transport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except Exception:   # httptools' HttpParserError and kin: not HTTP
            self.transport.write(_error(b"400 Bad Request", "malformed HTTP"))
            self.transport.close()

    # httptools callbacks
    def on_message_begin(self) -> None:
        self.url, self.body = b"", []

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_body(self, body: bytes) -> None:
        self.body.append(body)

    def on_message_complete(self) -> None:
        method, path = self.parser.get_method(), self.url.split(b"?", 1)[0]
        if method == b"POST" and path in (b"/v1/embeddings", b"/embeddings"):
            out = self.answers.answer(b"".join(self.body))
        elif method == b"GET" and path in (b"/health", b"/ready"):
            out = _response(b"200 OK", b'{"status":"ok"}')
        else:
            out = _error(b"404 Not Found", "no such route")
        self.transport.write(out)
        if not self.parser.should_keep_alive():
            self.transport.close()


async def serve(host: str, port: int, dim: int) -> None:
    answers = Answers(dim)
    server = await asyncio.get_running_loop().create_server(lambda: _Protocol(answers), host, port, backlog=1024)
    async with server:
        await server.serve_forever()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=18400)
    parser.add_argument("--dim", type=int, default=384)
    args = parser.parse_args(argv)
    import uvloop

    try:
        uvloop.run(serve(args.host, args.port, args.dim))
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
