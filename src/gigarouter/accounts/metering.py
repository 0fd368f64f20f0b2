"""TEMPORARY stand-in until the ledger branch lands."""
from __future__ import annotations
import asyncio
from contextlib import asynccontextmanager


class Meter:
    def __init__(self, gate, charge):
        self.gate, self.charge, self.closed = gate, charge, False

    async def settle(self, *, status, latency_ms, response=None, price_per_million_usd=None, tokens=None,
                     provider=None, upstream_tokens=None):
        self.closed = True
        await self.gate.settle(self.charge, status=status, latency_ms=latency_ms, response=response)


@asynccontextmanager
async def metered(gate, principal, *, model, tokens, price_per_million_usd, request_id, idempotency=None):
    charge = await gate.reserve(principal, model=model, tokens=tokens, price_per_million_usd=price_per_million_usd,
                                request_id=request_id, idempotency=idempotency)
    meter = Meter(gate, charge)
    try:
        yield meter
    except BaseException as exc:
        if not meter.closed:
            meter.closed = True
            await gate.refund(charge, status=499 if isinstance(exc, asyncio.CancelledError) else getattr(exc, "status", 500))
        raise
    if not meter.closed:
        await gate.refund(charge, status=499)
