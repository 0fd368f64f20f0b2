"""``LocalProvider``: a local deployment behind the provider facade (recipe -> scheduler -> engine -> pooling)."""

from __future__ import annotations

import asyncio
import math

from gigarouter.errors import DeadlineExceeded, GigarouterError, ProviderUnavailable
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
        # A request that could not start before its deadline is refused now, not left to expire queued.
        job = await dep.scheduler.submit(call.items, interactive=call.interactive, background=call.background,
                                         max_wait_s=None if math.isinf(timeout_s) else timeout_s)
        try:
            done, _ = await asyncio.wait({job.future}, timeout=None if math.isinf(timeout_s) else timeout_s)
        except asyncio.CancelledError:     # the client left: its sequences leave the queue before compute
            dep.scheduler.cancel(job)
            raise
        if not done:                       # the deadline: out of the queue; the metered block refunds
            dep.scheduler.cancel(job)
            raise DeadlineExceeded(f"model {dep.name!r} did not finish within the request's deadline "
                                   f"({timeout_s:.1f} s); its work was dropped and not charged",
                                   retry_after=max(1.0, dep.scheduler.predicted_wait_s()))
        vectors = job.future.result()
        return ProviderResult(vectors, timings={"queue": job.queue_seconds, "inference": job.infer_seconds})

    def admission_error(self, tokens: int, *, max_wait_s: float | None = None) -> GigarouterError | None:
        """Would the queue refuse ``tokens`` now? (cheap: the API asks before authenticating or tokenizing)"""
        scheduler = self.deployment.scheduler
        if self.deployment.state != "ready" or scheduler is None:
            return None      # the full path gives the precise error
        return scheduler.admission_error(tokens, max_wait_s=max_wait_s)

    async def close(self) -> None:
        await self.deployment.stop()
