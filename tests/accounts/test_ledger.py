"""Money: exact cost, atomic reservations under concurrency, settle/refund exactly once, grants, spend caps."""

from __future__ import annotations

import asyncio
import threading
from decimal import Decimal

import pytest
import sqlalchemy as sa

from gigarouter.accounts import ledger
from gigarouter.accounts.store import KeySpec
from gigarouter.errors import InsufficientCredit
from tests.accounts.helpers import check_invariants, funded, started


@pytest.mark.parametrize(("tokens", "price", "cost"), [
    (1000, 0.002, 2),            # all-MiniLM's catalog price: 0.002 USD/M = 0.002 micro-dollars per token
    (1, 0.002, 1),               # rounded up per request, never free
    (0, 0.002, 0),
    (1_000_000, 0.002, 2_000),
    (333, 0.1, 34),              # 33.3 -> 34
    (7, 1.0, 7),
    (3, "0.35", 2),              # 1.05 -> 2
    (10, None, 0),               # unpriced model
])
def test_cost_is_exact_and_rounds_up(tokens, price, cost):
    assert ledger.cost_micro(tokens, ledger.price_micro_per_million(price)) == cost


def test_price_conversion_avoids_float_noise():
    assert ledger.price_micro_per_million(0.1) == 100_000           # not 100000.00000000001
    assert ledger.price_micro_per_million(Decimal("0.0000001")) == 1   # finer than a micro-dollar: rounded up
    with pytest.raises(ValueError):
        ledger.price_micro_per_million(-1)


def test_usd_amounts_are_exact():
    assert ledger.usd_to_micro("1.25") == 1_250_000
    assert ledger.usd_to_micro("-0.000001") == -1
    assert ledger.format_usd(1_250_000) == "1.250000"
    assert ledger.format_usd(-5) == "-0.000005"
    for bad in ("0.0000001", "abc", "inf"):
        with pytest.raises(ValueError):
            ledger.usd_to_micro(bad)


def test_200_concurrent_requests_against_credit_for_exactly_10(settings):
    cost = 7_000                                   # 1000 tokens at 7 USD/M
    engine = sa.create_engine(settings.resolved_database_url)
    seen: list[int] = []
    stop = threading.Event()

    def watch_balance(account_id: str) -> None:  # an outside observer: the balance is never negative
        while not stop.is_set():
            with engine.connect() as conn:
                seen.append(conn.execute(sa.text("SELECT balance_micro FROM accounts WHERE id = :a"),
                                         {"a": account_id}).scalar_one())

    async def one(gate, principal, i: int) -> bool:
        try:
            charge = await gate.reserve(principal, model="m", tokens=1000, price_per_million_usd=7.0,
                                        request_id=f"req-{i}")
        except InsufficientCredit:
            return False
        await asyncio.sleep(0)                     # let other requests interleave with the "compute"
        await gate.settle(charge, status=200, latency_ms=1.0)
        return True

    async def scenario() -> list[bool]:
        async with started(settings) as gate:
            principal, _ = await funded(gate, 10 * cost)
            watcher = threading.Thread(target=watch_balance, args=(principal.account_id,))
            watcher.start()
            try:
                return await asyncio.gather(*(one(gate, principal, i) for i in range(200)))
            finally:
                stop.set()
                watcher.join()

    results = asyncio.run(scenario())
    assert results.count(True) == 10
    assert seen and min(seen) >= 0
    totals = check_invariants(engine)
    assert totals == {"usage_cost": 10 * cost, "balances": 0, "held": 0, "settled": 10, "refunded": 0}
    engine.dispose()


def test_refunds_return_credit_and_everything_closes_once(settings):
    async def scenario():
        async with started(settings) as gate:
            principal, _ = await funded(gate, 100)
            charges = [await gate.reserve(principal, model="m", tokens=10, price_per_million_usd=1.0,
                                          request_id=f"r{i}") for i in range(10)]
            with pytest.raises(InsufficientCredit):
                await gate.reserve(principal, model="m", tokens=1, price_per_million_usd=1.0, request_id="x")
            for c in charges[:4]:
                await gate.settle(c, status=200, latency_ms=2.0)
            for c in charges[4:]:
                await gate.refund(c, status=500)
            # Closing twice changes nothing: the second settle/refund matches no held reservation.
            await gate.refund(charges[0], status=500)
            await gate.settle(charges[5], status=200, latency_ms=1.0)
            return await gate.get_account(principal.account_id)

    account = asyncio.run(scenario())
    assert account.balance_micro == 60
    engine = sa.create_engine(settings.resolved_database_url)
    assert check_invariants(engine) == {"usage_cost": 40, "balances": 60, "held": 0, "settled": 4, "refunded": 6}
    engine.dispose()


def test_key_spend_cap_is_enforced_atomically(settings):
    async def scenario():
        async with started(settings) as gate:
            principal, _ = await funded(gate, 1_000, KeySpec(spend_cap_micro=25))

            async def one(i):
                try:
                    c = await gate.reserve(principal, model="m", tokens=10, price_per_million_usd=1.0,
                                           request_id=f"r{i}")
                except InsufficientCredit as exc:
                    return exc.code
                await gate.settle(c, status=200, latency_ms=1.0)
                return "ok"

            return await asyncio.gather(*(one(i) for i in range(8)))

    outcomes = asyncio.run(scenario())
    assert outcomes.count("ok") == 2 and outcomes.count("spend_cap_reached") == 6
    engine = sa.create_engine(settings.resolved_database_url)
    check_invariants(engine)
    engine.dispose()


def test_grants_and_takebacks_never_go_below_zero(settings):
    async def scenario():
        async with started(settings) as gate:
            account, _ = await gate.create_account(credit_micro=0, key=None)
            assert await gate.grant(account.id, 500, note="promo") == 500
            assert await gate.grant(account.id, -200, note="correction") == 300
            with pytest.raises(InsufficientCredit):
                await gate.grant(account.id, -301)
            return await gate.get_account(account.id)

    assert asyncio.run(scenario()).balance_micro == 300
    engine = sa.create_engine(settings.resolved_database_url)
    check_invariants(engine)
    engine.dispose()


def test_the_database_itself_refuses_a_negative_balance(migrated_url):
    engine = sa.create_engine(migrated_url)
    with pytest.raises(sa.exc.IntegrityError), engine.begin() as conn:
        conn.execute(sa.text("INSERT INTO accounts (id, balance_micro, disabled, created_at) "
                             "VALUES ('acct_x', -1, false, CURRENT_TIMESTAMP)"))
    engine.dispose()
