"""A ``runtime = "ray"`` model as the gateway sees it: deployed (or found) on Ray Serve, and its life cycle.

It stands where a local ``Deployment`` stands in the router (the route's
``local``): ``loading`` until every replica has loaded and warmed up the model,
then ``ready`` with the recipe fetched from a replica, so the gateway tokenizes
and counts tokens exactly as the replicas would without holding the weights;
``failed`` with the reason otherwise, while the other models keep serving.

On a local instance, or on a cluster that has no application of that name,
the gateway deploys it (``serve.run``) and deletes it when it stops. On a
cluster that has it (declared in a KubeRay RayService, or deployed by another
gateway) the gateway waits until it runs, attaches to it and leaves it running.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from dataclasses import dataclass
from typing import Any

from gigarouter.catalog.cards import ModelCard, find_card
from gigarouter.metrics import Metrics
from gigarouter.providers.local.deployment import ModelLoader
from gigarouter.providers.ray import cluster
from gigarouter.recipes.base import Recipe
from gigarouter.settings import Autoscaling, ModelConfig, Settings

log = logging.getLogger(__name__)

#: Tokens of the shortest common request (a query) that ``max_ongoing_requests`` is sized for.
_SHORT_REQUEST_TOKENS = 16


@dataclass
class ReplicaEngine:
    """What the router and /ready read from a local engine, for replicas that run elsewhere.

    Serve health-checks each replica (``EmbeddingReplica.check_health``) and replaces one
    whose device stops answering; requests that a lost replica held are retried by the
    provider, so from here the deployment answers while Serve has it running.
    """

    dim: int
    token_budget: int
    device_name: str
    parallel_batches: int = 1
    precision: str | None = None     # what the replicas compute in (/v1/models shows it)

    def health(self) -> bool:
        return True


@dataclass(eq=False)
class RayDeployment:
    config: ModelConfig
    card: ModelCard | None
    state: str = "loading"                  # loading | ready | failed
    error: str | None = None
    exception: BaseException | None = None
    recipe: Recipe | None = None
    engine: ReplicaEngine | None = None
    scheduler: None = None                  # each replica has its own
    handle: Any = None                      # ray.serve.handle.DeploymentHandle
    owned: bool = False                     # deployed by this gateway: deleted when it stops
    _connected: bool = False

    @classmethod
    def for_config(cls, config: ModelConfig) -> RayDeployment:
        return cls(config=config, card=find_card(config.card, config.name, config.weights, *config.aliases))

    @property
    def name(self) -> str:
        return self.config.name

    @property
    def hung(self) -> str | None:
        """Never, as the gateway sees it: each replica's own watchdog fails its work with 503 (which the
        provider sends to another replica), and Serve's health check replaces a replica that stops."""
        return None

    @property
    def app_name(self) -> str:
        return app_name(self.config.name)

    async def load(self, loader: ModelLoader, settings: Settings, metrics: Metrics | None) -> None:
        """Deploy (or find) the replicas, wait until they serve, fetch the recipe; on failure record why."""
        try:
            await asyncio.to_thread(cluster.acquire, self.config.ray_address)
            self._connected = True
            self.handle, self.owned = await asyncio.to_thread(self._deploy, loader, settings)
            info = await self.handle.info.remote()
            self.recipe = await self.handle.recipe.remote()
        except Exception as exc:  # keep serving the other models; /ready says why
            log.exception("deploying model %s on Ray failed", self.name)
            self.state, self.error, self.exception = "failed", str(exc) or type(exc).__name__, exc
            await self.stop()
            return
        self.engine = ReplicaEngine(dim=info["dim"], token_budget=info["token_budget"],
                                    device_name=f"Ray Serve ({info['device']})", precision=info.get("precision"))
        self.state = "ready"
        log.info("model %s ready on Ray Serve: application %s, %s", self.name, self.app_name,
                 describe_replicas(self.config))

    def _deploy(self, loader: ModelLoader, settings: Settings) -> tuple[Any, bool]:
        ray, serve = cluster.import_ray()
        if not cluster.is_local():
            handle = attach(serve, self.app_name)
            if handle is not None:
                log.info("model %s: attached to the Serve application %s", self.name, self.app_name)
                return handle, False
        else:
            check_resources(self.config, ray.cluster_resources())
        app = build_application(self.config, settings, loader)
        return serve.run(app, name=self.app_name, route_prefix=None), True

    async def stop(self) -> None:
        """Delete what this gateway deployed (Serve drains the replicas' requests), then let go of Ray."""
        if not self._connected:
            return
        self._connected = False
        if self.owned and not cluster.is_local():   # a local instance goes with everything on it
            _, serve = cluster.import_ray()
            try:
                await asyncio.to_thread(serve.delete, self.app_name)
            except Exception:
                log.exception("deleting the Serve application %s failed", self.app_name)
        await asyncio.to_thread(cluster.release)


def attach(serve, name: str, *, poll_s: float = 2.0, sleep=time.sleep):
    """A handle to the application ``name`` if the cluster has it (waiting while it deploys), else None.

    An application declared on the cluster (a RayService) or deployed by another gateway is
    used as it is: deploying over it would fight its owner. One being deleted is waited
    out, then deployed anew; one whose deploy failed is an error with Serve's message.
    """
    while True:
        app = serve.status().applications.get(name)
        if app is None:
            return None
        status = str(getattr(app.status, "value", app.status)).rsplit(".", 1)[-1]
        if status in ("RUNNING", "UNHEALTHY"):      # unhealthy: some replicas are being replaced
            return serve.get_app_handle(name)
        if status == "DEPLOY_FAILED":
            raise RuntimeError(f"the Serve application {name} failed to deploy: {app.message}")
        log.info("Serve application %s is %s; waiting", name, status.lower())
        sleep(poll_s)


def app_name(model: str) -> str:
    return "gigarouter-" + re.sub(r"[^A-Za-z0-9_.-]", "-", model)


def build_application(config: ModelConfig, settings: Settings, loader: ModelLoader):
    """The Serve application for one model: ``EmbeddingReplica`` with this model's resources and scaling."""
    _, serve = cluster.import_ray()
    from gigarouter.providers.ray.replica import EmbeddingReplica

    # Replicas need what loading and scheduling read, never the gateway's secrets or other models.
    replica_settings = settings.with_(models=(config,), providers=(), database_url=None, redis_url=None,
                                      server_secret=None)
    deployment = serve.deployment(EmbeddingReplica).options(**deployment_options(config, settings))
    return deployment.bind(config, replica_settings, loader)


def app_builder(args: dict[str, Any]):
    """Serve's ``import_path`` for a model declared outside gigarouter (a KubeRay RayService, ``serve deploy``).

    ``import_path: gigarouter.providers.ray.deployment:app_builder`` with ``args``:
    ``model`` (the ``[[models]]`` keys, as in the TOML) and optionally ``settings``
    (server keys the replicas read: ``cache_dir``, ``offline``, ``batch_token_budget``,
    ``max_queued_tokens``, ``interactive_latency_ms``, ``cpu_parallel_batches``, ``max_queue_wait_ms``,
    ``watchdog_floor_s``). Name the
    application ``gigarouter-<model name>``: a gateway with that model and a ``ray_address``
    attaches to it instead of deploying its own.
    """
    from pathlib import Path

    from gigarouter.providers.local.loading import load_model

    if not isinstance(args.get("model"), dict):
        raise ValueError("args.model must be a table of [[models]] keys (name, recipe, weights, ...)")
    config = ModelConfig.from_dict({**args["model"], "runtime": "ray"})
    server = dict(args.get("settings") or {})
    unknown = set(server) - set(REPLICA_SETTINGS)
    if unknown:
        raise ValueError(f"args.settings: not read by replicas: {', '.join(sorted(unknown))} "
                         f"(known: {', '.join(REPLICA_SETTINGS)})")
    if server.get("cache_dir") is not None:
        server["cache_dir"] = Path(server["cache_dir"])
    return build_application(config, Settings(models=(config,), **server), load_model)


#: Server settings a replica reads (loading and scheduling); the rest stay with the gateway.
REPLICA_SETTINGS = ("cache_dir", "offline", "batch_token_budget", "max_queued_tokens", "interactive_max_tokens",
                    "interactive_latency_ms", "cpu_parallel_batches", "max_queue_wait_ms", "watchdog_floor_s")


def deployment_options(config: ModelConfig, settings: Settings) -> dict[str, Any]:
    """Serve's options for a model's deployment, from its ``[[models]]`` entry."""
    ongoing = max_ongoing_requests(config, settings)
    options: dict[str, Any] = {
        "name": app_name(config.name),
        "ray_actor_options": {"num_cpus": config.cpus_per_replica, "num_gpus": config.gpus_per_replica},
        "max_ongoing_requests": ongoing,
        # Waiting requests stay in the gateway's handle, unbounded, until a replica has room;
        # each replica's own queue bound (max_queued_tokens) answers 429 when it is full.
        "max_queued_requests": -1,
        "health_check_period_s": 5.0,
        "graceful_shutdown_timeout_s": 30.0,
        # Serve's access log writes a line per request in the replica: not at this rate.
        "logging_config": {"log_level": "WARNING", "enable_access_log": False},
    }
    if isinstance(config.replicas, Autoscaling):
        target = config.replicas.target_ongoing_requests or max(1, ongoing // 2)
        options["autoscaling_config"] = {"min_replicas": config.replicas.min, "max_replicas": config.replicas.max,
                                         "initial_replicas": config.replicas.min,
                                         "target_ongoing_requests": target}
    else:
        options["num_replicas"] = config.replicas or 1
    return options


def max_ongoing_requests(config: ModelConfig, settings: Settings) -> int:
    """Requests one replica holds at once: enough short requests to fill two batches of its token budget.

    Serve's default (5) would hand a replica five requests at a time, so its scheduler could
    never batch more than five queries however large its budget.
    """
    if config.max_ongoing_requests is not None:
        return config.max_ongoing_requests
    from gigarouter.engine.runner import CPU_TOKEN_BUDGET, GPU_TOKEN_BUDGET

    budget = config.token_budget or settings.batch_token_budget or (
        GPU_TOKEN_BUDGET if config.gpus_per_replica else CPU_TOKEN_BUDGET)
    return max(16, 2 * budget // _SHORT_REQUEST_TOKENS)


def check_resources(config: ModelConfig, available: dict[str, float]) -> None:
    """On a local instance, a deployment that cannot fit would wait forever: say so at once."""
    count = config.replicas.min if isinstance(config.replicas, Autoscaling) else (config.replicas or 1)
    for resource, each in (("CPU", config.cpus_per_replica), ("GPU", config.gpus_per_replica)):
        have = available.get(resource, 0.0)
        if count * each > have:
            raise RuntimeError(f"model {config.name!r}: {count} replica(s) x {each:g} {resource} do not fit on this "
                               f"machine's local Ray instance ({have:g} {resource}); lower replicas, num_cpus or "
                               "num_gpus, or join a cluster with ray_address")


def describe_replicas(config: ModelConfig) -> str:
    scaling = config.replicas
    count = (f"{scaling.min}-{scaling.max} replicas (autoscaling)" if isinstance(scaling, Autoscaling)
             else f"{scaling or 1} replica(s)")
    return f"{count}, {config.cpus_per_replica:g} CPU and {config.gpus_per_replica:g} GPU each"
