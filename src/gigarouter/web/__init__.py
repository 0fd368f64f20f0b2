"""The web front: catalog pages, compare, votes, sign-up/sign-in and the dashboard."""

from __future__ import annotations

from fastapi import FastAPI


def mount(app: FastAPI) -> None:
    """Attach the web pages and static files to the API app (filled in by the web package)."""
    return None
