"""The contract between the HTTP layer and accounts: who is calling, may they, and what it costs.

The embeddings handler runs, in order::

    principal = await gate.authenticate(authorization_header, scope="embed")
    await gate.check_rate(principal, tokens=0)          # requests per minute, before work
    ... tokenize ...
    await gate.check_rate(principal, tokens=n_tokens)   # tokens per minute, exact count
    charge = await gate.reserve(principal, model=slug, tokens=n_tokens,
                                price_per_million_usd=price, request_id=rid)
    try:    ... compute ...
    except: await gate.refund(charge, status=...); raise
    await gate.settle(charge, status=200, latency_ms=...)

or, the same in one block that cannot forget the refund and that settles at
the serving provider's price (``accounts/metering.py``; routes should use it)::

    async with metered(gate, principal, model=slug, tokens=n_tokens,
                       price_per_million_usd=upper_bound_price, request_id=rid) as meter:
        ... compute ...
        await meter.settle(status=200, latency_ms=..., price_per_million_usd=serving_price, provider="east",
                           cached_tokens=from_the_cache, cached_price_per_million_usd=cached_price)

Retries with an ``Idempotency-Key`` header wrap everything after
``authenticate`` (a replay is neither rate limited nor charged)::

    async with gate.idempotency(principal, key_header, idempotency.fingerprint(body)) as slot:
        if slot.replay is not None:
            return Response(slot.replay.body, status_code=slot.replay.status, ...)
        ... as above, with reserve(..., idempotency=slot) and settle(..., response=content)

``settle`` stores ``response`` in the same transaction as the charge, so a
retry gets that body back and is not charged again; leaving the block without
settling releases the key (docs/accounts.md).

``OpenGate`` is the no-accounts mode (loopback, no keys): everyone is the same
anonymous principal and nothing is charged. The database-backed gate lives
beside this file and implements the same methods.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass, field
from typing import Protocol


@dataclass(frozen=True)
class Principal:
    account_id: str | None            # None in open mode
    key_id: str | None
    scopes: frozenset[str] = field(default_factory=frozenset)
    rpm: int | None = None            # the key's own limits; None = the gate's default
    tpm: int | None = None

    @property
    def anonymous(self) -> bool:
        return self.account_id is None


@dataclass(frozen=True)
class Charge:
    """A reservation of credit for one request; settled or refunded exactly once."""

    principal: Principal
    request_id: str
    model: str
    tokens: int
    cost_micro: int                   # integer micro-dollars
    reservation_id: str | None = None


@dataclass(frozen=True)
class StoredResponse:
    """The first response to a request with an Idempotency-Key, returned again to its retries."""

    status: int
    body: bytes


@dataclass
class IdempotencySlot:
    """What a request holds while it runs under an Idempotency-Key (an empty slot without one)."""

    replay: StoredResponse | None = None   # set: return this instead of running the request
    claim_id: str | None = None
    reservation_id: str | None = None      # set by reserve(..., idempotency=slot)
    closed: bool = False                   # settled or refunded


ANONYMOUS = Principal(account_id=None, key_id=None, scopes=frozenset({"embed", "usage:read"}))


class Gate(Protocol):
    async def authenticate(self, authorization: str | None, *, scope: str) -> Principal: ...
    async def check_rate(self, principal: Principal, *, tokens: int) -> dict[str, str]: ...
    def idempotency(self, principal: Principal, key: str | None,
                    fingerprint: str) -> AbstractAsyncContextManager[IdempotencySlot]: ...
    async def reserve(self, principal: Principal, *, model: str, tokens: int,
                      price_per_million_usd: float | None, request_id: str,
                      idempotency: IdempotencySlot | None = None) -> Charge: ...
    async def settle(self, charge: Charge, *, status: int, latency_ms: float, response: bytes | None = None,
                     cost_micro: int | None = None, tokens: int | None = None, provider: str | None = None,
                     upstream_tokens: int | None = None, cached_tokens: int = 0) -> None:
        """Charge ``cost_micro`` (None: the reserved cost) for ``tokens`` (None: as reserved).

        The final cost and tokens may be lower than reserved (the difference
        goes back to the account) but never higher: ``ValueError``, and the
        reservation stays held for the caller to refund. ``provider`` names who
        served the request; ``upstream_tokens`` is the usage a remote provider
        reported, recorded beside ours; ``cached_tokens`` is the part of
        ``tokens`` answered from the embedding cache (``metered`` passes it
        only when it is not 0, so gates written before the cache still work).
        """
    async def refund(self, charge: Charge, *, status: int) -> None: ...
    async def close(self) -> None: ...


class OpenGate:
    """No accounts: serve everyone, charge nothing, limit nothing."""

    async def authenticate(self, authorization: str | None, *, scope: str) -> Principal:
        return ANONYMOUS

    async def check_rate(self, principal: Principal, *, tokens: int) -> dict[str, str]:
        return {}

    @asynccontextmanager
    async def idempotency(self, principal: Principal, key: str | None,
                          fingerprint: str) -> AsyncIterator[IdempotencySlot]:
        yield IdempotencySlot()        # nothing is charged, so nothing needs protecting from retries

    async def reserve(self, principal: Principal, *, model: str, tokens: int,
                      price_per_million_usd: float | None, request_id: str,
                      idempotency: IdempotencySlot | None = None) -> Charge:
        return Charge(principal=principal, request_id=request_id, model=model, tokens=tokens, cost_micro=0)

    async def settle(self, charge: Charge, *, status: int, latency_ms: float, response: bytes | None = None,
                     cost_micro: int | None = None, tokens: int | None = None, provider: str | None = None,
                     upstream_tokens: int | None = None, cached_tokens: int = 0) -> None:
        return None                    # nothing was reserved, so there is nothing to check or give back

    async def refund(self, charge: Charge, *, status: int) -> None:
        return None

    async def close(self) -> None:
        return None
