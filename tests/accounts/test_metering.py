"""``metered``: reserve on entry, settle at the serving price once, refund on every other way out."""

from __future__ import annotations

import asyncio

import pytest
import sqlalchemy as sa

from gigarouter.accounts import ledger
from gigarouter.accounts.gate import ANONYMOUS, Charge, OpenGate
from gigarouter.accounts.metering import failure_status, metered
from gigarouter.errors import InsufficientCredit, Overloaded
from tests.accounts.helpers import check_invariants, funded, started

CREDIT = 1_000_000


def _usage(url: str) -> list[tuple]:
    engine = sa.create_engine(url)
    try:
        check_invariants(engine)
        with engine.connect() as c:
            return [tuple(r) for r in c.execute(sa.text(
                "SELECT u.request_id, u.tokens, u.cost_micro, u.status, u.provider, u.upstream_tokens, "
                "(SELECT SUM(l.amount_micro) FROM ledger_entries l WHERE l.reservation_id = u.reservation_id) "
                "FROM usage_records u ORDER BY u.request_id")).all()]
    finally:
        engine.dispose()


def test_settles_once_at_the_serving_price(settings):
    async def scenario():
        async with started(settings) as gate:
            principal, _ = await funded(gate, CREDIT)
            async with metered(gate, principal, model="m", tokens=1000, price_per_million_usd=7.0,
                               request_id="a") as meter:
                assert meter.charge.cost_micro == 7_000 and meter.charge.tokens == 1000
                assert (await gate.get_account(principal.account_id)).balance_micro == CREDIT - 7_000
                charged = await meter.settle(status=200, latency_ms=2.0, response=b"{}", price_per_million_usd="3.3",
                                             tokens=900, provider="east", upstream_tokens=905)
                assert charged == 2_970 and meter.closed
                with pytest.raises(RuntimeError):
                    await meter.settle(status=200, latency_ms=2.0, price_per_million_usd=1.0)
            with pytest.raises(RuntimeError):                      # after the block, too
                await meter.settle(status=200, latency_ms=2.0, price_per_million_usd=1.0)
            # An error after the settlement does not refund it: the request was answered and charged.
            with pytest.raises(KeyError):
                async with metered(gate, principal, model="m", tokens=10, price_per_million_usd=1.0,
                                   request_id="b") as meter:
                    await meter.settle(status=200, latency_ms=1.0, price_per_million_usd=1.0, provider="west")
                    raise KeyError("after")
            return (await gate.get_account(principal.account_id)).balance_micro

    assert asyncio.run(scenario()) == CREDIT - 2_970 - 10
    assert _usage(settings.resolved_database_url) == [("a", 900, 2_970, 200, "east", 905, -2_970),
                                                      ("b", 10, 10, 200, "west", None, -10)]


def test_clamps_to_the_reservation(settings):
    async def scenario():
        async with started(settings) as gate:
            principal, _ = await funded(gate, CREDIT)
            async with metered(gate, principal, model="m", tokens=100, price_per_million_usd=2.0,
                               request_id="tokens") as meter:     # a remote provider reported more than bounded
                assert await meter.settle(status=200, latency_ms=1.0, price_per_million_usd=1.0, tokens=150,
                                          upstream_tokens=150) == 100
            async with metered(gate, principal, model="m", tokens=100, price_per_million_usd=2.0,
                               request_id="price") as meter:      # a serving price above the reserved bound
                assert await meter.settle(status=200, latency_ms=1.0, price_per_million_usd=5.0) == 200
            async with metered(gate, principal, model="m", tokens=3, price_per_million_usd="0.35",
                               request_id="round") as meter:      # 3 x 0.35 = 1.05 -> 2, rounded up once
                assert await meter.settle(status=200, latency_ms=1.0, price_per_million_usd="0.34",
                                          tokens=3) == 2

    asyncio.run(scenario())
    assert _usage(settings.resolved_database_url) == [("price", 100, 200, 200, None, None, -200),
                                                      ("round", 3, 2, 200, None, None, -2),
                                                      ("tokens", 100, 100, 200, None, 150, -100)]


class Boom(Exception):
    status = 503


def test_refunds_on_exception_on_leaving_without_settling_and_on_cancellation(settings):
    async def scenario():
        async with started(settings) as gate:
            principal, _ = await funded(gate, CREDIT)

            async def run(request_id: str, body, tokens: int = 1000) -> None:
                async with metered(gate, principal, model="m", tokens=tokens, price_per_million_usd=1.0,
                                   request_id=request_id) as meter:
                    await body(meter)

            async def raise_(exc):
                raise exc

            with pytest.raises(Boom):
                await run("boom", lambda meter: raise_(Boom("upstream down")))
            with pytest.raises(Overloaded):
                await run("overloaded", lambda meter: raise_(Overloaded("busy")))
            with pytest.raises(ValueError):
                await run("plain", lambda meter: raise_(ValueError("bug")))
            with pytest.raises(ValueError):                        # a bad argument to settle: not charged
                await run("bad-settle", lambda meter: meter.settle(status=200, latency_ms=1.0,
                                                                   price_per_million_usd=1.0, tokens=-1))
            await run("left", lambda meter: asyncio.sleep(0))      # returned without settling

            started_compute = asyncio.Event()

            async def hang(meter):
                started_compute.set()
                await asyncio.Event().wait()

            task = asyncio.create_task(run("cancelled", hang))
            await started_compute.wait()
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            with pytest.raises(InsufficientCredit):                # refused on entry: the body never runs
                await run("too-big", lambda meter: raise_(AssertionError("ran")), tokens=2 * CREDIT)
            return (await gate.get_account(principal.account_id)).balance_micro

    assert asyncio.run(scenario()) == CREDIT
    # Every way out refunded exactly once: one usage row each, cost 0, ledger entries summing to 0.
    assert _usage(settings.resolved_database_url) == [
        ("bad-settle", 1000, 0, 500, None, None, 0), ("boom", 1000, 0, 503, None, None, 0),
        ("cancelled", 1000, 0, 499, None, None, 0), ("left", 1000, 0, 499, None, None, 0),
        ("overloaded", 1000, 0, 503, None, None, 0), ("plain", 1000, 0, 500, None, None, 0)]


def test_with_an_idempotency_key(settings):
    async def scenario():
        async with started(settings) as gate:
            principal, _ = await funded(gate, CREDIT)
            for attempt in ("fails", "works"):
                try:
                    async with gate.idempotency(principal, "k1", "fp") as slot:
                        assert slot.replay is None
                        async with metered(gate, principal, model="m", tokens=10, price_per_million_usd=1.0,
                                           request_id=attempt, idempotency=slot) as meter:
                            if attempt == "fails":
                                raise Boom("x")
                            await meter.settle(status=200, latency_ms=1.0, response=b"first",
                                               price_per_million_usd=0.5, provider="east")
                except Boom:
                    pass
            async with gate.idempotency(principal, "k1", "fp") as slot:
                return slot.replay, (await gate.get_account(principal.account_id)).balance_micro

    replay, balance = asyncio.run(scenario())
    assert replay is not None and replay.body == b"first"
    assert balance == CREDIT - 5
    assert _usage(settings.resolved_database_url) == [("fails", 10, 0, 503, None, None, 0),
                                                      ("works", 10, 5, 200, "east", None, -5)]


class RecordingGate(OpenGate):
    """Charges like the database gate would, in memory; settles slowly when asked to."""

    def __init__(self, settle_delay: float = 0.0, fail_settle: bool = False) -> None:
        self.calls: list[tuple] = []
        self.settle_delay = settle_delay
        self.fail_settle = fail_settle

    async def reserve(self, principal, *, model, tokens, price_per_million_usd, request_id, idempotency=None):
        cost = ledger.cost_micro(tokens, ledger.price_micro_per_million(price_per_million_usd))
        return Charge(principal=principal, request_id=request_id, model=model, tokens=tokens, cost_micro=cost,
                      reservation_id=f"res_{request_id}")

    async def settle(self, charge, *, status, latency_ms, response=None, cost_micro=None, tokens=None,
                     provider=None, upstream_tokens=None):
        await asyncio.sleep(self.settle_delay)
        if self.fail_settle:
            raise ConnectionError("database went away")
        self.calls.append(("settle", charge.request_id, cost_micro, tokens, provider))

    async def refund(self, charge, *, status):
        self.calls.append(("refund", charge.request_id, status))


def test_a_cancelled_settlement_still_completes_and_is_not_refunded():
    async def scenario():
        gate = RecordingGate(settle_delay=0.05)

        async def request():
            async with metered(gate, ANONYMOUS, model="m", tokens=100, price_per_million_usd=1.0,
                               request_id="r") as meter:
                await meter.settle(status=200, latency_ms=1.0, price_per_million_usd=0.5, provider="east")

        task = asyncio.create_task(request())
        await asyncio.sleep(0.01)                                  # inside the settlement's wait
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        return gate.calls

    assert asyncio.run(scenario()) == [("settle", "r", 50, 100, "east")]


def test_a_failed_settlement_is_refunded_once():
    async def scenario():
        gate = RecordingGate(fail_settle=True)
        with pytest.raises(ConnectionError):
            async with metered(gate, ANONYMOUS, model="m", tokens=100, price_per_million_usd=1.0,
                               request_id="r") as meter:
                await meter.settle(status=200, latency_ms=1.0, price_per_million_usd=1.0)
        return gate.calls

    assert asyncio.run(scenario()) == [("refund", "r", 500)]


def test_works_with_the_open_gate():
    async def scenario():
        gate = OpenGate()
        async with metered(gate, ANONYMOUS, model="m", tokens=100, price_per_million_usd=1.0,
                           request_id="r") as meter:
            assert meter.charge.cost_micro == 0
            assert await meter.settle(status=200, latency_ms=1.0, price_per_million_usd=1.0, provider="x") == 0
        with pytest.raises(Boom):
            async with metered(gate, ANONYMOUS, model="m", tokens=100, price_per_million_usd=1.0,
                               request_id="r"):
                raise Boom("x")
        async with metered(gate, ANONYMOUS, model="m", tokens=100, price_per_million_usd=None, request_id="r"):
            pass

    asyncio.run(scenario())


def test_failure_status():
    assert failure_status(asyncio.CancelledError()) == 499
    assert failure_status(Overloaded("x")) == 503
    assert failure_status(InsufficientCredit("x")) == 402
    assert failure_status(ValueError("x")) == 500
    odd = ValueError("x")
    odd.status = 200                                               # not a failure status: 500
    assert failure_status(odd) == 500
