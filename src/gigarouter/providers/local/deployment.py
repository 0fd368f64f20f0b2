"""A local deployment: a configured model loaded into this process (recipe + engine + scheduler).

Loading happens in the background at start-up (``load``); until it is done the
deployment is ``loading`` and ``/ready`` answers 503; a load that fails leaves
it ``failed`` with the reason, and the other models keep serving.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass

from gigarouter.catalog.cards import ModelCard, card_for_model
from gigarouter.engine.base import Engine
from gigarouter.errors import ModelLoadError
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
    exception: BaseException | None = None   # why loading failed, for callers that raise it (Embedder)
    recipe: Recipe | None = None
    engine: Engine | None = None
    scheduler: Scheduler | None = None

    @classmethod
    def for_config(cls, config: ModelConfig) -> Deployment:
        return cls(config=config, card=card_for_model(config))

    @property
    def name(self) -> str:
        return self.config.name

    async def load(self, loader: ModelLoader, settings: Settings, metrics: Metrics | None) -> None:
        """Load, warm up and start the scheduler; on failure record why (never raises)."""
        try:
            recipe, engine = await asyncio.to_thread(loader, self.config, settings)
            await asyncio.to_thread(engine.warmup)
        except Exception as exc:  # keep serving the other models; /ready stays 503
            # A load error the operator can act on is one line; anything else keeps its traceback.
            log.error("loading model %s failed: %s", self.name, exc, exc_info=not isinstance(exc, ModelLoadError))
            self.state, self.error, self.exception = "failed", str(exc), exc
            return
        self.recipe, self.engine = recipe, engine
        self.scheduler = Scheduler(engine, model=self.name, token_budget=engine.token_budget,
                                   max_queued_tokens=settings.max_queued_tokens, metrics=metrics,
                                   latency_target_s=settings.interactive_latency_ms / 1000)
        self.scheduler.start()
        self.state = "ready"
        log.info("model %s ready on %s in %s", self.name, engine.device_name, getattr(engine, "precision", "?"))

    async def stop(self) -> None:
        """Refuse new work and finish what was admitted."""
        if self.scheduler is not None:
            await self.scheduler.stop()
