"""A real OpenAI-compatible upstream that misbehaves on command, for the router's end-to-end tests.

Run as its own process (the tests SIGKILL and restart it)::

    python -m tests.router.upstream --port N --backend http://127.0.0.1:M [--mode ok] [--delay-s 0]

``POST /v1/embeddings`` is answered according to the current mode:

- ``ok``: the request is proxied to the backend (a real gigarouter), its answer returned as is;
- ``slow``: sleep ``delay_s``, then as ``ok``;
- ``500``: an OpenAI-shaped 500 whose message echoes the ``Authorization`` header it got
  (a careless upstream: the gateway must not pass the key on);
- ``429``: a rate-limit answer with ``Retry-After: 1``;
- ``reset``: the TCP connection is reset (RST) without a byte of answer;
- ``wrong_vectors``: the backend's vectors with their components rotated by half the width
  (cosine with the real ones near 0);
- ``wrong_width``: the backend's vectors cut to half their width.

``POST /_control {"mode": ..., "delay_s": ...}`` switches the mode; ``GET /_stats`` says how
many embedding requests came (``requests``), how many were answered 200 (``served``), the
``Authorization`` values seen, and the first input of the latest requests.

The app is a bare ASGI callable so that ``reset`` can reach uvicorn's transport
(``receive.__self__.transport``) and abort it.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import os
import signal
import socket
import struct
import subprocess
import sys
import time
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import orjson

MODES = ("ok", "slow", "500", "429", "reset", "wrong_vectors", "wrong_width")
ROOT = Path(__file__).resolve().parents[2]      # the repository (tests/ is a package there)


# -- the server ------------------------------------------------------------------------------


class _State:
    def __init__(self, backend: str, mode: str, delay_s: float) -> None:
        self.backend = backend.rstrip("/")
        self.mode = mode
        self.delay_s = delay_s
        self.requests = 0
        self.served = 0
        self.authorizations: set[str] = set()
        self.inputs: deque[str] = deque(maxlen=1000)
        self.client = None     # httpx.AsyncClient, made in the lifespan

    def stats(self) -> dict:
        return {"mode": self.mode, "delay_s": self.delay_s, "requests": self.requests, "served": self.served,
                "authorizations": sorted(self.authorizations), "inputs": list(self.inputs)}


def make_app(state: _State):
    async def app(scope, receive, send) -> None:
        if scope["type"] == "lifespan":
            await _lifespan(state, receive, send)
            return
        body = await _read_body(receive)
        path, method = scope["path"], scope["method"]
        if path == "/_stats" and method == "GET":
            await _json(send, 200, state.stats())
        elif path == "/_control" and method == "POST":
            await _control(state, send, body)
        elif path == "/health":
            await _json(send, 200, {"status": "ok"})
        elif path.endswith("/embeddings") and method == "POST":
            await _embeddings(state, scope, receive, send, body)
        else:
            await _json(send, 404, {"error": {"message": f"no route {method} {path}", "type": "invalid_request_error",
                                              "param": None, "code": None}})
    return app


async def _lifespan(state: _State, receive, send) -> None:
    import httpx

    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            state.client = httpx.AsyncClient(timeout=60, limits=httpx.Limits(max_connections=64))
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await state.client.aclose()
            await send({"type": "lifespan.shutdown.complete"})
            return


async def _read_body(receive) -> bytes:
    chunks = []
    while True:
        message = await receive()
        if message["type"] != "http.request":
            return b""
        chunks.append(message.get("body", b""))
        if not message.get("more_body"):
            return b"".join(chunks)


async def _json(send, status: int, payload: dict, headers: list[tuple[bytes, bytes]] = ()) -> None:
    await _raw(send, status, orjson.dumps(payload), headers)


async def _raw(send, status: int, content: bytes, headers: list[tuple[bytes, bytes]] = ()) -> None:
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(content)).encode()),
                            *headers]})
    await send({"type": "http.response.body", "body": content})


async def _control(state: _State, send, body: bytes) -> None:
    try:
        change = orjson.loads(body or b"{}")
        mode = change.get("mode", state.mode)
        delay_s = float(change.get("delay_s", state.delay_s))
    except (orjson.JSONDecodeError, AttributeError, TypeError, ValueError):
        await _json(send, 400, {"error": "body must be {\"mode\": ..., \"delay_s\": ...}"})
        return
    if mode not in MODES:
        await _json(send, 400, {"error": f"mode must be one of {', '.join(MODES)}"})
        return
    state.mode, state.delay_s = mode, delay_s
    await _json(send, 200, state.stats())


async def _embeddings(state: _State, scope, receive, send, body: bytes) -> None:
    state.requests += 1
    headers = dict(scope["headers"])
    if b"authorization" in headers:
        state.authorizations.add(headers[b"authorization"].decode("latin-1"))
    state.inputs.append(_first_input(body))
    mode = state.mode
    if mode == "reset":
        await _reset(receive)
        return
    if mode == "500":
        auth = headers.get(b"authorization", b"").decode("latin-1")
        await _json(send, 500, {"error": {"message": f"injected failure (you sent authorization={auth!r})",
                                          "type": "server_error", "param": None, "code": None}})
        return
    if mode == "429":
        await _json(send, 429, {"error": {"message": "injected rate limit", "type": "rate_limit_error",
                                          "param": None, "code": "rate_limit_exceeded"}},
                    headers=[(b"retry-after", b"1")])
        return
    if mode == "slow":
        await asyncio.sleep(state.delay_s)
    response = await state.client.post(f"{state.backend}/v1/embeddings", content=body,
                                       headers={"content-type": "application/json"})
    content = response.content
    if response.status_code == 200 and mode in ("wrong_vectors", "wrong_width"):
        content = _perturb(content, mode)
    if response.status_code == 200:
        state.served += 1
    await _raw(send, response.status_code, content)


async def _reset(receive) -> None:
    """Abort the connection with an RST; uvicorn then sees a disconnected client and sends nothing."""
    transport = receive.__self__.transport       # uvicorn's RequestResponseCycle
    sock = transport.get_extra_info("socket")
    if sock is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    transport.abort()
    for _ in range(3):          # let connection_lost run, so the cycle knows it is disconnected
        await asyncio.sleep(0)


def _first_input(body: bytes) -> str:
    try:
        value = orjson.loads(body).get("input")
    except (orjson.JSONDecodeError, AttributeError):
        return ""
    first = value[0] if isinstance(value, list) and value else value
    return first if isinstance(first, str) else repr(first)[:200]


def _perturb(content: bytes, mode: str) -> bytes:
    payload = orjson.loads(content)
    for item in payload["data"]:
        value = item["embedding"]
        vector = (np.frombuffer(base64.b64decode(value), dtype="<f4") if isinstance(value, str)
                  else np.asarray(value, dtype=np.float32))
        vector = np.roll(vector, vector.size // 2) if mode == "wrong_vectors" else vector[: vector.size // 2]
        vector = np.ascontiguousarray(vector, dtype="<f4")
        item["embedding"] = base64.b64encode(vector.tobytes()).decode() if isinstance(value, str) else vector.tolist()
    return orjson.dumps(payload)


def main(argv: list[str] | None = None) -> None:
    import uvicorn

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--backend", required=True, help="base URL of a real gigarouter")
    parser.add_argument("--mode", choices=MODES, default="ok")
    parser.add_argument("--delay-s", type=float, default=0.0)
    args = parser.parse_args(argv)
    app = make_app(_State(args.backend, args.mode, args.delay_s))
    uvicorn.run(app, host="127.0.0.1", port=args.port, log_level="warning", lifespan="on",
                timeout_graceful_shutdown=1)


# -- the test side ---------------------------------------------------------------------------


class Upstream:
    """One upstream process: spawn, wait until it listens, switch modes, read stats, kill, restart."""

    def __init__(self, backend: str, *, port: int, mode: str = "ok", delay_s: float = 0.0,
                 log_dir: Path | None = None) -> None:
        self.backend = backend
        self.port = port
        self.initial = (mode, delay_s)
        self.url = f"http://127.0.0.1:{port}"
        self.log = (log_dir or Path("/tmp")) / f"upstream-{port}-{time.monotonic_ns()}.log"
        self.proc: subprocess.Popen | None = None

    def spawn(self) -> Upstream:
        mode, delay_s = self.initial
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), str(ROOT)])}
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "tests.router.upstream", "--port", str(self.port), "--backend", self.backend,
                 "--mode", mode, "--delay-s", str(delay_s)],
                cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
        return self

    def wait_listening(self, timeout: float = 60.0) -> Upstream:
        import httpx

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc is None or self.proc.poll() is not None:
                raise AssertionError(f"upstream on port {self.port} exited:\n{self.log.read_text()}")
            try:
                if httpx.get(f"{self.url}/health", timeout=1).status_code == 200:
                    return self
            except httpx.TransportError:
                pass
            time.sleep(0.05)
        raise AssertionError(f"upstream on port {self.port} did not listen within {timeout:.0f} s")

    def start(self) -> Upstream:
        return self.spawn().wait_listening()

    def control(self, mode: str, delay_s: float = 0.0) -> None:
        import httpx

        r = httpx.post(f"{self.url}/_control", json={"mode": mode, "delay_s": delay_s}, timeout=5)
        assert r.status_code == 200, r.text

    def stats(self) -> dict:
        import httpx

        return httpx.get(f"{self.url}/_stats", timeout=5).json()

    def kill(self) -> None:
        """SIGKILL: no goodbye, sockets closed by the kernel."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(timeout=10)

    def terminate(self) -> None:
        """SIGTERM: uvicorn's graceful stop (one second for requests in flight)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.terminate()
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.kill()


@contextmanager
def upstreams(backend: str, specs: dict[str, dict], *, log_dir: Path | None = None) -> Iterator[dict[str, Upstream]]:
    """Start one upstream per name (``{"a": {"mode": "slow", "delay_s": 0.2}}``) at once; stop them all after."""
    from tests.conftest import free_port

    started = {name: Upstream(backend, port=free_port(), log_dir=log_dir, **spec) for name, spec in specs.items()}
    try:
        for u in started.values():
            u.spawn()
        for u in started.values():
            u.wait_listening()
        yield started
    finally:
        for u in started.values():
            u.terminate()
        for u in started.values():
            u.stop()


if __name__ == "__main__":
    main()
