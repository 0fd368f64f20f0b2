"""Liveness, readiness and Prometheus metrics."""

from __future__ import annotations

from fastapi import APIRouter, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from gigarouter.api.deps import MetricsDep, RegistryDep
from gigarouter.api.errors import error_response

router = APIRouter()


@router.get("/health")
async def health() -> dict:
    """The process is alive (says nothing about models)."""
    return {"status": "ok"}


@router.get("/ready")
async def ready(registry: RegistryDep) -> Response:
    """200 once every configured model is loaded, warmed up and its device answers."""
    states = {}
    for dep in registry.deployments:
        state = dep.state
        if state == "failed":
            state = f"failed: {dep.error}"
        elif state == "ready" and not dep.engine.health():
            state = "device not answering"
        states[dep.name] = state
    if all(state == "ready" for state in states.values()):
        return JSONResponse({"status": "ready", "models": states})
    waiting = "; ".join(f"{name} is {state}" for name, state in states.items() if state != "ready")
    return error_response(503, f"not ready: {waiting}", type="server_error", code="not_ready")


@router.get("/metrics")
async def metrics(m: MetricsDep) -> Response:
    return Response(generate_latest(m.registry), media_type=CONTENT_TYPE_LATEST)
