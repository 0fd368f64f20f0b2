"""Onboarding runs started from the web: in a background thread of the server, through its own router.

``RouteTarget`` measures a model this server serves through its route (provider choice, the
local scheduler and engine: what a request gets), skipping only the embedding cache. The run
is created before the thread starts, so the admin queue shows it at once; the thread reports
each step into the database, and the page polls it.
"""

from __future__ import annotations

import asyncio
import logging
import math
import threading
from collections.abc import Sequence

import numpy as np

from gigarouter.catalog.cards import ModelCard
from gigarouter.onboarding.pipeline import Options, device_of, onboard, versions
from gigarouter.onboarding.store import OnboardingStore, Run
from gigarouter.onboarding.targets import Embedded, Target
from gigarouter.recipes.base import InputType
from gigarouter.router.preferences import Preferences

log = logging.getLogger(__name__)

#: Inputs per routed call, as the Embedder sends them.
_CHUNK = 256


class RouteTarget:
    """A route of this server's router, driven from another thread onto the server's event loop."""

    name = "in-process"

    def __init__(self, route, loop: asyncio.AbstractEventLoop) -> None:
        self.route = route
        self.model = route.name
        self.loop = loop
        self.plan = route.plan(Preferences())

    def embed(self, texts: Sequence[str], *, input_type: InputType, instruction: str | None) -> Embedded:
        texts = list(texts)
        parts, tokens = [], 0
        for start in range(0, len(texts), _CHUNK):
            call = self.route.prepare(texts=texts[start:start + _CHUNK], token_ids=None, input_type=input_type,
                                      instruction=instruction)
            routed = asyncio.run_coroutine_threadsafe(self.route.run(self.plan, call, deadline=math.inf),
                                                      self.loop).result()
            parts.append(np.asarray(routed.result.vectors, dtype=np.float32))
            tokens += call.tokens
        return Embedded(vectors=np.concatenate(parts), tokens=tokens)

    def device(self) -> str:
        local = getattr(self.route, "local", None)
        engine = getattr(local, "engine", None) if local is not None else None
        if engine is not None:
            return engine.device_name
        return ", ".join(b.name for b in self.plan.candidates) or "no provider"

    def close(self) -> None:
        pass


def start_in_background(store: OnboardingStore, card: ModelCard, target: Target, options: Options) -> Run:
    """Record a new run and run it in a daemon thread; one run per model at a time, across every
    process sharing the database (``store.start`` raises ``RunInProgress``)."""
    from gigarouter.bench.machine import git_commit

    run = store.start(card.slug, provider=target.name, commit=git_commit(), device=device_of(target),
                      versions=versions())

    def work() -> None:
        try:
            onboard(card.slug, card, target, store=store, options=options, run=run)
        except Exception as exc:    # never leave a run "running": record why it stopped
            log.exception("onboarding %s failed", card.slug)
            store.finish(run.id, results=store.run(run.id).results, reason=f"{type(exc).__name__}: {exc}")
        finally:
            target.close()

    threading.Thread(target=work, name=f"onboard-{card.slug}", daemon=True).start()
    return run
