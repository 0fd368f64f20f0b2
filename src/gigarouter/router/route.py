"""A route: one model name over one or more providers, with the choice and the failover.

``plan`` turns the caller's preferences into an ordered list of candidates (or a
400 naming the field, or a 503 when every allowed provider is down or
mismatched); ``prepare`` tokenizes once with the model's recipe when this process
has it (exact billing), else estimates an upper bound for the reservation;
``run`` tries the candidates in order within the request's deadline, moving on
after a retryable failure (connect error, timeout, 5xx, 429), so the client sees
one answer and is charged once.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from gigarouter.catalog.cards import ModelCard
from gigarouter.errors import GigarouterError, InvalidRequest, NoProviderAvailable, ProviderUnavailable, is_retryable
from gigarouter.metrics import Metrics
from gigarouter.providers.base import EmbedCall, Provider, ProviderResult
from gigarouter.providers.local.deployment import Deployment
from gigarouter.recipes.base import Recipe
from gigarouter.recipes.chunking import prepare_windows
from gigarouter.router.health import Health
from gigarouter.router.preferences import Preferences

if TYPE_CHECKING:
    from gigarouter.router.cache import EmbeddingCache

log = logging.getLogger(__name__)

#: Reservation bound per input when no tokenizer is at hand: UTF-8 bytes plus room for the
#: special tokens and an instruction template the upstream may add.
_ESTIMATE_OVERHEAD_TOKENS = 64


@dataclass(eq=False)
class Binding:
    """One provider of one model, with what the router has learnt about it."""

    provider: Provider
    price_per_million_usd: float
    health: Health
    verified: bool = False            # its probe vectors have been checked against the reference
    mismatch: bool = False            # they differ: it never serves this model
    fingerprint: str | None = None
    dim: int | None = None

    @property
    def name(self) -> str:
        return self.provider.name

    @property
    def kind(self) -> str:
        return self.provider.kind

    @property
    def state(self) -> str:
        """healthy | down | mismatch."""
        if self.mismatch:
            return "mismatch"
        if not self.verified or self.health.is_open or not getattr(self.provider, "ready", True):
            return "down"
        return "healthy"

    @property
    def usable(self) -> bool:
        return self.state == "healthy"


@dataclass
class Routed:
    """The answer of the provider that served a request."""

    result: ProviderResult
    binding: Binding
    failovers: int
    # Set by the embedding cache (router/cache.py): tokens answered from it, how it went (hit | partial
    # | miss; None when not consulted) and, when it cut the request down to its misses, what a provider
    # computed (None: the request's own call, or nothing at all on a hit, where ``binding`` is "cache").
    cached_tokens: int = 0
    cache: str | None = None
    sent: EmbedCall | None = None


@dataclass(eq=False)
class Plan:
    """The candidates for one request, best first."""

    route: Route
    candidates: list[Binding]

    @property
    def max_price_per_million_usd(self) -> float:
        """What to reserve at: the dearest provider that may end up serving."""
        return max(b.price_per_million_usd for b in self.candidates)


@dataclass(eq=False)
class Route:
    name: str
    card: ModelCard | None
    bindings: list[Binding]
    aliases: tuple[str, ...] = ()
    local: Deployment | None = None
    fingerprint: str | None = None     # the reference's: the vector space this route serves
    probed: bool = False               # the first probe round has run
    reference: list = field(default_factory=list)   # the reference's probe vectors
    cache: EmbeddingCache | None = None            # the router's per-input cache, shared by its routes
    cached_price_per_million_usd: float = 0.0        # what a token answered from the cache bills

    @property
    def names(self) -> tuple[str, ...]:
        return (self.name, *self.aliases)

    @property
    def recipe(self) -> Recipe | None:
        """The model's recipe when a local deployment has it loaded (exact token counts)."""
        return self.local.recipe if self.local is not None and self.local.state == "ready" else None

    @property
    def max_tokens(self) -> int | None:
        if self.recipe is not None:
            return self.recipe.max_tokens
        return self.card.max_tokens if self.card else None

    @property
    def dim(self) -> int | None:
        if self.local is not None and self.local.engine is not None:
            return self.local.engine.dim
        dims = [b.dim for b in self.bindings if b.dim and not b.mismatch]
        return dims[0] if dims else (self.card.dimensions if self.card else None)

    def healthy(self) -> list[Binding]:
        return [b for b in self.bindings if b.usable]

    def binding(self, name: str) -> Binding | None:
        return next((b for b in self.bindings if b.name.lower() == name.lower()), None)

    # -- choosing ----------------------------------------------------------------------------

    def plan(self, prefs: Preferences) -> Plan:
        for param, name in prefs.names():
            if self.binding(name) is None:
                known = ", ".join(b.name for b in self.bindings)
                raise InvalidRequest(f"{param}: no provider named {name!r} serves model {self.name!r} "
                                     f"(its providers: {known})", param=param)
        allowed = [b for b in self.bindings if self._allowed(b, prefs)]
        if not allowed:
            raise InvalidRequest(f"the provider preferences exclude every provider of model {self.name!r}",
                                 param=_excluding_field(prefs, self.bindings))
        usable = [b for b in allowed if b.usable]
        if not usable:
            states = ", ".join(f"{b.name} is {b.state}" for b in allowed)
            raise NoProviderAvailable(f"no allowed provider can serve model {self.name!r} now ({states})",
                                      retry_after=2.0)
        ordered = self._order(usable, prefs)
        if not prefs.allow_fallbacks:
            named = {n.lower() for n in prefs.order}
            ordered = [b for b in ordered if b.name.lower() in named] if named else ordered[:1]
            if not ordered:
                states = ", ".join(f"{b.name} is {b.state}" for b in allowed if b.name.lower() in named)
                raise NoProviderAvailable(f"allow_fallbacks is false and no provider in provider.order can "
                                          f"serve model {self.name!r} now ({states})", retry_after=2.0)
        return Plan(route=self, candidates=ordered)

    @staticmethod
    def _allowed(binding: Binding, prefs: Preferences) -> bool:
        name = binding.name.lower()
        if prefs.only is not None and name not in {n.lower() for n in prefs.only}:
            return False
        if name in {n.lower() for n in prefs.ignore}:
            return False
        return prefs.max_price is None or binding.price_per_million_usd <= prefs.max_price

    def _order(self, bindings: list[Binding], prefs: Preferences) -> list[Binding]:
        listed = {b: i for i, b in enumerate(self.bindings)}

        def latency(b: Binding) -> float:
            p50 = b.health.p50_latency_ms()
            return p50 if p50 is not None else float("inf")

        keys = {
            None: lambda b: (b.price_per_million_usd, latency(b), listed[b]),
            "price": lambda b: (b.price_per_million_usd, latency(b), listed[b]),
            "latency": lambda b: (latency(b), b.price_per_million_usd, listed[b]),
            "throughput": lambda b: (-b.health.tokens_per_s, latency(b), listed[b]),
        }
        ranked = sorted(bindings, key=keys[prefs.sort])
        first = [n.lower() for n in prefs.order]
        ordered = sorted((b for b in ranked if b.name.lower() in first), key=lambda b: first.index(b.name.lower()))
        return ordered + [b for b in ranked if b.name.lower() not in first]

    def admission_error(self, tokens: int, *, max_wait_s: float | None = None) -> GigarouterError | None:
        """The refusal every usable provider would give ``tokens`` now, or None if one may take it.

        Cheap (no I/O): the API asks it with an estimate from the body size before it
        authenticates or tokenizes, so a saturated model refuses for almost nothing. Only a
        local queue knows it is full; a remote provider is assumed to take the request.
        """
        refusal = None
        for binding in self.bindings:
            if not binding.usable:
                continue
            check = getattr(binding.provider, "admission_error", None)
            refusal = check(tokens, max_wait_s=max_wait_s) if check is not None else None
            if refusal is None:
                return None
        return refusal

    # -- preparing ---------------------------------------------------------------------------

    def prepare(self, *, texts: list[str] | None, token_ids: list[list[int]] | None, input_type: str = "document",
                instruction: str | None = None, truncate: str = "end",
                interactive_max_tokens: int = 512) -> EmbedCall:
        """Tokenize once (blocking: call it off the event loop)."""
        recipe = self.recipe
        options = dict(input_type=input_type, instruction=instruction, truncate=truncate)
        if recipe is not None:
            items = (recipe.prepare_texts(texts, **options) if texts is not None
                     else recipe.prepare_token_ids(token_ids, **options))
            tokens = sum(len(item.token_ids) for item in items)
            exact = True
        else:
            items, tokens, exact = None, self._estimate(texts, token_ids, instruction), False
        return EmbedCall(texts=texts, token_ids=token_ids, items=items, tokens=tokens, exact_tokens=exact,
                         interactive=tokens <= interactive_max_tokens, **options)

    def prepare_windows(self, *, texts: list[str] | None, token_ids: list[list[int]] | None,
                        input_type: str = "document", instruction: str | None = None,
                        interactive_max_tokens: int = 512) -> tuple[EmbedCall, list[list[int]]]:
        """``truncate: "chunk"`` (recipes/chunking.py): a call with one input per window, and each
        input's window weights. Blocking; it needs the model's tokenizer in this process."""
        if self.recipe is None:
            raise InvalidRequest(f"truncate='chunk' needs model {self.name!r}'s tokenizer, and this server has "
                                 "no local deployment of it loaded (use 'end' or 'start')", param="truncate")
        windowed = prepare_windows(self.recipe, texts=texts, token_ids=token_ids, input_type=input_type,
                                   instruction=instruction)
        tokens = sum(len(item.token_ids) for item in windowed.items)
        # Windows travel as token-id inputs: a remote provider of the same vectors rebuilds each exactly.
        call = EmbedCall(texts=None, token_ids=windowed.contents, items=windowed.items, tokens=tokens,
                         exact_tokens=True, interactive=tokens <= interactive_max_tokens, input_type=input_type,
                         instruction=instruction, truncate="none")
        return call, windowed.weights

    def _estimate(self, texts: list[str] | None, token_ids: list[list[int]] | None, instruction: str | None) -> int:
        """An upper bound on what the upstream's tokenizer can count (no piece is shorter than a byte).

        Token ids are content: the upstream still wraps each in its special tokens and instruction
        template, so they get the same room as texts (a bare count would under-bill every request).
        """
        extra = _ESTIMATE_OVERHEAD_TOKENS + (len(instruction.encode()) if instruction else 0)
        lengths = [len(ids) for ids in token_ids] if token_ids is not None else [len(t.encode()) for t in texts]
        cap = self.max_tokens
        return sum(min(n + extra, cap) if cap else n + extra for n in lengths)

    # -- running -----------------------------------------------------------------------------

    async def embed(self, plan: Plan, call: EmbedCall, *, deadline: float, metrics: Metrics | None = None,
                    account: str | None = None, use_cache: bool = True) -> Routed:
        """``run`` behind the per-input cache, where the server has one and the request allows it.

        ``account`` is the caller's account (None: anonymous): entries are kept
        per account unless the server's ``cache_scope`` is global.
        """
        if self.cache is None or not use_cache:
            return await self.run(plan, call, deadline=deadline, metrics=metrics)
        return await self.cache.run(self, plan, call, deadline=deadline, metrics=metrics, account=account)

    async def run(self, plan: Plan, call: EmbedCall, *, deadline: float, metrics: Metrics | None = None) -> Routed:
        """The first candidate's answer that succeeds; failures move on while the deadline allows."""
        failures: list[tuple[Binding, GigarouterError]] = []
        for binding in plan.candidates:
            if failures and not binding.usable:       # it went down while we tried the others
                continue
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            if failures and metrics is not None:
                metrics.provider_failovers.labels(self.name, failures[-1][0].name).inc()
            started = time.perf_counter()
            try:
                result = await binding.provider.embed(call, model=self.name, timeout_s=remaining)
                self._check_width(binding, result)
            except GigarouterError as exc:
                self._observe(metrics, binding, "error", time.perf_counter() - started)
                if not is_retryable(exc):
                    raise
                if _counts_against_breaker(binding, exc):
                    binding.health.failure()
                log.warning("model %s: provider %s failed: %s", self.name, binding.name, exc.message)
                failures.append((binding, exc))
                continue
            elapsed = time.perf_counter() - started
            binding.health.success(seconds=elapsed, tokens=call.tokens)
            self._observe(metrics, binding, "ok", elapsed)
            return Routed(result=result, binding=binding, failovers=len(failures))
        raise self._exhausted(failures)

    def _check_width(self, binding: Binding, result: ProviderResult) -> None:
        width = result.vectors.shape[1]
        expected = binding.dim or (self.dim if binding.verified else None)
        if expected is not None and width != expected:
            binding.mismatch = True    # a changed upstream: out until its next probe says otherwise
            raise ProviderUnavailable(f"provider {binding.name!r} returned {width}-wide vectors for model "
                                      f"{self.name!r}, which has {expected}", code="provider_mismatch")

    def _exhausted(self, failures: list[tuple[Binding, GigarouterError]]) -> GigarouterError:
        if len(failures) == 1:     # one provider tried: its own error (a local queue's 429 stays a 429)
            return failures[0][1]
        if not failures:
            return NoProviderAvailable(f"the deadline for model {self.name!r} passed before a provider answered",
                                       retry_after=2.0)
        detail = "; ".join(f"{b.name}: {e.message}" for b, e in failures)
        retry = min(float(getattr(e, "retry_after", 1.0)) for _, e in failures)
        return ProviderUnavailable(f"every provider of model {self.name!r} failed ({detail})", retry_after=retry)

    def _observe(self, metrics: Metrics | None, binding: Binding, outcome: str, seconds: float) -> None:
        if metrics is not None:
            metrics.provider_requests.labels(self.name, binding.name, outcome).inc()
            metrics.provider_seconds.labels(self.name, binding.name).observe(seconds)


def _counts_against_breaker(binding: Binding, exc: GigarouterError) -> bool:
    """A rate limit (429) says the provider is alive but busy, and a local deployment's errors
    (queue full, out of memory, the deadline) say this process is loaded, not broken: those
    move the request on without taking the provider out. A remote that cannot be reached,
    times out or answers 5xx counts."""
    return binding.kind != "local" and exc.status != 429


def _excluding_field(prefs: Preferences, bindings: list[Binding]) -> str:
    """The field that removed the last provider (the filters applied as only, ignore, max_price)."""
    left = [b.name.lower() for b in bindings]
    if prefs.only is not None:
        only = {n.lower() for n in prefs.only}
        left = [n for n in left if n in only]
        if not left:
            return "provider.only"
    ignore = {n.lower() for n in prefs.ignore}
    if all(n in ignore for n in left):
        return "provider.ignore"
    return "provider.max_price"
