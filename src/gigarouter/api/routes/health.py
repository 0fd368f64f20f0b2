"""Liveness, readiness and Prometheus metrics."""

from __future__ import annotations

from fastapi import APIRouter, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from gigarouter.api.deps import MetricsDep, RegistryDep
from gigarouter.api.errors import error_response

router = APIRouter()


@router.get("/health")
async def health() -> dict:
    return {"status": "ok"}


@router.get("/ready")
async def ready(registry: RegistryDep) -> Response:
    models = {d.name: d.state if d.state != "failed" else f"failed: {d.error}" for d in registry.deployments}
    unhealthy = [d.name for d in registry.deployments if d.engine is not None and not d.engine.health()]
    if registry.ready and not unhealthy:
        from fastapi.responses import JSONResponse
        return JSONResponse({"status": "ready", "models": models})
    waiting = [name for name, state in models.items() if state != "ready"] + unhealthy
    return error_response(503, f"not ready: {', '.join(waiting)}", type="server_error", code="not_ready")


@router.get("/metrics")
async def metrics(m: MetricsDep) -> Response:
    return Response(generate_latest(m.registry), media_type=CONTENT_TYPE_LATEST)
