"""In-process embeddings: the same router facade, recipe and engine as the server, no HTTP.

    >>> from gigarouter import Embedder
    >>> emb = Embedder()                       # the embedded default model
    >>> emb.encode(["hello", "world"]).shape
    (2, 384)

``encode`` also speaks sentence-transformers' dialect (``batch_size``, ``show_progress_bar``,
``normalize_embeddings``, ``convert_to_numpy``, ``convert_to_tensor``, ``prompt_name``, ``prompt``,
``truncate_dim``, ``precision``; ``encode_query``, ``encode_document``, ``similarity``,
``get_sentence_embedding_dimension``), so code written for a ``SentenceTransformer`` runs on it.
Any other keyword, a misspelt one included, raises TypeError instead of being ignored. mteb 2.x
evaluates it through ``gigarouter.onboarding.mteb_models`` (docs/onboarding.md);
``encode_queries`` / ``encode_corpus`` remain for older retrieval harnesses.

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
import sys
import threading
import weakref
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from gigarouter.pooling.encoding import finish
from gigarouter.providers.base import EmbedCall
from gigarouter.recipes.base import InputType, PreparedInput, Truncate
from gigarouter.router.preferences import Preferences
from gigarouter.router.router import Router
from gigarouter.settings import DEFAULT_MODEL_NAME, ModelConfig, Settings, load_settings

if TYPE_CHECKING:
    import torch

#: Inputs per job: small enough for steady progress reports, large enough to fill batches.
_JOB_INPUTS = 256
# Jobs queued at once: enough to keep the scheduler's batches full, few enough that a million
# texts never put more than a few jobs' tokens in the queue (max_queued_tokens would refuse them).
_JOBS_IN_FLIGHT = 4

#: Recipes whose reference pipeline ends in an L2 normalisation (sentence-transformers' Normalize
#: module for all-MiniLM; the e5 card code's F.normalize). sentence-transformers' ``normalize_embeddings=False``
#: still returns unit vectors for them, so the dialect does too; llm2vec's reference does not normalise.
_REFERENCE_NORMALIZES = frozenset({"sbert", "e5"})

Precision = Literal["float32", "int8", "uint8", "binary", "ubinary"]
PRECISIONS: tuple[str, ...] = ("float32", "int8", "uint8", "binary", "ubinary")


class Embedder:
    """Load one model and embed texts with it, synchronously."""

    def __init__(self, model: str | ModelConfig = DEFAULT_MODEL_NAME, *, config: Path | str | None = None,
                 settings: Settings | None = None) -> None:
        from gigarouter.providers.local.loading import load_model

        settings = settings or load_settings(Path(config) if config else None)
        self.config = model if isinstance(model, ModelConfig) else _find(settings, model)
        # The caller of encode() waits for all of it: no request deadline applies here, so the
        # private scheduler never refuses (a server's 1 s wait limit refused the second job of a
        # 600-text encode); _run bounds the jobs in flight instead, which bounds the queue's memory.
        settings = settings.with_(models=(self.config,), providers=(), max_queue_wait_ms=math.inf,
                                  max_queued_tokens=sys.maxsize)
        self._router = Router(settings, loader=load_model)
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

    def encode(self, sentences: Sequence[str] | str, batch_size: int | None = None,
               show_progress_bar: bool | None = None, normalize_embeddings: bool | None = None,
               convert_to_numpy: bool = True, convert_to_tensor: bool = False, prompt_name: str | None = None,
               prompt: str | None = None, truncate_dim: int | None = None, precision: Precision = "float32", *,
               input_type: InputType | None = None, instruction: str | None = None, normalize: bool | None = None,
               dimensions: int | None = None, truncate: Truncate = "end",
               progress: Callable[[int], None] | None = None):
        """Embed ``sentences``: ``[len(sentences), dim]`` float32 numpy (a single string gives ``[dim]``).

        gigarouter's own keywords: ``input_type`` (``document`` by default), ``instruction`` (free text or
        a card's task name), ``normalize`` (default true), ``dimensions``, ``truncate``, ``progress``.
        sentence-transformers' keywords map onto them: ``prompt_name`` is ``"query"``/``"document"`` or a
        task named in the card's instructions (a query with that instruction); ``prompt`` is a free-text
        query instruction, which the recipe formats as its reference does (it is not pasted in front of
        the text); ``truncate_dim`` is ``dimensions``; ``normalize_embeddings`` is ``normalize`` (for
        models whose reference normalises, false still gives the model's unit vectors, truncated after the
        normalisation as in sentence-transformers, so ``truncate_dim`` alone gives what it gives);
        ``precision`` quantizes as ``sentence_transformers.quantization.quantize_embeddings`` does.
        """
        if precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, not {precision!r}")
        if normalize is not None and normalize_embeddings is not None and normalize != normalize_embeddings:
            raise TypeError("normalize and normalize_embeddings disagree: pass one of them")
        if dimensions is not None and truncate_dim is not None and dimensions != truncate_dim:
            raise TypeError("dimensions and truncate_dim disagree: pass one of them")
        if batch_size is not None and batch_size < 1:
            raise ValueError("batch_size must be at least 1")
        input_type, instruction = self._prompt(input_type, instruction, prompt_name, prompt)
        # sentence-transformers' order when its keywords lead (normalize_embeddings given, or truncate_dim
        # without either normalize flag): the model's own normalisation (full width), then truncation, then
        # the optional extra normalisation. gigarouter's (and the API's): truncate, then normalise (default).
        st_normalize = normalize_embeddings if normalize_embeddings is not None else (
            False if truncate_dim is not None else None)
        model_normalized = (normalize is None and st_normalize is False
                            and self.recipe.name in _REFERENCE_NORMALIZES)
        if normalize is None:
            normalize = True if st_normalize is None else st_normalize
        single = isinstance(sentences, str)
        texts = [sentences] if single else list(sentences)
        call = self._route.prepare(texts=texts, token_ids=None, input_type=input_type,
                                   instruction=instruction, truncate=truncate)
        with _progress_bar(len(texts), show_progress_bar, progress) as report:
            raw = self._run(call.items, report, job_inputs=batch_size or _JOB_INPUTS)
        width = dimensions or truncate_dim
        if model_normalized:
            vectors = finish(raw, dimensions=None, normalize=True)
            vectors = np.ascontiguousarray(vectors[:, :width]) if width else vectors
        else:
            vectors = finish(raw, dimensions=width, normalize=normalize)
        if precision != "float32":
            vectors = quantize(vectors, precision)
        out = _convert(vectors, convert_to_numpy=convert_to_numpy, convert_to_tensor=convert_to_tensor)
        return out[0] if single else out

    def _prompt(self, input_type: InputType | None, instruction: str | None, prompt_name: str | None,
                prompt: str | None) -> tuple[InputType, str | None]:
        """sentence-transformers' prompt_name / prompt -> gigarouter's input_type and instruction."""
        if prompt_name is not None and prompt is not None:
            # sentence-transformers lets prompt win silently; two prompts are more likely a mistake.
            raise TypeError("pass prompt_name or prompt, not both")
        if prompt_name is not None:
            if prompt_name in ("query", "document"):
                named_type: InputType = prompt_name   # type: ignore[assignment]
                if input_type not in (None, named_type):
                    raise TypeError(f"prompt_name={prompt_name!r} contradicts input_type={input_type!r}")
                return named_type, instruction
            if prompt_name not in self.prompts:
                known = ", ".join(sorted(self.prompts)) or "none"
                raise ValueError(f"prompt name {prompt_name!r} is not one of this model's prompts ({known})")
            return input_type or "query", prompt_name
        if prompt is not None:
            if instruction is not None:
                raise TypeError("pass prompt or instruction, not both")
            return input_type or "query", prompt
        return input_type or "document", instruction

    @property
    def prompts(self) -> dict[str, str]:
        """Named instructions, as sentence-transformers' ``model.prompts``: ``query`` (the default query
        instruction, where the model has one), ``document`` (none) and the card's task instructions."""
        instructions = self.recipe_instructions
        named = dict(instructions.named or {})
        if instructions.default_query:
            named.setdefault("query", instructions.default_query)
        return named

    @property
    def recipe_instructions(self):
        from gigarouter.recipes.base import Instructions

        card = self._route.card
        return card.instructions if card is not None else Instructions()

    def encode_query(self, sentences: Sequence[str] | str, **kwargs: Any):
        """Queries: the model's default query instruction unless ``prompt_name``/``prompt``/``instruction``."""
        if "input_type" in kwargs:
            raise TypeError("encode_query sets input_type itself")
        if kwargs.get("prompt_name") in (None, "query"):
            kwargs.pop("prompt_name", None)
            return self.encode(sentences, input_type="query", **kwargs)
        return self.encode(sentences, **kwargs)

    def encode_document(self, sentences: Sequence[str] | str, **kwargs: Any):
        """Documents: no instruction, as every recipe embeds them."""
        if "input_type" in kwargs:
            raise TypeError("encode_document sets input_type itself")
        return self.encode(sentences, input_type="document", **kwargs)

    def encode_queries(self, queries: Sequence[str], **kwargs: Any) -> np.ndarray:
        return self.encode(queries, input_type="query", **kwargs)

    def encode_corpus(self, corpus: Sequence[str] | Sequence[dict], **kwargs: Any) -> np.ndarray:
        texts = [_doc_text(d) for d in corpus]
        return self.encode(texts, input_type="document", **kwargs)

    def similarity(self, embeddings1, embeddings2) -> torch.Tensor:
        """Cosine similarity matrix ``[len(embeddings1), len(embeddings2)]``, as sentence-transformers'
        default ``similarity`` (a torch tensor)."""
        import torch

        a = torch.as_tensor(np.asarray(embeddings1, dtype=np.float32) if not isinstance(embeddings1, torch.Tensor)
                            else embeddings1).float()
        b = torch.as_tensor(np.asarray(embeddings2, dtype=np.float32) if not isinstance(embeddings2, torch.Tensor)
                            else embeddings2).float()
        a = a.unsqueeze(0) if a.dim() == 1 else a
        b = b.unsqueeze(0) if b.dim() == 1 else b
        return torch.nn.functional.normalize(a, dim=1) @ torch.nn.functional.normalize(b, dim=1).T

    def count_tokens(self, texts: Sequence[str], *, input_type: InputType = "document",
                     instruction: str | None = None, truncate: Truncate = "end") -> int:
        """Tokens the model sees for ``texts`` (special tokens and instruction included): what a server bills."""
        return self._route.prepare(texts=list(texts), token_ids=None, input_type=input_type,
                                   instruction=instruction, truncate=truncate).tokens

    def device_description(self) -> str:
        """The engine's device, e.g. "cpu (AMD EPYC 7B13, 2 threads)" or "cuda:0 (NVIDIA H100)"."""
        return self.engine.device_name

    def get_sentence_embedding_dimension(self) -> int:
        return self.dim

    def get_embedding_dimension(self) -> int:
        """sentence-transformers 6's name for ``get_sentence_embedding_dimension``."""
        return self.dim

    @property
    def max_seq_length(self) -> int:
        return self.recipe.max_tokens

    def _run(self, items: list[PreparedInput], progress: Callable[[int], None] | None, *,
             job_inputs: int = _JOB_INPUTS) -> np.ndarray:
        """Raw vectors for prepared items, in their order, through the route like any request."""
        order = sorted(range(len(items)), key=lambda i: len(items[i].token_ids))
        jobs = list(iter_batches(order, job_inputs))
        out = np.empty((len(items), self.dim), dtype=np.float32)

        in_flight = asyncio.Semaphore(_JOBS_IN_FLIGHT)

        async def one(indices: list[int]) -> None:
            async with in_flight:
                await embed(indices)

        async def embed(indices: list[int]) -> None:
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


def quantize(vectors: np.ndarray, precision: str) -> np.ndarray:
    """sentence-transformers' ``quantize_embeddings`` without its calibration option: int8/uint8 scale
    each dimension over this batch's min..max into 256 steps; binary/ubinary pack the sign bits (8 per byte,
    binary offset by -128 into int8)."""
    if precision in ("int8", "uint8"):
        starts = vectors.min(axis=0)
        steps = (vectors.max(axis=0) - starts) / 255
        scaled = (vectors - starts) / steps
        return (scaled - 128).astype(np.int8) if precision == "int8" else scaled.astype(np.uint8)
    packed = np.packbits(vectors > 0).reshape(vectors.shape[0], -1)
    return (packed - 128).astype(np.int8) if precision == "binary" else packed


def _convert(vectors: np.ndarray, *, convert_to_numpy: bool, convert_to_tensor: bool):
    """sentence-transformers' return types: one tensor, a numpy array, or a list of 1-D tensors."""
    if convert_to_tensor or not convert_to_numpy:
        import torch

        tensor = torch.from_numpy(np.ascontiguousarray(vectors))
        return tensor if convert_to_tensor else list(tensor)
    return vectors


class _progress_bar:
    """A tqdm bar when ``show`` is true (and a caller's callback either way): one callable to report to."""

    def __init__(self, total: int, show: bool | None, callback: Callable[[int], None] | None) -> None:
        self._bar = None
        if show:
            from tqdm.auto import tqdm

            self._bar = tqdm(total=total, desc="Batches", unit="input")
        self._callback = callback

    def __enter__(self) -> Callable[[int], None] | None:
        if self._bar is None:
            return self._callback

        def report(n: int) -> None:
            self._bar.update(n)
            if self._callback:
                self._callback(n)
        return report

    def __exit__(self, *exc: object) -> None:
        if self._bar is not None:
            self._bar.close()


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
