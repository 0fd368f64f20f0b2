"""``create_app(settings)``: the ASGI app, its services built once in the lifespan."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from gigarouter.accounts.gate import Gate, OpenGate
from gigarouter.api.errors import install_error_handlers
from gigarouter.api.middleware import RequestContextMiddleware
from gigarouter.api.routes import embeddings, health, models
from gigarouter.catalog.registry import ModelLoader, ModelRegistry
from gigarouter.metrics import Metrics
from gigarouter.settings import Settings

log = logging.getLogger(__name__)


def create_app(settings: Settings | None = None, *, loader: ModelLoader | None = None,
               gate: Gate | None = None) -> FastAPI:
    """Build the service. ``loader`` and ``gate`` default to the real model loader and open access."""
    settings = settings or Settings()
    if loader is None:
        from gigarouter.engine.factory import load_model as loader
    metrics = Metrics()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        registry = ModelRegistry(settings, loader, metrics)
        app.state.registry = registry
        app.state.gate = gate or OpenGate()
        loading = asyncio.create_task(registry.load_all(), name="load-models")
        try:
            yield
        finally:
            loading.cancel()
            await registry.stop()       # finishes admitted work before the process exits
            await app.state.gate.close()

    app = FastAPI(title="gigarouter", version="0.1.0", lifespan=lifespan,
                  docs_url="/docs", redoc_url=None)
    app.state.settings = settings
    app.state.metrics = metrics
    install_error_handlers(app)
    app.add_middleware(RequestContextMiddleware, metrics=metrics, max_body_bytes=settings.max_body_bytes)
    for module in (embeddings, models, health):
        app.include_router(module.router)
    from gigarouter import web

    web.mount(app)
    return app
