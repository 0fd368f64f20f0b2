"""In-process embeddings: the same router facade, recipe and engine as the server, no HTTP.

    >>> from gigarouter import Embedder
    >>> emb = Embedder()                       # the embedded default model
    >>> emb.encode(["hello", "world"]).shape
    (2, 384)

``encode`` also accepts the keyword names evaluation harnesses pass (mteb's
``prompt_name`` / ``task_name`` are ignored unless they name a card instruction),
and ``encode_queries`` / ``encode_corpus`` exist for retrieval harnesses.

The model is one local route, run on a private event loop in a background
thread; ``encode`` blocks the caller until its vectors are back. Inputs are sorted
by length and sent as several jobs at once, so the scheduler packs neighbours
together and keeps every core busy; vectors come back in input order.

The per-input cache applies as in the server (the settings' ``cache``: in this
process by default; ``cache = "file"`` keeps vectors across runs and shares them
with a server on the same host in open mode, ``"off"`` turns it off): an input
seen before, in this or an earlier ``encode``, is not computed again.
"""

from __future__ import annotations

import asyncio
import math
import threading
import weakref
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from gigarouter.pooling.encoding import finish
from gigarouter.providers.base import EmbedCall
from gigarouter.recipes.base import InputType, PreparedInput, Truncate
from gigarouter.router.preferences import Preferences
from gigarouter.router.router import Router
from gigarouter.settings import DEFAULT_MODEL_NAME, ModelConfig, Settings, load_settings

#: Inputs per job: small enough for steady progress reports, large enough to fill batches.
_JOB_INPUTS = 256


class Embedder:
    """Load one model and embed texts with it, synchronously."""

    def __init__(self, model: str | ModelConfig = DEFAULT_MODEL_NAME, *, config: Path | str | None = None,
                 settings: Settings | None = None) -> None:
        from gigarouter.providers.local.loading import load_model

        settings = settings or load_settings(Path(config) if config else None)
        self.config = model if isinstance(model, ModelConfig) else _find(settings, model)
        self._router = Router(settings.with_(models=(self.config,), providers=()), loader=load_model)
        self._route = self._router.routes[0]
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="embedder-loop", daemon=True)
        self._thread.start()
        # Stop the scheduler and the loop when the Embedder is collected or the process exits
        # (without holding a reference to self, so it can be collected).
        self._finalizer = weakref.finalize(self, _shut_down, self._loop, self._thread, self._router)
        deployment = self._route.local
        self._wait(deployment.load(load_model, settings, metrics=None))
        if deployment.state != "ready":
            self.close()
            raise deployment.exception or RuntimeError(deployment.error)
        if self._router.cache is not None:
            # The cache keys on the route's vector fingerprint, as the server's does: the same probe
            # set, embedded once here (ten short inputs), so a file or Redis store is shared with servers.
            self._wait(self._router.probe_all())
        self._plan = self._route.plan(Preferences())

    @property
    def recipe(self):
        return self._route.recipe

    @property
    def engine(self):
        return self._route.local.engine

    @property
    def dim(self) -> int:
        return self.engine.dim

    def encode(self, texts: Sequence[str] | str, *, input_type: InputType = "document",
               instruction: str | None = None, normalize: bool = True, dimensions: int | None = None,
               truncate: Truncate = "end", progress: Callable[[int], None] | None = None,
               **_harness_kwargs: Any) -> np.ndarray:
        """Embed ``texts``; returns ``[len(texts), dim]`` float32 (a single string gives ``[dim]``)."""
        single = isinstance(texts, str)
        call = self._route.prepare(texts=[texts] if single else list(texts), token_ids=None, input_type=input_type,
                                   instruction=instruction, truncate=truncate)
        vectors = finish(self._run(call.items, progress), dimensions=dimensions, normalize=normalize)
        return vectors[0] if single else vectors

    def encode_queries(self, queries: Sequence[str], **kwargs: Any) -> np.ndarray:
        return self.encode(queries, input_type="query", **kwargs)

    def encode_corpus(self, corpus: Sequence[str] | Sequence[dict], **kwargs: Any) -> np.ndarray:
        texts = [_doc_text(d) for d in corpus]
        return self.encode(texts, input_type="document", **kwargs)

    def _run(self, items: list[PreparedInput], progress: Callable[[int], None] | None) -> np.ndarray:
        """Raw vectors for prepared items, in their order, through the route like any request."""
        order = sorted(range(len(items)), key=lambda i: len(items[i].token_ids))
        jobs = list(iter_batches(order, _JOB_INPUTS))
        out = np.empty((len(items), self.dim), dtype=np.float32)

        async def one(indices: list[int]) -> None:
            chosen = [items[i] for i in indices]
            call = EmbedCall(texts=None, token_ids=[c.token_ids for c in chosen], items=chosen,
                             tokens=sum(len(c.token_ids) for c in chosen), interactive=False)
            routed = await self._route.embed(self._plan, call, deadline=math.inf)
            out[indices] = routed.result.vectors
            if progress:
                progress(len(indices))

        async def all_jobs() -> None:
            await asyncio.gather(*(one(indices) for indices in jobs))
            if self._router.cache is not None:     # entries on disk or in Redis before encode returns
                await self._router.cache.flush()

        self._wait(all_jobs())
        return out

    def _wait(self, coro) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result()

    def close(self) -> None:
        """Stop the model's scheduler and the private loop (also done when collected or at exit)."""
        self._finalizer()

    def __enter__(self) -> Embedder:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _shut_down(loop: asyncio.AbstractEventLoop, thread: threading.Thread, router: Router) -> None:
    if loop.is_running():
        asyncio.run_coroutine_threadsafe(router.stop(), loop).result(timeout=60)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=30)
    if not loop.is_running() and not loop.is_closed():
        loop.close()


def _find(settings: Settings, name: str) -> ModelConfig:
    for model in settings.models:
        if name.lower() in (n.lower() for n in (model.name, *model.aliases)):
            return model
    names = ", ".join(m.name for m in settings.models)
    raise ValueError(f"model {name!r} is not configured (configured: {names})")


def _doc_text(doc: str | dict) -> str:
    if isinstance(doc, str):
        return doc
    title, text = doc.get("title", ""), doc.get("text", "")
    return f"{title} {text}".strip()


def iter_batches(items: Iterable[Any], size: int) -> Iterable[list[Any]]:
    batch: list[Any] = []
    for item in items:
        batch.append(item)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


__all__ = ["Embedder"]
