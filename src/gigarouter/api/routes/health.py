"""Liveness, readiness, Prometheus metrics, and the API schema (/openapi.json, /docs).

/metrics, /openapi.json and /docs are public unless ``public_metrics = false``
(then a loopback client or an admin key; ``deps.private_unless_public``).
"""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request, Response
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse, JSONResponse, PlainTextResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from gigarouter.api.deps import MetricsDep, RouterDep, private_unless_public
from gigarouter.api.errors import error_response
from gigarouter.errors import retry_after_header

router = APIRouter()


#: What /ready's 503 tells a balancer to wait before asking again.
_READY_RETRY_S = 5.0


@router.get("/health")
async def health() -> dict:
    """The process is alive (says nothing about models). ``async`` with no dependency: it never waits
    for the thread pool, a lock or model work, so it stays fast under any load."""
    return {"status": "ok"}


@router.get("/ready")
async def ready(request: Request, models: RouterDep) -> Response:
    """200 once every local model is loaded and warmed up, its device answers, and every route was probed.

    Answers at once even while a long batch runs: device health is read from the engine's
    heartbeat and the scheduler's watchdog (a batch far past its predicted time), never by
    waiting for the device. Every 503 carries Retry-After.
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
        elif dep is not None and dep.hung is not None:
            state = f"device hung: {dep.hung}"
        elif dep is not None and (reason := _device_trouble(dep.engine)) is not None:
            state = f"device not answering: {reason}" if reason else "device not answering"
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
    return error_response(503, f"not ready: {waiting}", type="server_error", code="not_ready",
                          headers={"Retry-After": retry_after_header(_READY_RETRY_S)})


def _device_trouble(engine) -> str | None:
    """None while the device is fine, else why not. Runs on the event loop, so it must not wait:
    engines answer from their heartbeat, never by synchronizing the device (engine/heartbeat.py)."""
    detail = getattr(engine, "health_state", None)
    if detail is not None:
        state = detail()
        return None if state.ok else state.reason
    return None if engine.health() else ""


@router.get("/metrics", response_class=PlainTextResponse, dependencies=[Depends(private_unless_public)])
async def metrics(m: MetricsDep) -> Response:
    return Response(generate_latest(m.registry), media_type=CONTENT_TYPE_LATEST)


@router.get("/openapi.json", include_in_schema=False, dependencies=[Depends(private_unless_public)])
async def openapi_schema(request: Request) -> JSONResponse:
    return JSONResponse(request.app.openapi())


@router.get("/docs", include_in_schema=False, dependencies=[Depends(private_unless_public)])
async def docs() -> HTMLResponse:
    return get_swagger_ui_html(openapi_url="/openapi.json", title="gigarouter API")
