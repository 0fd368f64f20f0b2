"""Liveness, readiness and Prometheus metrics."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from gigarouter.api.deps import MetricsDep, RouterDep
from gigarouter.api.errors import error_response

router = APIRouter()


@router.get("/health")
async def health() -> dict:
    """The process is alive (says nothing about models)."""
    return {"status": "ok"}


@router.get("/ready")
async def ready(request: Request, models: RouterDep) -> Response:
    """200 once every local model is loaded and warmed up, its device answers, and every route was probed.

    With ``keep_serving_on_load_failure`` a model that failed to load is reported in the body
    and does not hold readiness back.

    A route whose remote providers are all down does not hold readiness back (this
    server can still serve the others); its state is in the body and in /v1/models.
    """
    states = {}
    for route in models.routes:
        dep = route.local
        if dep is not None and dep.state == "failed":
            state = f"failed: {dep.error}"
        elif dep is not None and dep.state != "ready":
            state = dep.state
        elif dep is not None and not dep.engine.health():
            state = "device not answering"
        elif not route.probed:
            state = "probing providers"
        else:
            state = "ready"
        states[route.name] = state
    # keep_serving_on_load_failure: a model that failed to load no longer holds readiness back.
    keep = request.app.state.settings.keep_serving_on_load_failure
    if all(state == "ready" or (keep and state.startswith("failed")) for state in states.values()):
        providers = {r.name: {b.name: b.state for b in r.bindings} for r in models.routes}
        return JSONResponse({"status": "ready", "models": states, "providers": providers})
    waiting = "; ".join(f"{name} is {state}" for name, state in states.items() if state != "ready")
    return error_response(503, f"not ready: {waiting}", type="server_error", code="not_ready")


@router.get("/metrics")
async def metrics(m: MetricsDep) -> Response:
    return Response(generate_latest(m.registry), media_type=CONTENT_TYPE_LATEST)
