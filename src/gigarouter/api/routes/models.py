"""GET /v1/models: what this server serves; GET /v1/catalog: every model card, served or coming soon.

``/v1/models`` keeps OpenAI's list shape (plus catalog fields and providers) and lists only
models a request can name here: live, loading, or down for now. Tools pick a model from it,
so a catalog entry that would answer 404 never appears there; ``/v1/catalog`` has those.
"""

from __future__ import annotations

from fastapi import APIRouter

from gigarouter.api.deps import RouterDep
from gigarouter.catalog.cards import ModelCard, find_card, load_cards
from gigarouter.errors import ModelNotFound
from gigarouter.router.route import Binding, Route

router = APIRouter()
_CREATED = 1_700_000_000  # OpenAI requires an int; our models have no creation time of their own


@router.get("/v1/models")
async def list_models(models: RouterDep) -> dict:
    """Served models; one that failed to load is left out (GET /v1/models/{id} and /ready say why)."""
    data = [route_entry(r) for r in models.routes]
    return {"object": "list", "data": [e for e in data if e["status"] != "failed"]}


@router.get("/v1/models/{model_id:path}")
async def get_model(model_id: str, models: RouterDep) -> dict:
    route = models.find(model_id)
    if route is not None:
        return route_entry(route)
    if find_card(model_id) is not None:
        raise ModelNotFound(f"The model {model_id!r} is in the catalog but not served here; "
                            "GET /v1/catalog lists the catalog", param="model")
    raise ModelNotFound(f"The model {model_id!r} does not exist", param="model")


@router.get("/v1/catalog")
async def list_catalog(models: RouterDep) -> dict:
    """Every model card, with its status here (``coming_soon`` when no route serves it)."""
    return {"object": "list", "data": [catalog_entry(c, models) for c in sorted(load_cards().values(),
                                                                              key=lambda c: c.slug)]}


@router.get("/v1/catalog/{model_id:path}")
async def get_catalog_entry(model_id: str, models: RouterDep) -> dict:
    card = load_cards().get(model_id) or find_card(model_id)
    if card is None:
        raise ModelNotFound(f"The catalog has no model {model_id!r}", param="model")
    return catalog_entry(card, models)


def catalog_entry(card: ModelCard, models) -> dict:
    route = next((r for r in models.routes if r.card is not None and r.card.slug == card.slug), None)
    entry = _card_entry(card, status=route_status(route) if route is not None else "coming_soon")
    entry["served_as"] = route.name if route is not None else None   # the name a request uses here
    return entry


def route_status(route: Route) -> str:
    """live (a provider can serve it now) | loading | failed | down (every provider is down or mismatched)."""
    if route.healthy():
        return "live"
    if route.local is not None and route.local.state in ("loading", "failed"):
        return route.local.state
    return "loading" if not route.probed else "down"


def route_entry(route: Route) -> dict:
    status = route_status(route)
    base = _card_entry(route.card, status=status) if route.card else {"license": None, "hub_id": None,
                                                                      "display_name": route.name}
    healthy = route.healthy()
    base.update({
        "id": route.name,
        "object": "model",
        "created": _CREATED,
        "owned_by": "gigarouter",
        "aliases": list(route.aliases),
        "recipe": route.local.config.recipe if route.local is not None else (route.card.recipe if route.card else None),
        "status": status,
        # The cheapest provider that can serve it now (what a default request pays).
        "price_per_million_usd": min((b.price_per_million_usd for b in healthy or route.bindings), default=None),
        # What a token answered from the per-input cache bills (docs/cache.md); None when it is off.
        "cached_price_per_million_usd": route.cached_price_per_million_usd if route.cache is not None else None,
        "dimensions": route.dim,
        "max_tokens": route.max_tokens,
        "fingerprint": route.fingerprint,
        # What the local engine computes in (float32, bfloat16, bfloat16-mixed...); null before it loads.
        "precision": _precision(route),
        **_template(route),
        "providers": [provider_entry(b) for b in route.bindings],
    })
    return base


def _precision(route: Route) -> str | None:
    engine = route.local.engine if route.local is not None else None
    return getattr(engine, "precision", None)


def _template(route: Route) -> dict:
    """llm2vec's input template (inst | none) and what decided it; null for other recipes and before loading."""
    recipe = route.local.recipe if route.local is not None else None
    return {"template": getattr(recipe, "template", None), "template_source": getattr(recipe, "template_source", None)}


def provider_entry(binding: Binding) -> dict:
    return {"name": binding.name, "kind": binding.kind, "state": binding.state,
            "price_per_million_usd": binding.price_per_million_usd,
            "p50_latency_ms": binding.health.p50_latency_ms(), "uptime": binding.health.uptime(),
            "fingerprint": binding.fingerprint}


def _card_entry(card: ModelCard, *, status: str) -> dict:
    return {
        "id": card.slug,
        "object": "model",
        "created": _CREATED,
        "owned_by": card.hub_id.split("/")[0],
        "aliases": [card.hub_id, *card.aliases],
        "display_name": card.display_name,
        "hub_id": card.hub_id,
        "recipe": card.recipe,
        "status": status,
        "dimensions": card.dimensions,
        "max_tokens": card.max_tokens,
        "license": card.license,
        "price_per_million_usd": card.price_per_million_usd,
    }
