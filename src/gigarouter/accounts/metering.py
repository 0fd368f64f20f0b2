"""``metered``: the one block a route enters to pay for a request, instead of reserve / settle / refund.

    async with metered(gate, principal, model=slug, tokens=upper_bound_tokens,
                       price_per_million_usd=upper_bound_price, request_id=rid, idempotency=slot) as meter:
        ... compute, on whichever provider the router picks ...
        await meter.settle(status=200, latency_ms=..., response=content, price_per_million_usd=serving_price,
                           tokens=final_tokens, provider="east", upstream_tokens=reported,
                           cached_tokens=from_the_cache, cached_price_per_million_usd=cached_price)

Entering reserves the credit at the upper bound (``reserve``'s errors, 402
and the rest, propagate; nothing is held then). ``meter.settle`` charges the
serving provider's price for the final token count, computed with the
ledger's own integer arithmetic (``cost_micro(tokens, price_micro_per_million
(price))``, rounded up once per request) and never more than was reserved.
Tokens answered from the embedding cache (``cached_tokens``, a part of
``tokens``) are charged at ``cached_price_per_million_usd`` instead, in the
same single rounding:

- tokens above the reserved count are clamped to it (logged): the reservation
  was the bound the customer agreed to;
- a cost above the reserved cost (a serving price above the bound the router
  reserved at: a router bug) is clamped to the reserved cost (logged);
- an ``upstream_tokens`` that is no count (a provider reporting a negative or
  absurd usage) is recorded as None (logged): what a remote says about itself
  never fails the settlement of a request it served.

Leaving the block without a settlement refunds the reservation, exactly once:

- by an exception: with the exception's ``status`` attribute (a 4xx or 5xx;
  anything else is 500), 499 for ``asyncio.CancelledError``, and the
  exception propagates;
- normally, without having settled: with 499 (the client went away).

A settlement that has been started is never abandoned: if the request is
cancelled while ``meter.settle`` waits for the database, leaving the block
waits for that settlement and refunds only if it failed. With ``OpenGate``
everything works the same and nothing is charged.
"""

from __future__ import annotations

import asyncio
import logging
from decimal import Decimal
from types import TracebackType

from gigarouter.accounts import ledger
from gigarouter.accounts.gate import Charge, Gate, IdempotencySlot, Principal

log = logging.getLogger(__name__)

Price = float | Decimal | str | None          # USD per 1M tokens; None = free
STATUS_CLIENT_GONE = 499                      # cancelled, or the block ended without a settlement
STATUS_FAILED = 500                           # an exception without a usable ``status``


class Meter:
    """One request's reservation while its ``metered`` block runs; settled or refunded exactly once."""

    def __init__(self, gate: Gate, charge: Charge) -> None:
        self._gate = gate
        self._charge = charge
        self._settling: asyncio.Future[None] | None = None
        self._closed = False
        self._ended = False                   # the block was left
        self.cost_micro: int | None = None    # what was finally charged, once settled

    @property
    def charge(self) -> Charge:
        """The reservation: the upper-bound ``tokens`` and ``cost_micro`` taken on entry."""
        return self._charge

    @property
    def closed(self) -> bool:
        """Settled or refunded."""
        return self._closed

    async def settle(self, *, status: int, latency_ms: float, response: bytes | None = None,
                     price_per_million_usd: Price, tokens: int | None = None, provider: str | None = None,
                     upstream_tokens: int | None = None, cached_tokens: int = 0,
                     cached_price_per_million_usd: Price = None) -> int:
        """Charge ``tokens`` (None: as reserved) at the serving ``price_per_million_usd``; the cost charged.

        ``cached_tokens`` of them were answered from the embedding cache and are
        charged at ``cached_price_per_million_usd`` instead (None: free), the
        whole request rounded up once. Clamped to the reservation (see the
        module's docstring). ``upstream_tokens`` is recorded as reported, beside
        ours. Calling it twice, or after the block, is a bug: ``RuntimeError``.
        """
        if self._ended:
            raise RuntimeError("this metered block has ended; settle inside it")
        if self._closed or self._settling is not None:
            raise RuntimeError(f"request {self._charge.request_id} was already settled or refunded")
        final_tokens, cached, cost = self._final(tokens, price_per_million_usd, cached_tokens,
                                                 cached_price_per_million_usd)
        upstream_tokens = self._reported(upstream_tokens, provider)
        # Passed only when there are any, so a gate that predates the cache keeps working.
        extra = {"cached_tokens": cached} if cached else {}
        self._settling = asyncio.ensure_future(self._gate.settle(
            self._charge, status=status, latency_ms=latency_ms, response=response, cost_micro=cost,
            tokens=final_tokens, provider=provider, upstream_tokens=upstream_tokens, **extra))
        # Shielded: a cancellation here does not abandon the settlement; leaving the block waits for it.
        await asyncio.shield(self._settling)
        self._closed = True
        self.cost_micro = cost
        return cost

    def _final(self, tokens: int | None, price_per_million_usd: Price, cached_tokens: int = 0,
               cached_price_per_million_usd: Price = None) -> tuple[int, int, int]:
        reserved = self._charge
        if tokens is None:
            tokens = reserved.tokens
        elif isinstance(tokens, bool) or not isinstance(tokens, int) or tokens < 0:
            raise ValueError(f"tokens must be an integer >= 0, not {tokens!r}")
        elif tokens > reserved.tokens:
            log.warning("request %s used %d tokens, more than the %d reserved; charging for %d",
                        reserved.request_id, tokens, reserved.tokens, reserved.tokens)
            tokens = reserved.tokens
        if isinstance(cached_tokens, bool) or not isinstance(cached_tokens, int) or cached_tokens < 0:
            raise ValueError(f"cached_tokens must be an integer >= 0, not {cached_tokens!r}")
        cached_tokens = min(cached_tokens, tokens)   # clamped with tokens: cached ones are a part of them
        cost = ledger.cost_micro(tokens, ledger.price_micro_per_million(price_per_million_usd),
                                 cached_tokens=cached_tokens,
                                 cached_price_micro_per_million=ledger.price_micro_per_million(
                                     cached_price_per_million_usd))
        if cost > reserved.cost_micro:
            if reserved.reservation_id is not None:  # the open gate reserves 0: nothing to warn about
                log.warning("request %s costs %d micro-dollars at the serving price %s, more than the %d "
                            "reserved (a serving price above the reserved bound?); charging %d",
                            reserved.request_id, cost, price_per_million_usd, reserved.cost_micro,
                            reserved.cost_micro)
            cost = reserved.cost_micro
        return tokens, cached_tokens, cost

    def _reported(self, upstream_tokens: int | None, provider: str | None) -> int | None:
        """The upstream's count as recorded: one that is no count (negative, not an integer, or beyond what
        ``usage_records`` holds) is recorded as None, logged, and never fails the settlement of a served request."""
        if upstream_tokens is None or (isinstance(upstream_tokens, int) and not isinstance(upstream_tokens, bool)
                                       and 0 <= upstream_tokens <= ledger.MAX_UPSTREAM_TOKENS):
            return upstream_tokens
        log.warning("request %s: provider %s reported %r tokens, which is no token count; not recorded",
                    self._charge.request_id, provider, upstream_tokens)
        return None

    async def _end(self, status: int) -> None:
        """Leaving the block: settled already, or waits for a started settlement, or refunds with ``status``."""
        self._ended = True
        if self._closed:
            return
        if self._settling is not None:
            try:
                await asyncio.shield(self._settling)
            except asyncio.CancelledError:
                if not self._settling.done():
                    raise                     # cancelled again while waiting: the settlement still finishes
            except Exception:
                pass                          # it failed (nothing was charged): refund below
            if self._settling.done() and not self._settling.cancelled() and self._settling.exception() is None:
                self._closed = True
                return
        self._closed = True                   # before awaiting: never a second refund, even if this is cancelled
        await asyncio.shield(self._gate.refund(self._charge, status=status))


class _Metered:
    def __init__(self, gate: Gate, principal: Principal, *, model: str, tokens: int, price_per_million_usd: Price,
                 request_id: str, idempotency: IdempotencySlot | None) -> None:
        self._gate = gate
        self._principal = principal
        self._reserve = dict(model=model, tokens=tokens, price_per_million_usd=price_per_million_usd,
                             request_id=request_id, idempotency=idempotency)
        self._entered = False
        self._meter: Meter | None = None

    async def __aenter__(self) -> Meter:
        if self._entered:
            raise RuntimeError("a metered block can be entered once")
        self._entered = True
        charge = await self._gate.reserve(self._principal, **self._reserve)
        self._meter = Meter(self._gate, charge)
        return self._meter

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> bool:
        assert self._meter is not None
        if exc is None:
            await self._meter._end(STATUS_CLIENT_GONE)
            return False
        try:
            await self._meter._end(failure_status(exc))
        except Exception:
            # The original error is the one to report; a reservation left held is refunded by the
            # gateway's sweep of its own stale reservations (service.GateOptions.stale_reservation_s).
            log.exception("could not refund request %s after it failed", self._meter.charge.request_id)
        return False                          # the exception propagates


def failure_status(exc: BaseException) -> int:
    """The usage status of a request that ended with ``exc``: 499 when cancelled, else its 4xx/5xx status."""
    if isinstance(exc, asyncio.CancelledError):
        return STATUS_CLIENT_GONE
    status = getattr(exc, "status", None)
    if isinstance(status, int) and not isinstance(status, bool) and 400 <= status <= 599:
        return status
    return STATUS_FAILED


def metered(gate: Gate, principal: Principal, *, model: str, tokens: int, price_per_million_usd: Price,
            request_id: str, idempotency: IdempotencySlot | None = None) -> _Metered:
    """Reserve ``tokens`` at ``price_per_million_usd`` (the upper bounds) for the block; see the module."""
    return _Metered(gate, principal, model=model, tokens=tokens, price_per_million_usd=price_per_million_usd,
                    request_id=request_id, idempotency=idempotency)
