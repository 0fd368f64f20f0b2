"""What this server deploys: model names and aliases -> a ready recipe + engine + scheduler.

A ``Deployment`` joins a configured model (settings), its catalog card (facts)
and, once loaded, its recipe, engine and scheduler. Loading happens in the
background at start-up; ``/ready`` answers 503 until every deployment is ready.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass, field

from gigarouter.catalog.cards import ModelCard, find_card, load_cards
from gigarouter.engine.base import Engine
from gigarouter.errors import ModelNotFound, NotReady
from gigarouter.metrics import Metrics
from gigarouter.recipes.base import Recipe
from gigarouter.scheduler.queue import Scheduler
from gigarouter.settings import ModelConfig, Settings

log = logging.getLogger(__name__)

#: Builds a model's recipe and engine (blocking; runs in a worker thread).
ModelLoader = Callable[[ModelConfig, Settings], tuple[Recipe, Engine]]


@dataclass(eq=False)
class Deployment:
    config: ModelConfig
    card: ModelCard | None
    state: str = "loading"                 # loading | ready | failed
    error: str | None = None
    recipe: Recipe | None = None
    engine: Engine | None = None
    scheduler: Scheduler | None = None
    aliases: tuple[str, ...] = field(default=())

    @property
    def name(self) -> str:
        return self.config.name

    @property
    def names(self) -> tuple[str, ...]:
        return (self.config.name, *self.aliases)

    @property
    def price_per_million_usd(self) -> float:
        """The deployment's own price if configured, else the card's; a model with neither is free."""
        if self.config.price_per_million_usd is not None:
            return self.config.price_per_million_usd
        return (self.card.price_per_million_usd or 0.0) if self.card else 0.0


class ModelRegistry:
    def __init__(self, settings: Settings, loader: ModelLoader, metrics: Metrics) -> None:
        self.settings = settings
        self.loader = loader
        self.metrics = metrics
        self.deployments: list[Deployment] = []
        self._by_name: dict[str, Deployment] = {}
        for config in settings.models:
            card = find_card(config.card, config.name, config.weights, *config.aliases)
            own = {n.lower() for n in (config.name, *config.aliases)}
            extra = tuple(n for n in (card.names if card else ()) if n.lower() not in own)
            dep = Deployment(config=config, card=card, aliases=(*config.aliases, *extra))
            self.deployments.append(dep)
            for name in dep.names:
                self._by_name.setdefault(name.lower(), dep)

    def lookup(self, name: str) -> Deployment:
        """The deployment serving ``name`` (404 if none, 503 if not ready yet)."""
        dep = self._by_name.get(name.lower())
        if dep is None:
            raise ModelNotFound(f"The model {name!r} does not exist or is not served here; "
                                "GET /v1/models lists the models", param="model")
        if dep.state != "ready":
            detail = f": {dep.error}" if dep.error else ""
            raise NotReady(f"model {name!r} is {dep.state}{detail}")
        return dep

    @property
    def ready(self) -> bool:
        return all(d.state == "ready" for d in self.deployments)

    def catalog_only(self) -> list[ModelCard]:
        """Cards with no deployment in this server (shown as 'coming soon')."""
        served = {id(d.card) for d in self.deployments if d.card}
        return [c for c in load_cards().values() if id(c) not in served]

    async def load_all(self) -> None:
        for dep in self.deployments:
            await self._load(dep)

    async def _load(self, dep: Deployment) -> None:
        try:
            recipe, engine = await asyncio.to_thread(self.loader, dep.config, self.settings)
            await asyncio.to_thread(engine.warmup)
        except Exception as exc:  # keep serving the other models; /ready stays 503
            log.exception("loading model %s failed", dep.name)
            dep.state, dep.error = "failed", str(exc)
            return
        dep.recipe, dep.engine = recipe, engine
        dep.scheduler = Scheduler(engine, model=dep.name, token_budget=engine.token_budget,
                                  max_queued_tokens=self.settings.max_queued_tokens, metrics=self.metrics,
                                  latency_target_s=self.settings.interactive_latency_ms / 1000)
        dep.scheduler.start()
        dep.state = "ready"
        log.info("model %s ready on %s", dep.name, engine.device_name)

    async def stop(self) -> None:
        await asyncio.gather(*(d.scheduler.stop() for d in self.deployments if d.scheduler))
