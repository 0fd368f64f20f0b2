"""``RayProvider``: a ``runtime = "ray"`` model's replicas behind the provider facade.

The route prepares the call with the recipe fetched from a replica (exact token
ids and pooled spans); this sends them through the Serve handle, which picks a
replica, and returns its vectors with the replica's name (``x-gigarouter-replica``)
and its stage timings plus the hop's own (``hop``: the round trip less the time
the request spent inside the replica).

A replica that dies holding a request fails it with ``ActorDiedError``, and
Serve's handle does not retry. Embeddings are pure, so this retries on another
replica (or on the one Serve starts in its place) until the request's deadline:
the client sees one answer and the route charges it once. Ray's exceptions
stop here: a lost replica is retried, anything else becomes a
``ProviderUnavailable`` (503, so the route may fail over to another provider),
and the replica's own errors (a full queue's 429, the deadline) keep their class.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time

from gigarouter.errors import GigarouterError, ProviderUnavailable
from gigarouter.providers.base import EmbedCall, ProviderResult
from gigarouter.providers.ray.deployment import RayDeployment
from gigarouter.providers.ray.replica import Packed, error_from

log = logging.getLogger(__name__)

#: The gateway waits this much past the deadline it gave the replica, so the replica's own
#: timeout (which takes the job out of its queue) is normally the one that answers.
_SLACK_S = 1.0
#: Waits between retries after a lost replica: doubling from the first to the last.
_RETRY_WAIT_S = (0.05, 1.0)


class RayProvider:
    kind = "ray"

    def __init__(self, deployment: RayDeployment) -> None:
        self.deployment = deployment
        self.name = deployment.config.provider
        self.retries = 0                     # requests sent again after a replica was lost, since start

    @property
    def ready(self) -> bool:
        return self.deployment.state == "ready"

    async def embed(self, call: EmbedCall, *, model: str, timeout_s: float) -> ProviderResult:
        dep = self.deployment
        if dep.state != "ready" or dep.handle is None:
            raise ProviderUnavailable(f"model {dep.name!r} is {dep.state} on Ray Serve")
        if call.items is None:
            raise ProviderUnavailable(f"model {dep.name!r} was not prepared with its tokenizer; retry")
        packed = Packed.of(call.items)
        deadline = time.monotonic() + timeout_s
        lost = 0
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise ProviderUnavailable(f"model {dep.name!r}: no replica answered within the request's deadline "
                                          f"({timeout_s:.1f} s; {lost} replica(s) lost meanwhile)", code="timeout")
            started = time.perf_counter()
            try:
                answer = await self._call(packed, call.interactive, remaining)
                if "error" in answer:
                    error = error_from(answer["error"])
                    if error.code == "shutting_down":   # the replica is being stopped: another one takes it
                        raise _Lost(f"replica {answer.get('replica')} is shutting down")
                    raise error
            except _Lost as exc:
                lost += 1
                self.retries += 1
                log.warning("model %s: %s; sending the request again (retry %d)", dep.name, exc, lost)
                await asyncio.sleep(min(_RETRY_WAIT_S[0] * 2 ** (lost - 1), _RETRY_WAIT_S[1],
                                        max(0.0, deadline - time.monotonic())))
                continue
            elapsed = time.perf_counter() - started
            timings = dict(answer.get("timings") or {})
            timings["hop"] = max(0.0, elapsed - answer.get("seconds", sum(timings.values())))
            return ProviderResult(answer["vectors"], timings=timings, replica=answer["replica"])

    async def _call(self, packed: Packed, interactive: bool, remaining: float) -> dict:
        """One attempt on one replica (the handle chooses), with Ray's exceptions translated."""
        import ray.exceptions as rex
        from ray.serve import exceptions as sex

        response = self.deployment.handle.embed.remote(packed, interactive, remaining)
        try:
            return await asyncio.wait_for(_awaited(response), None if math.isinf(remaining) else remaining + _SLACK_S)
        except asyncio.CancelledError:           # the client left: the replica drops the job before compute
            response.cancel()
            raise
        except TimeoutError:
            response.cancel()
            raise ProviderUnavailable(f"model {self.deployment.name!r}: the replica did not answer within the "
                                      "request's deadline", code="timeout") from None
        except sex.RequestCancelledError as exc:   # not by us: the replica is going away
            raise _Lost(f"the request was cancelled on its replica ({exc})") from exc
        except (rex.RayActorError, rex.WorkerCrashedError, rex.NodeDiedError, rex.ObjectLostError,
                sex.ReplicaUnavailableError, sex.DeploymentUnavailableError, sex.BackPressureError) as exc:
            raise _Lost(f"lost a replica ({type(exc).__name__})") from exc
        except GigarouterError:
            raise
        except rex.RayTaskError as exc:          # an exception the replica did not turn into an answer: a bug
            raise ProviderUnavailable(f"model {self.deployment.name!r}: the replica failed: "
                                      f"{type(exc.cause).__name__ if exc.cause else exc}") from exc
        except (rex.RayError, sex.RayServeException) as exc:
            raise ProviderUnavailable(f"model {self.deployment.name!r}: Ray failed: {type(exc).__name__}") from exc

    async def close(self) -> None:
        await self.deployment.stop()


async def _awaited(response):
    return await response


class _Lost(Exception):
    """The replica holding the request went away; another may take it."""
