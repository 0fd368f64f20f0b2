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

``OpenGate`` is the no-accounts mode (loopback, no keys): everyone is the same
anonymous principal and nothing is charged. The database-backed gate lives
beside this file and implements the same methods.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol


@dataclass(frozen=True)
class Principal:
    account_id: str | None            # None in open mode
    key_id: str | None
    scopes: frozenset[str] = field(default_factory=frozenset)

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


ANONYMOUS = Principal(account_id=None, key_id=None, scopes=frozenset({"embed", "usage:read"}))


class Gate(Protocol):
    async def authenticate(self, authorization: str | None, *, scope: str) -> Principal: ...
    async def check_rate(self, principal: Principal, *, tokens: int) -> dict[str, str]: ...
    async def reserve(self, principal: Principal, *, model: str, tokens: int,
                      price_per_million_usd: float, request_id: str) -> Charge: ...
    async def settle(self, charge: Charge, *, status: int, latency_ms: float) -> None: ...
    async def refund(self, charge: Charge, *, status: int) -> None: ...
    async def close(self) -> None: ...


class OpenGate:
    """No accounts: serve everyone, charge nothing, limit nothing."""

    async def authenticate(self, authorization: str | None, *, scope: str) -> Principal:
        return ANONYMOUS

    async def check_rate(self, principal: Principal, *, tokens: int) -> dict[str, str]:
        return {}

    async def reserve(self, principal: Principal, *, model: str, tokens: int,
                      price_per_million_usd: float, request_id: str) -> Charge:
        return Charge(principal=principal, request_id=request_id, model=model, tokens=tokens, cost_micro=0)

    async def settle(self, charge: Charge, *, status: int, latency_ms: float) -> None:
        return None

    async def refund(self, charge: Charge, *, status: int) -> None:
        return None

    async def close(self) -> None:
        return None
