"""``create_app(settings)``: the ASGI app, its services built once in the lifespan."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from gigarouter.accounts.gate import Gate
from gigarouter.accounts.service import DatabaseGate, build_gate
from gigarouter.api import openapi
from gigarouter.api.errors import install_error_handlers
from gigarouter.api.middleware import (
    ApiCorsMiddleware,
    ClientAddressMiddleware,
    RequestContextMiddleware,
    redact_access_log,
)
from gigarouter.api.routes import accounts, admin, batches, cohere, embeddings, files, health, keys, models, tei, usage
from gigarouter.api.shedding import SheddingMiddleware
from gigarouter.batches.jobs import BatchJobs
from gigarouter.metrics import Metrics
from gigarouter.onboarding.store import watch_abandoned_runs
from gigarouter.providers.local.deployment import ModelLoader
from gigarouter.router.router import Router
from gigarouter.settings import Settings

log = logging.getLogger(__name__)


def create_app(settings: Settings | None = None, *, loader: ModelLoader | None = None,
               gate: Gate | None = None) -> FastAPI:
    """Build the service.

    ``loader`` defaults to the real model loader. ``gate`` defaults to what the
    settings call for (``accounts.service.build_gate``: accounts in the database,
    or open access on loopback with no keys); a gate passed in is started here.
    """
    settings = settings or Settings()
    if loader is None and settings.models:   # a pure gateway (only [[providers]]) never imports torch
        from gigarouter.providers.local.loading import load_model as loader
    metrics = Metrics()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        app.state.gate = await _start_gate(settings, gate)
        if isinstance(app.state.gate, DatabaseGate):     # onboarding runs live in the accounts database
            await watch_abandoned_runs(app.state.gate)
        models = Router(settings, loader=loader, metrics=metrics)
        app.state.router = models
        await models.start()           # loads local models and probes providers in the background
        app.state.batches = BatchJobs(settings, router=models, gate=app.state.gate, metrics=metrics)
        await app.state.batches.start()   # resumes unfinished batches once the models are up
        try:
            yield
        finally:
            await app.state.batches.stop()    # lines in flight finish and are recorded first
            await models.stop()        # finishes admitted work before the process exits
            await app.state.gate.close()

    # /openapi.json and /docs are routes of our own (api/routes/health.py), closed with /metrics when
    # public_metrics = false.
    app = FastAPI(title="gigarouter", version="0.1.0", lifespan=lifespan,
                  openapi_url=None, docs_url=None, redoc_url=None)
    app.state.settings = settings
    app.state.metrics = metrics
    install_error_handlers(app)
    openapi.install(app, settings)
    app.add_middleware(SheddingMiddleware)          # innermost: after open mode's loopback check
    app.add_middleware(ClientAddressMiddleware, settings=settings)
    app.add_middleware(RequestContextMiddleware, metrics=metrics, max_body_bytes=settings.max_body_bytes,
                       body_limits={"/v1/files": settings.batch_max_file_bytes + files.MULTIPART_OVERHEAD_BYTES})
    redact_access_log()
    if settings.cors_origins:   # outermost, so a 413 or a 500 reaches the page with its CORS headers too
        app.add_middleware(ApiCorsMiddleware, origins=settings.cors_origins)
    for module in (embeddings, tei, cohere, models, health, accounts, keys, usage, admin, files, batches):
        app.include_router(module.router)
    from gigarouter import web

    web.mount(app)
    return app


async def _start_gate(settings: Settings, gate: Gate | None) -> Gate:
    """The accounts gate: built from settings (auth mode decided at start), or the one given, started."""
    if gate is None:
        return await build_gate(settings)
    start = getattr(gate, "start", None)
    if start is not None:
        await start()
    return gate
