"""``gigarouter serve``'s process: uvicorn, plus a watch on the models loading in the background.

The app listens at once (``/health`` answers, ``/ready`` says 503 while models load).
Once every model has loaded and every route was probed, one "ready" line is printed.
A model that fails to load ends the process with exit status 1, unless the settings
say ``keep_serving_on_load_failure = true``: then the line names the failed models and
the others are served.
"""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Callable

import uvicorn
from fastapi import FastAPI
from rich.markup import escape

from gigarouter.settings import Settings

_POLL_S = 0.1

#: Exit statuses of ``serve``: 0 stopped by a signal, 1 a model failed to load, 3 start-up failed (uvicorn's).
EXIT_OK, EXIT_LOAD_FAILED, EXIT_STARTUP_FAILED = 0, 1, 3


def startup_state(router, *, keep_serving: bool) -> str:
    """``loading``, ``ready`` or ``failed`` for the router's models right now."""
    states = [d.state for d in router.deployments]
    if "failed" in states and not keep_serving:
        return "failed"
    if "loading" in states or not all(r.probed for r in router.routes):
        return "loading"
    return "ready"


KEEP_ALIVE_S = 75


class Server(uvicorn.Server):
    """uvicorn's server with a task that reports the models' start-up, then stays out of the way."""

    def __init__(self, app: FastAPI, settings: Settings, *, log_level: str = "info",
                 say: Callable[[str], None] = print) -> None:
        # proxy_headers=False: uvicorn would believe X-Forwarded-For from 127.0.0.1; the app believes it
        # only from the configured trusted_proxies (api/middleware.py).
        # Keep-alive 75 s, not uvicorn's 5: longer than a load balancer's usual 60 s idle timeout (else it
        # reuses a connection the server is closing), and than the longest Retry-After a client is told to
        # wait under a flood (RetryPacer: 30 s, plus the client's jitter), so it comes back on its connection.
        super().__init__(uvicorn.Config(app, host=settings.host, port=settings.port, log_level=log_level,
                                        timeout_graceful_shutdown=30, proxy_headers=False,
                                        timeout_keep_alive=KEEP_ALIVE_S))
        self.app, self.settings, self.say = app, settings, say
        self.exit_code = EXIT_OK
        self._watch: asyncio.Task | None = None
        self._began = time.monotonic()

    def serve_until_stopped(self) -> int:
        """Run until a signal (or a failed load) stops the server; the process's exit status."""
        try:
            self.run()
        except KeyboardInterrupt:   # a second Ctrl-C during shutdown
            pass
        if not self.started:
            return EXIT_STARTUP_FAILED
        return self.exit_code

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        if not self.should_exit:
            self._watch = asyncio.create_task(self._report_models(), name="serve-startup-report")

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        if self._watch is not None and not self._watch.done():
            self._watch.cancel()
        await super().shutdown(sockets)

    async def _report_models(self) -> None:
        router = self.app.state.router
        keep = self.settings.keep_serving_on_load_failure
        while not self.should_exit:
            state = startup_state(router, keep_serving=keep)
            if state == "failed":
                for dep in router.deployments:
                    if dep.state == "failed":
                        self.say(f"[red]error:[/] model {escape(dep.name)} failed to load: {escape(str(dep.error))}")
                self.say("stopping (set keep_serving_on_load_failure = true in the config to serve the other "
                         "models anyway)")
                self.exit_code = EXIT_LOAD_FAILED
                self.should_exit = True
                return
            if state == "ready":
                self._say_ready(router)
                return
            await asyncio.sleep(_POLL_S)

    def _say_ready(self, router) -> None:
        served = [r.name for r in router.routes if r.local is None or r.local.state == "ready"]
        failed = [d for d in router.deployments if d.state == "failed"]
        url = f"http://{self.settings.host}:{self.settings.port}"
        line = (f"[bold green]ready[/] in {time.monotonic() - self._began:.1f} s: serving "
                f"{escape(', '.join(served)) or 'nothing'} on {url}")
        self.say(line)
        for dep in failed:
            self.say(f"[yellow]not serving[/] {escape(dep.name)}: it failed to load ({escape(str(dep.error))}); "
                     "keep_serving_on_load_failure = true keeps the others up")
