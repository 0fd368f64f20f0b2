"""GET /v1/models and /v1/models/{id}: OpenAI's list shape plus catalog fields and providers."""

from __future__ import annotations

from fastapi import APIRouter

from gigarouter.api.deps import RouterDep
from gigarouter.catalog.cards import ModelCard
from gigarouter.errors import ModelNotFound
from gigarouter.router.route import Binding, Route

router = APIRouter()
_CREATED = 1_700_000_000  # OpenAI requires an int; our models have no creation time of their own


@router.get("/v1/models")
async def list_models(models: RouterDep) -> dict:
    data = [route_entry(r) for r in models.routes]
    data += [_card_entry(c, status="coming_soon") for c in models.catalog_only()]
    return {"object": "list", "data": data}


@router.get("/v1/models/{model_id:path}")
async def get_model(model_id: str, models: RouterDep) -> dict:
    for entry in (await list_models(models))["data"]:
        if model_id.lower() in (n.lower() for n in (entry["id"], *entry["aliases"])):
            return entry
    raise ModelNotFound(f"The model {model_id!r} does not exist", param="model")


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
        "dimensions": route.dim,
        "max_tokens": route.max_tokens,
        "fingerprint": route.fingerprint,
        **_template(route),
        "providers": [provider_entry(b) for b in route.bindings],
    })
    return base


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
