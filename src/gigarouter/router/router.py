"""``Router``: every model this server answers for, as routes over providers, and their upkeep.

Built once from the settings: each ``[[models]]`` entry is a deployment of ours
(the provider ``local``, or its ``provider`` key), in this process or, with
``runtime = "ray"``, as Ray Serve replicas; each ``[[providers]]`` entry a
remote provider of the models it lists. At start our deployments load in
the background; then every route embeds the probe set on every provider
(fingerprints) and again every ``fingerprint_interval_s``, and a one-second tick
sends half-open probes to providers whose circuit breaker cooled down and to
those never verified.

The reference of a route is its own deployment when it has one, else the
largest group of providers whose probe vectors agree (ties: the first listed);
a provider that disagrees is ``mismatch`` and never serves the model.
"""

from __future__ import annotations

import asyncio
import logging
import time

import numpy as np

from gigarouter.catalog.cards import ModelCard, find_card
from gigarouter.errors import GigarouterError, ModelNotFound, NotReady, QueueFull
from gigarouter.metrics import Metrics
from gigarouter.providers.base import Provider
from gigarouter.providers.local.deployment import Deployment, ModelLoader
from gigarouter.providers.local.provider import LocalProvider
from gigarouter.router.cache import EmbeddingCache, build_cache
from gigarouter.router.fingerprints import PROBES, agree, fingerprint, largest_agreeing_group
from gigarouter.router.health import Health
from gigarouter.router.preferences import Preferences, split_model_suffix
from gigarouter.router.route import Binding, Plan, Route
from gigarouter.settings import ModelConfig, Settings

log = logging.getLogger(__name__)

_TICK_S = 1.0
#: Provider kinds that run a ``[[models]]`` entry's own weights: a route's reference, never mismatched.
_OWN_KINDS = ("local", "ray")


class Router:
    def __init__(self, settings: Settings, *, loader: ModelLoader | None = None, metrics: Metrics | None = None,
                 remotes: dict[str, Provider] | None = None, cache: EmbeddingCache | None = None) -> None:
        self.settings = settings
        self.loader = loader
        self.metrics = metrics
        # One per-input cache for every route (router/cache.py); None when the settings turn it off.
        self.cache = cache if cache is not None else build_cache(settings, metrics)
        self.deployments = [_deployment(c) for c in settings.models]
        self.remotes = remotes if remotes is not None else _remote_providers(settings)
        self.routes: list[Route] = []
        self._by_name: dict[str, Route] = {}
        self._build_routes()
        self._tasks: list[asyncio.Task] = []
        self._probing: dict[int, asyncio.Task] = {}

    # -- building ------------------------------------------------------------------------------

    def _build_routes(self) -> None:
        for dep in self.deployments:
            binding = Binding(_own_provider(dep), price_per_million_usd=_price(dep.config.price_per_million_usd,
                                                                               dep.card),
                              health=self._health(), verified=True)
            aliases = (*dep.config.aliases, *_card_names(dep.card, (dep.name, *dep.config.aliases)))
            self._add(Route(name=dep.name, card=dep.card, bindings=[binding], aliases=aliases, local=dep,
                            cache=self.cache, cached_price_per_million_usd=dep.config.cached_price_per_million_usd))
        for config in self.settings.providers:
            provider = self.remotes[config.name]
            for model in config.model_names:
                route = self._by_name.get(model.lower())
                if route is None:
                    card = find_card(None, model)
                    route = self._add(Route(name=model, card=card, bindings=[],
                                            aliases=tuple(_card_names(card, (model,))), cache=self.cache))
                price = _price(config.price_per_million_usd, route.card)
                # A cached token's price is the route's: the highest its [[models]] / [[providers]] entries set.
                route.cached_price_per_million_usd = max(route.cached_price_per_million_usd,
                                                         config.cached_price_per_million_usd or 0.0)
                route.bindings.append(Binding(provider, price_per_million_usd=price, health=self._health()))

    def _add(self, route: Route) -> Route:
        self.routes.append(route)
        for name in route.names:
            self._by_name.setdefault(name.lower(), route)
        return route

    def _health(self) -> Health:
        return Health(failures=self.settings.breaker_failures, cooldown_s=self.settings.breaker_cooldown_s)

    # -- looking up ----------------------------------------------------------------------------

    def find(self, name: str) -> Route | None:
        return self._by_name.get(name.lower())

    def route(self, name: str) -> tuple[Route, str | None]:
        """The route for a model name (with an OpenRouter suffix's sort, if any); 404 if unknown."""
        route = self._by_name.get(name.lower())
        suffix_sort = None
        if route is None:
            base, suffix_sort = split_model_suffix(name)
            route = self._by_name.get(base.lower()) if suffix_sort else None
        if route is None:
            raise ModelNotFound(f"The model {name!r} does not exist or is not served here; "
                                "GET /v1/models lists the models", param="model")
        if route.local is not None and route.local.state != "ready" and not route.healthy():
            detail = f": {route.local.error}" if route.local.error else ""
            raise NotReady(f"model {name!r} is {route.local.state}{detail}")
        return route, suffix_sort

    def admission_error(self, name: object, tokens: int, *, max_wait_s: float | None = None) -> GigarouterError | None:
        """``Route.admission_error`` for a model name as the client sent it; None for a name that is not
        a served model (the full path answers that one precisely)."""
        if not isinstance(name, str):
            return None
        route = self._by_name.get(name.lower())
        if route is None:
            base, suffix_sort = split_model_suffix(name)
            route = self._by_name.get(base.lower()) if suffix_sort else None
        return route.admission_error(tokens, max_wait_s=max_wait_s) if route is not None else None

    def saturated(self, tokens: int) -> GigarouterError | None:
        """The refusal a request of about ``tokens`` would get whichever model it named: None unless every
        route refuses (the load-shedding middleware asks it before it knows the model)."""
        refusals = []
        for route in self.routes:
            refusal = route.admission_error(tokens)
            if refusal is None:
                return None
            refusals.append(refusal)
        if len(refusals) == 1:
            return refusals[0]
        if not refusals:
            return None
        return QueueFull("every model on this server is at capacity; retry after the Retry-After seconds",
                         retry_after=min(getattr(r, "retry_after", 1.0) for r in refusals))

    def plan(self, route: Route, prefs: Preferences) -> Plan:
        return route.plan(prefs)

    @property
    def ready(self) -> bool:
        """Every local model loaded and every route probed once."""
        return all(d.state == "ready" for d in self.deployments) and all(r.probed for r in self.routes)

    # -- life cycle ----------------------------------------------------------------------------

    async def start(self) -> None:
        """Load local models and keep the providers probed, in the background."""
        self._tasks = [asyncio.create_task(self._upkeep(), name="router-upkeep")]

    async def _upkeep(self) -> None:
        # Routes without a local model are probed at once (a gateway is ready in seconds); a
        # route with one waits for it to load, since its local deployment is the reference.
        remote_only = [r for r in self.routes if r.local is None]
        await asyncio.gather(self._load_locals(), *(self._probe_route(r) for r in remote_only))
        last_round = time.monotonic()
        while True:
            await asyncio.sleep(_TICK_S)
            try:
                if time.monotonic() - last_round >= self.settings.fingerprint_interval_s:
                    last_round = time.monotonic()
                    await self.probe_all()
                else:
                    await self._probe_due()
            except Exception:   # keep probing next tick
                log.exception("router upkeep failed")

    async def _load_locals(self) -> None:
        """One model at a time (two 7B loads at once would double the peak memory), each probed once loaded."""
        for route in (r for r in self.routes if r.local is not None):
            if self.loader is not None:
                await route.local.load(self.loader, self.settings, self.metrics)
            await self._probe_route(route)

    async def probe_all(self) -> None:
        await asyncio.gather(*(self._probe_route(r) for r in self.routes))

    async def _probe_route(self, route: Route) -> None:
        """A full round: every provider embeds the probes; the reference is chosen; mismatches marked."""
        if route.local is not None and route.local.state == "loading":
            return
        results = await asyncio.gather(*(self._probe(route, b) for b in route.bindings))
        answered = [(b, v) for b, v in zip(route.bindings, results, strict=False) if v is not None]
        local = next(((b, v) for b, v in answered if b.kind in _OWN_KINDS), None)
        if local is not None:
            reference = local[1]
        elif answered:
            candidates = [v for _, v in answered]
            group = largest_agreeing_group(candidates)
            reference = answered[group[0]][1]
            if route.reference:   # a tie keeps the vector space clients already index in
                kept = [i for i, v in enumerate(candidates) if agree(v, route.reference)]
                if kept and len(kept) >= len(group):
                    reference = route.reference
        else:
            reference = route.reference or None
        if reference is not None:
            route.reference = reference
            route.fingerprint = fingerprint(reference)
            for binding, vectors in answered:
                self._judge(route, binding, vectors)
        route.probed = True

    async def _probe_due(self) -> None:
        """Half-open probes: breakers past their cooldown, and providers never verified."""
        for route in self.routes:
            if not route.reference:
                if any(b.health.due_for_probe() or not b.verified for b in route.bindings) and route.probed:
                    await self._probe_route(route)
                continue
            for binding in route.bindings:
                if binding.health.due_for_probe() or (not binding.verified and not binding.health.is_open):
                    vectors = await self._probe(route, binding)
                    if vectors is not None:
                        self._judge(route, binding, vectors)

    def _judge(self, route: Route, binding: Binding, vectors: list[np.ndarray]) -> None:
        was = binding.state
        binding.fingerprint = fingerprint(vectors)
        binding.dim = int(vectors[0].shape[1])
        binding.mismatch = binding.kind not in _OWN_KINDS and not agree(vectors, route.reference)
        binding.verified = True
        if binding.state != was:
            log.info("model %s: provider %s is %s (fingerprint %s)", route.name, binding.name, binding.state,
                     binding.fingerprint)

    async def _probe(self, route: Route, binding: Binding) -> list[np.ndarray] | None:
        """The provider's probe vectors, or None if it failed (which counts against its breaker)."""
        if binding.kind in _OWN_KINDS and not getattr(binding.provider, "ready", True):
            return None
        timeout = min(30.0, self.settings.request_timeout_s)
        try:
            vectors = []
            for probe in PROBES:
                # One text per call, one after another: each is a pass of its own, so its vector does not
                # depend on batch mates, and a short one runs on one thread (engine SMALL_PASS_TOKENS), so
                # a 1-CPU replica and a many-thread server give the same bits under bfloat16-mixed, where
                # a thread count's different summation order moves a batched vector by ~4e-4 and so its
                # 2-decimal fingerprint.
                rows = []
                for text in probe.texts:
                    call = await asyncio.to_thread(route.prepare, texts=[text], token_ids=None,
                                                   input_type=probe.input_type, instruction=probe.instruction)
                    started = time.perf_counter()
                    result = await binding.provider.embed(call, model=route.name, timeout_s=timeout)
                    binding.health.success(seconds=time.perf_counter() - started, tokens=call.tokens)
                    rows.append(np.asarray(result.vectors, dtype=np.float32))
                vectors.append(np.concatenate(rows))
            return vectors
        except GigarouterError as exc:
            if binding.kind != "local":     # as for requests: a loaded local deployment is not broken
                binding.health.failure()
            log.warning("model %s: probing provider %s failed: %s", route.name, binding.name, exc.message)
            return None
        except Exception:   # a bug in a provider must not stop the upkeep of every route
            if binding.kind != "local":
                binding.health.failure()
            log.exception("model %s: probing provider %s failed", route.name, binding.name)
            return None

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await asyncio.gather(*(d.stop() for d in self.deployments))   # finish admitted local work
        await asyncio.gather(*(p.close() for p in self.remotes.values()))
        if self.cache is not None:
            await self.cache.close()


def _deployment(config: ModelConfig) -> Deployment:
    if config.runtime == "ray":     # Ray is imported only when it loads (an optional extra)
        from gigarouter.providers.ray.deployment import RayDeployment

        return RayDeployment.for_config(config)
    return Deployment.for_config(config)


def _own_provider(dep: Deployment) -> Provider:
    if dep.config.runtime == "ray":
        from gigarouter.providers.ray.provider import RayProvider

        return RayProvider(dep)
    return LocalProvider(dep)


def _remote_providers(settings: Settings) -> dict[str, Provider]:
    if not settings.providers:
        return {}
    from gigarouter.providers.remote import RemoteProvider

    return {config.name: RemoteProvider(config) for config in settings.providers}


def _price(configured: float | None, card: ModelCard | None) -> float:
    """A provider's own price if configured, else the card's; a model with neither is free."""
    if configured is not None:
        return configured
    return (card.price_per_million_usd or 0.0) if card else 0.0


def _card_names(card: ModelCard | None, own: tuple[str, ...]) -> list[str]:
    taken = {n.lower() for n in own}
    return [n for n in (card.names if card else ()) if n.lower() not in taken]
