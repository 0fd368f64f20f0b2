"""What runs inside a Ray Serve replica, and the messages that cross the handle.

A replica is the in-process runtime moved into a Ray actor: it loads the model
with the same loader, warms it up and runs the same ``Scheduler`` and engine
(``providers/local``), with its own token budget. The gateway tokenizes (it
needs the exact count before the request runs, for the reservation) and sends
the prepared inputs as three flat int32 arrays; the replica answers raw
vectors, its identity and its stage timings, or an error as plain data. Errors
travel as data, not exceptions, because our error classes take keyword
arguments that pickling would drop, and a Ray-wrapped exception would hide
which of them it was (a full queue's 429 must stay a 429 at the gateway).

Nothing here imports Ray at module level: the gateway imports the message
helpers without it, and ``serve.deployment`` wraps ``EmbeddingReplica`` only
when the gateway deploys it (``providers/ray/deployment.py``).
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from gigarouter import errors
from gigarouter.recipes.base import PreparedInput


@dataclass(frozen=True)
class Packed:
    """Prepared inputs as three flat arrays: a few bytes per token on the wire, pickled as buffers."""

    token_ids: np.ndarray     # [total_tokens] int32, the sequences back to back
    lengths: np.ndarray       # [n] int32
    pool_starts: np.ndarray   # [n] int32

    @classmethod
    def of(cls, items: list[PreparedInput]) -> Packed:
        lengths = np.fromiter((len(item.token_ids) for item in items), dtype=np.int32, count=len(items))
        ids = np.fromiter((t for item in items for t in item.token_ids), dtype=np.int32, count=int(lengths.sum()))
        starts = np.fromiter((item.pool_start for item in items), dtype=np.int32, count=len(items))
        return cls(ids, lengths, starts)

    def items(self) -> list[PreparedInput]:
        ends = np.cumsum(self.lengths)
        ids = self.token_ids.tolist()
        return [PreparedInput(token_ids=ids[end - n:end], pool_start=start)
                for n, end, start in zip(self.lengths.tolist(), ends.tolist(), self.pool_starts.tolist(), strict=False)]


def error_message(exc: errors.GigarouterError) -> dict[str, Any]:
    """A domain error as data, so that it crosses the handle with its class and Retry-After."""
    return {"class": type(exc).__name__, "message": exc.message, "param": exc.param, "code": exc.code,
            "retry_after": getattr(exc, "retry_after", None)}


def error_from(message: dict[str, Any]) -> errors.GigarouterError:
    """The error a replica reported, rebuilt on the gateway's side (unknown classes become 503s)."""
    cls = getattr(errors, str(message.get("class")), None)
    if not (isinstance(cls, type) and issubclass(cls, errors.GigarouterError)):
        cls = errors.ProviderUnavailable
    kwargs: dict[str, Any] = {"param": message.get("param"), "code": message.get("code")}
    if issubclass(cls, errors.RetryLater):
        kwargs["retry_after"] = float(message.get("retry_after") or 1.0)
    return cls(str(message.get("message")), **kwargs)


class EmbeddingReplica:
    """One replica: the model loaded here, behind the same scheduler as the in-process runtime.

    Serve constructs it in the replica's event loop (``async def __init__``) and
    calls ``check_health`` every few seconds; a replica whose device stopped
    answering is replaced.
    """

    async def __init__(self, config, settings, loader) -> None:  # type: ignore[misc]
        from ray import serve

        from gigarouter.providers.local.deployment import Deployment
        from gigarouter.providers.local.provider import LocalProvider

        self.deployment = Deployment.for_config(config)
        await self.deployment.load(loader, settings, metrics=None)
        if self.deployment.state != "ready":       # Serve retries the constructor, then fails the deploy
            raise RuntimeError(f"model {config.name!r} failed to load: {self.deployment.error}")
        self.local = LocalProvider(self.deployment)
        self.model = config.name
        self.replica = serve.get_replica_context().replica_id.unique_id

    async def embed(self, packed: Packed, interactive: bool, timeout_s: float) -> dict[str, Any]:
        from gigarouter.providers.base import EmbedCall

        items = packed.items()
        call = EmbedCall(texts=None, token_ids=None, items=items, tokens=int(packed.lengths.sum()),
                         interactive=interactive)
        started = time.perf_counter()
        try:
            result = await self.local.embed(call, model=self.model, timeout_s=timeout_s)
        except errors.GigarouterError as exc:
            return {"error": error_message(exc), "replica": self.replica}
        return {"vectors": result.vectors, "timings": result.timings, "replica": self.replica,
                "seconds": time.perf_counter() - started}   # all of it here, batches split apart included

    def recipe(self):
        """The loaded recipe (tokenizer included), for the gateway to tokenize exactly as this replica would."""
        return self.deployment.recipe

    def info(self) -> dict[str, Any]:
        engine = self.deployment.engine
        return {"replica": self.replica, "pid": os.getpid(), "dim": engine.dim, "token_budget": engine.token_budget,
                "device": engine.device_name, "precision": getattr(engine, "precision", None)}

    def check_health(self) -> None:
        if not self.deployment.engine.health():
            raise RuntimeError(f"replica {self.replica}: the device stopped answering")

    async def __del__(self) -> None:
        # Serve drains a replica's requests before it stops it; this stops the scheduler's loop.
        await self.deployment.stop()
