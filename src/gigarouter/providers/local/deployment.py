"""A local deployment: a configured model loaded into this process (recipe + engine + scheduler).

Loading happens in the background at start-up (``load``); until it is done the
deployment is ``loading`` and ``/ready`` answers 503; a load that fails leaves
it ``failed`` with the reason, and the other models keep serving.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

from gigarouter.catalog.cards import ModelCard, card_for_model
from gigarouter.engine.base import Engine, pack
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
                                   latency_target_s=settings.interactive_latency_ms / 1000,
                                   max_queue_wait_s=settings.max_queue_wait_ms / 1000,
                                   watchdog_floor_s=settings.watchdog_floor_s)
        try:
            self.scheduler.seed_rate(await asyncio.to_thread(measure_drain_rate, engine))
        except Exception as exc:   # warm-up passed: the rate is then learnt from the first batches
            log.warning("model %s: timing a warm-up batch failed (%s); the queue learns its rate from "
                        "traffic", self.name, exc)
        self.scheduler.start()
        self.state = "ready"
        log.info("model %s ready on %s in %s", self.name, engine.device_name, getattr(engine, "precision", "?"))

    @property
    def hung(self) -> str | None:
        """Why the scheduler's watchdog thinks the device hangs, or None."""
        return self.scheduler.hung if self.scheduler is not None else None

    async def stop(self) -> None:
        """Refuse new work and finish what was admitted."""
        if self.scheduler is not None:
            await self.scheduler.stop()


#: Tokens per sequence of the timed warm-up batch: a typical document, between a query and a page.
_SEED_SEQUENCE_TOKENS = 128


def measure_drain_rate(engine: Engine) -> float:
    """Tokens per second of one full-budget batch of typical sequences, timed after warm-up (blocking):
    the queue's first drain rate, so admission by predicted wait holds from the first request."""
    length = max(1, min(_SEED_SEQUENCE_TOKENS, engine.token_budget))
    count = max(1, engine.token_budget // length)
    batch = pack([[1] * length] * count)     # token id 1 exists in every vocabulary we serve
    started = time.perf_counter()
    engine.embed(batch)
    return batch.num_tokens / max(time.perf_counter() - started, 1e-6)
