"""GET /models, /models/{slug} and /compare: the catalog, server-rendered from cards in memory."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Request
from fastapi.responses import HTMLResponse, RedirectResponse
from starlette.concurrency import run_in_threadpool

from gigarouter.catalog.cards import ModelCard, find_card, load_cards
from gigarouter.web import catalog, snippets
from gigarouter.web.context import WebContext, WebDep
from gigarouter.web.errors import not_found
from gigarouter.web.templating import render
from gigarouter.web.trying import TRY_MAX_CHARS, try_access

router = APIRouter(include_in_schema=False)


async def vote_counts(web: WebContext) -> dict[str, int]:
    store = web.services.store
    return await run_in_threadpool(store.vote_counts) if store else {}


async def my_votes(web: WebContext) -> set[str]:
    store = web.services.store
    if store is None or web.user is None:
        return set()
    return await run_in_threadpool(store.votes_of, web.user.id)


async def onboarding_records(web: WebContext, *, latest: bool = False) -> catalog.Onboarding:
    """Statuses and last passing runs (what every catalog page needs); ``latest``: every model's newest run too."""
    store = web.services.onboarding
    if store is None:
        return catalog.NO_ONBOARDING

    def read() -> catalog.Onboarding:
        return catalog.Onboarding(statuses=store.statuses(), passed=store.latest_passed(),
                                  latest=store.latest_runs() if latest else {})

    return await run_in_threadpool(read)


def router_of(request: Request):
    return getattr(request.app.state, "router", None)


@router.get("/")
async def home() -> RedirectResponse:
    return RedirectResponse("/models", status_code=307)


@router.get("/models")
async def models_page(request: Request, web: WebDep, status: str | None = None, license: str | None = None,
                      task: str | None = None, sort: str | None = None) -> HTMLResponse:
    everything = catalog.views(load_cards().values(), router_of(request), await vote_counts(web),
                               await onboarding_records(web))
    filters = catalog.Filters.parse(status=status, license=license, task=task, sort=sort)
    return render(request, "models.html", {
        "models": catalog.select(everything, filters), "total": len(everything), "filters": filters,
        "facets": catalog.facets(everything), "statuses": catalog.STATUSES, "sorts": catalog.SORTS,
        "wanted": catalog.most_wanted(everything), "mine": await my_votes(web),
    })


@router.get("/models/{slug}")
async def model_page(request: Request, slug: str, web: WebDep) -> HTMLResponse:
    card = find_model(slug)
    if card.slug != slug:
        return RedirectResponse(f"/models/{card.slug}", status_code=308)
    return await render_model(request, web, card)


@router.get("/models/{org}/{name}")
async def hub_name(org: str, name: str) -> RedirectResponse:
    """``/models/<Hub id>`` -> the model's page."""
    card = find_model(f"{org}/{name}")
    return RedirectResponse(f"/models/{card.slug}", status_code=308)


async def render_model(request: Request, web: WebContext, card: ModelCard, *, try_result: dict | None = None,
                       status_code: int = 200) -> HTMLResponse:
    cards = load_cards()
    votes = await vote_counts(web)
    onboarding = await onboarding_records(web)
    model = catalog.view(card, router_of(request), votes, onboarding)
    base_url = str(request.base_url).rstrip("/")
    return render(request, "model.html", {
        "m": model, "card": card, "voted": card.slug in await my_votes(web),
        "related": catalog.views(catalog.related(card, cards), router_of(request), votes, onboarding),
        "published": catalog.benchmark_scores(card, cards.values()),
        "compare_url": "/compare?models=" + ",".join([card.slug, *(c.slug for c in catalog.related(card, cards))]),
        "curl": snippets.curl(card, model=model.served_name, base_url=base_url),
        "python": snippets.python(card, model=model.served_name, base_url=base_url),
        "spec_rows": catalog.spec_rows(card), "try_result": try_result, "try_max_chars": TRY_MAX_CHARS,
        "try_access": await try_access(request, web) if model.live else "closed",
    }, status_code=status_code)


@router.get("/compare")
async def compare_page(request: Request, web: WebDep,
                       models: Annotated[list[str], Query()] = []) -> HTMLResponse:  # noqa: B006 (FastAPI copies it)
    cards = load_cards()
    chosen, unknown = catalog.parse_slugs(models, cards)
    if not chosen:
        chosen = list(cards.values())
    votes = await vote_counts(web)
    shown = catalog.views(chosen, router_of(request), votes, await onboarding_records(web))
    columns = catalog.benchmark_columns(list(cards.values()))
    scores = {m.slug: catalog.benchmark_scores(m.card, cards.values()) for m in shown}
    columns = [c for c in columns if any(c in s for s in scores.values())]
    best = {c: max(s[c] for s in scores.values() if c in s) for c in columns}
    return render(request, "compare.html", {
        "models": shown, "unknown": unknown, "columns": columns, "scores": scores, "best": best,
        "all": sorted(cards.values(), key=lambda c: c.display_name.lower()),
        "chosen": {m.slug for m in shown},
        "measured_columns": catalog.measured_columns(shown), "measured_value": catalog.measured_value,
    })


def find_model(slug: str) -> ModelCard:
    card = load_cards().get(slug) or find_card(slug)
    if card is None:
        raise not_found("model called “" + slug + "”")
    return card
