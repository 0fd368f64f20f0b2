"""``LocalProvider``: a local deployment behind the provider facade (recipe -> scheduler -> engine -> pooling)."""

from __future__ import annotations

import asyncio
import math

from gigarouter.errors import ProviderUnavailable
from gigarouter.providers.base import EmbedCall, ProviderResult
from gigarouter.providers.local.deployment import Deployment


class LocalProvider:
    kind = "local"

    def __init__(self, deployment: Deployment) -> None:
        self.deployment = deployment
        self.name = deployment.config.provider

    @property
    def ready(self) -> bool:
        return self.deployment.state == "ready"

    async def embed(self, call: EmbedCall, *, model: str, timeout_s: float) -> ProviderResult:
        dep = self.deployment
        if dep.state != "ready" or dep.scheduler is None:
            raise ProviderUnavailable(f"model {dep.name!r} is {dep.state} in this process")
        if call.items is None:   # the route tokenizes with this deployment's recipe once it is ready
            raise ProviderUnavailable(f"model {dep.name!r} was not prepared with its tokenizer; retry")
        job = await dep.scheduler.submit(call.items, interactive=call.interactive, background=call.background)
        try:
            done, _ = await asyncio.wait({job.future}, timeout=None if math.isinf(timeout_s) else timeout_s)
        except asyncio.CancelledError:     # the client left: its sequences leave the queue before compute
            dep.scheduler.cancel(job)
            raise
        if not done:
            dep.scheduler.cancel(job)
            raise ProviderUnavailable(f"model {dep.name!r} did not finish within the request's deadline "
                                      f"({timeout_s:.1f} s)", code="timeout")
        vectors = job.future.result()
        return ProviderResult(vectors, timings={"queue": job.queue_seconds, "inference": job.infer_seconds})

    async def close(self) -> None:
        await self.deployment.stop()
