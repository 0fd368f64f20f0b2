"""The web front: catalog pages, compare, votes, sign-up/sign-in and the dashboard.

Server-rendered Jinja templates, one CSS file and a little vanilla JS, all
shipped in the package (no CDN, no build step). See docs/web.md.
"""

from __future__ import annotations

from importlib import resources

from fastapi import FastAPI
from starlette.staticfiles import StaticFiles


def mount(app: FastAPI) -> None:
    """Attach the web pages, their error page and the static files to the API app."""
    from gigarouter.web import errors
    from gigarouter.web.routes import auth, catalog, dashboard, onboarding, try_it, votes

    errors.install(app)
    for module in (catalog, try_it, votes, auth, dashboard, onboarding):
        app.include_router(module.router)
    static = resources.files("gigarouter.web").joinpath("static")
    app.mount("/static", StaticFiles(directory=str(static)), name="static")
