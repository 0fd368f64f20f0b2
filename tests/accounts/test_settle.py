"""Settling below the reservation: a router reserves at an upper bound and charges the serving provider's price."""

from __future__ import annotations

import asyncio

import pytest
import sqlalchemy as sa

from gigarouter.accounts.store import KeySpec
from tests.accounts.helpers import check_invariants, funded, started

CREDIT = 1_000_000


def _books(url: str, reservation_id: str) -> dict:
    engine = sa.create_engine(url)
    try:
        with engine.connect() as c:
            entries = c.execute(sa.text("SELECT kind, amount_micro FROM ledger_entries WHERE reservation_id = :r "
                                        "ORDER BY id"), {"r": reservation_id}).all()
            usage = c.execute(sa.text("SELECT tokens, cost_micro, status, provider, upstream_tokens "
                                      "FROM usage_records WHERE reservation_id = :r"), {"r": reservation_id}).one()
            reservation = c.execute(sa.text("SELECT state, tokens, cost_micro FROM reservations WHERE id = :r"),
                                    {"r": reservation_id}).one()
        check_invariants(engine)
    finally:
        engine.dispose()
    return {"entries": [tuple(e) for e in entries], "usage": tuple(usage), "reservation": tuple(reservation)}


def test_settling_at_a_lower_price_gives_back_exactly_the_difference(settings):
    async def scenario():
        async with started(settings) as gate:
            principal, _ = await funded(gate, CREDIT, KeySpec(spend_cap_micro=50_000))
            # Reserved at the upper bound: 1000 tokens at 7 USD/M = 7000.
            charge = await gate.reserve(principal, model="m", tokens=1000, price_per_million_usd=7.0,
                                        request_id="req-1")
            assert charge.cost_micro == 7_000
            held = (await gate.get_account(principal.account_id)).balance_micro
            # Served by "east": 900 tokens at 3.3 USD/M = 2970.
            await gate.settle(charge, status=200, latency_ms=3.0, cost_micro=2_970, tokens=900, provider="east",
                              upstream_tokens=905)
            account = await gate.get_account(principal.account_id)
            [key] = await gate.list_keys(principal)
            return charge, held, account.balance_micro, key.spent_micro

    charge, held, balance, spent = asyncio.run(scenario())
    assert held == CREDIT - 7_000
    assert balance == CREDIT - 2_970
    assert spent == 2_970
    books = _books(settings.resolved_database_url, charge.reservation_id)
    assert books["entries"] == [("reserve", -7_000), ("settle", 4_030)]
    assert books["usage"] == (900, 2_970, 200, "east", 905)
    assert books["reservation"] == ("settled", 900, 2_970)


def test_settling_as_reserved_or_for_free(settings):
    async def scenario():
        async with started(settings) as gate:
            principal, _ = await funded(gate, CREDIT)
            as_reserved = await gate.reserve(principal, model="m", tokens=10, price_per_million_usd=1.0,
                                             request_id="a")
            await gate.settle(as_reserved, status=200, latency_ms=1.0)            # the old call: as reserved
            free = await gate.reserve(principal, model="m", tokens=10, price_per_million_usd=1.0, request_id="b")
            await gate.settle(free, status=200, latency_ms=1.0, cost_micro=0, provider="local")
            return as_reserved, free, (await gate.get_account(principal.account_id)).balance_micro

    as_reserved, free, balance = asyncio.run(scenario())
    assert balance == CREDIT - 10
    url = settings.resolved_database_url
    assert _books(url, as_reserved.reservation_id) == {
        "entries": [("reserve", -10), ("settle", 0)], "usage": (10, 10, 200, None, None),
        "reservation": ("settled", 10, 10)}
    assert _books(url, free.reservation_id) == {
        "entries": [("reserve", -10), ("settle", 10)], "usage": (10, 0, 200, "local", None),
        "reservation": ("settled", 10, 0)}


def test_settling_above_the_reservation_is_refused_and_leaves_it_held(settings):
    async def scenario():
        async with started(settings) as gate:
            principal, _ = await funded(gate, CREDIT)
            charge = await gate.reserve(principal, model="m", tokens=100, price_per_million_usd=1.0,
                                        request_id="r")
            for bad in ({"cost_micro": 101}, {"tokens": 101}, {"cost_micro": -1}, {"upstream_tokens": -1},
                        {"upstream_tokens": 2**31}, {"provider": "x" * 101}, {"provider": ""}):
                with pytest.raises(ValueError):
                    await gate.settle(charge, status=200, latency_ms=1.0, **bad)
            assert (await gate.get_account(principal.account_id)).balance_micro == CREDIT - 100
            await gate.refund(charge, status=500)                  # still held: the caller can refund it
            return charge, (await gate.get_account(principal.account_id)).balance_micro

    charge, balance = asyncio.run(scenario())
    assert balance == CREDIT
    books = _books(settings.resolved_database_url, charge.reservation_id)
    assert books["entries"] == [("reserve", -100), ("refund", 100)]
    assert books["usage"] == (100, 0, 500, None, None)


def test_a_lower_settlement_happens_once(settings):
    async def scenario():
        async with started(settings) as gate:
            principal, _ = await funded(gate, CREDIT)
            charge = await gate.reserve(principal, model="m", tokens=1000, price_per_million_usd=5.0,
                                        request_id="r")
            await asyncio.gather(*(gate.settle(charge, status=200, latency_ms=1.0, cost_micro=1_000 + i,
                                               provider=f"p{i}") for i in range(5)))
            await gate.refund(charge, status=500)                  # too late: already settled
            return charge, (await gate.get_account(principal.account_id)).balance_micro

    charge, balance = asyncio.run(scenario())
    books = _books(settings.resolved_database_url, charge.reservation_id)
    [(kind, back)] = books["entries"][1:]
    assert kind == "settle" and balance == CREDIT - 5_000 + back
    assert books["usage"][1] == 5_000 - back and books["usage"][3] == f"p{books['usage'][1] - 1_000}"


def test_usage_grouped_by_provider(settings):
    async def scenario():
        async with started(settings) as gate:
            principal, _ = await funded(gate, CREDIT)
            for i, (provider, cost, outcome) in enumerate((("west", 40, "settle"), ("east", 30, "settle"),
                                                           ("east", 20, "settle"), (None, 50, "settle"),
                                                           (None, 0, "refund"))):
                charge = await gate.reserve(principal, model="m", tokens=100, price_per_million_usd=0.5,
                                            request_id=f"r{i}")
                if outcome == "refund":
                    await gate.refund(charge, status=503)
                else:
                    await gate.settle(charge, status=200, latency_ms=1.0, cost_micro=cost, tokens=80,
                                      provider=provider)
            return await gate.usage(principal, group_by="provider")

    rows = asyncio.run(scenario())
    # Ordered by provider, NULL (no provider: before routing, or refunded) last on both databases.
    assert [(r.group, r.requests, r.failed, r.tokens, r.cost_micro) for r in rows] == [
        ("east", 2, 0, 160, 50), ("west", 1, 0, 80, 40), (None, 2, 1, 80, 50)]
