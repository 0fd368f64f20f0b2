"""The Jinja environment (templates ship in the package) and one ``render`` for every page."""

from __future__ import annotations

import hashlib
from functools import cache
from importlib import resources
from typing import Any

from fastapi import Request
from fastapi.responses import HTMLResponse
from jinja2 import Environment, PackageLoader, StrictUndefined, select_autoescape

from gigarouter.web import formatting

#: Pages are personal once someone is signed in; never let a shared cache keep them.
_NO_STORE = {"Cache-Control": "no-store"}
_SECURITY_HEADERS = {
    "Content-Security-Policy": ("default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; "
                                "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "X-Frame-Options": "DENY",
}


@cache
def environment() -> Environment:
    env = Environment(loader=PackageLoader("gigarouter.web", "templates"),
                      autoescape=select_autoescape(["html"]), undefined=StrictUndefined,
                      trim_blocks=True, lstrip_blocks=True, auto_reload=False)
    env.filters.update(price=formatting.price, money=formatting.micro_dollars, compact=formatting.compact,
                       month=formatting.month, day=formatting.day, thousands=formatting.thousands,
                       score=formatting.score, prose=formatting.prose,
                       latency_ms=formatting.latency_ms, percent=formatting.percent,
                       parameters=formatting.parameters, license_name=formatting.license_name,
                       task_name=formatting.task_name)
    env.globals["static"] = static_url
    return env


@cache
def _static_version(name: str) -> str:
    data = resources.files("gigarouter.web").joinpath("static", name).read_bytes()
    return hashlib.sha256(data).hexdigest()[:10]


def static_url(name: str) -> str:
    """``/static/<name>?v=<content hash>``: safe to cache for a long time."""
    return f"/static/{name}?v={_static_version(name)}"


def render(request: Request, template: str, context: dict[str, Any] | None = None, *,
           status_code: int = 200, headers: dict[str, str] | None = None) -> HTMLResponse:
    web = request.state.web
    page = {"request": request, "user": web.user, "csrf_token": web.csrf_token, "accounts": web.accounts_enabled,
            "path": request.url.path, "flash": web.flash, **(context or {})}
    html = environment().get_template(template).render(page)
    response = HTMLResponse(html, status_code=status_code,
                            headers={**_SECURITY_HEADERS, **_NO_STORE, **(headers or {})})
    web.apply_cookies(response)
    return response
