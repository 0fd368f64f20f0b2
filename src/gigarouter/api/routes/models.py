"""GET /v1/models and /v1/models/{id}: OpenAI's list shape plus catalog fields."""

from __future__ import annotations

from fastapi import APIRouter

from gigarouter.api.deps import RegistryDep
from gigarouter.catalog.cards import ModelCard
from gigarouter.catalog.registry import Deployment
from gigarouter.errors import ModelNotFound

router = APIRouter()
_CREATED = 1_700_000_000  # OpenAI requires an int; our models have no creation time of their own


@router.get("/v1/models")
async def list_models(registry: RegistryDep) -> dict:
    data = [_deployment_entry(d) for d in registry.deployments]
    data += [_card_entry(c, status="coming_soon") for c in registry.catalog_only()]
    return {"object": "list", "data": data}


@router.get("/v1/models/{model_id:path}")
async def get_model(model_id: str, registry: RegistryDep) -> dict:
    for entry in (await list_models(registry))["data"]:
        if model_id.lower() in (n.lower() for n in (entry["id"], *entry["aliases"])):
            return entry
    raise ModelNotFound(f"The model {model_id!r} does not exist", param="model")


def _deployment_entry(dep: Deployment) -> dict:
    status = {"ready": "live", "loading": "loading", "failed": "failed"}[dep.state]
    base = _card_entry(dep.card, status=status) if dep.card else {"license": None, "price_per_million_usd": None,
                                                                   "hub_id": None, "display_name": dep.name}
    base.update({
        "id": dep.name,
        "object": "model",
        "created": _CREATED,
        "owned_by": "gigarouter",
        "aliases": list(dep.aliases),
        "recipe": dep.config.recipe,
        "status": status,
        "price_per_million_usd": dep.price_per_million_usd,
        "dimensions": dep.engine.dim if dep.engine else (dep.card.dimensions if dep.card else None),
        "max_tokens": dep.recipe.max_tokens if dep.recipe else (dep.card.max_tokens if dep.card else None),
    })
    return base


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
