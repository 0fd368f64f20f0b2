"""Idempotency-Key: retries return the first result and are charged once, even when sent all at once."""

from __future__ import annotations

import asyncio
import itertools
from datetime import timedelta

import pytest
import sqlalchemy as sa

from gigarouter.accounts import idempotency
from gigarouter.accounts.service import GateOptions
from gigarouter.accounts.tables import utcnow
from gigarouter.errors import Conflict, InvalidRequest
from tests.accounts.helpers import check_invariants, funded, started

BODY = {"model": "m", "input": ["hello"]}
_ids = itertools.count()


async def handle(gate, principal, key, body, compute):
    """What the embeddings handler does: (status, body, replayed)."""
    async with gate.idempotency(principal, key, idempotency.fingerprint(body)) as slot:
        if slot.replay is not None:
            return slot.replay.status, slot.replay.body, True
        charge = await gate.reserve(principal, model="m", tokens=100, price_per_million_usd=1.0,
                                    request_id=f"req-{next(_ids)}", idempotency=slot)
        try:
            content = await compute()
        except BaseException:
            await gate.refund(charge, status=500)
            raise
        await gate.settle(charge, status=200, latency_ms=1.0, response=content)
        return 200, content, False


def _charges(settings) -> dict[str, int]:
    engine = sa.create_engine(settings.resolved_database_url)
    try:
        return check_invariants(engine)
    finally:
        engine.dispose()


def test_same_key_20_times_at_once_is_charged_once(settings, monkeypatch):
    """Ten duplicates through each of two gateways on one database: one computes, all get its body."""
    seen_busy = 0
    everyone_waiting = asyncio.Event()
    real_try_claim = idempotency.try_claim

    def counting_try_claim(*args, **kwargs):
        nonlocal seen_busy
        got = real_try_claim(*args, **kwargs)
        if isinstance(got, idempotency.Existing) and got.state == "in_flight":
            seen_busy += 1
            if seen_busy >= 19:
                loop.call_soon_threadsafe(everyone_waiting.set)
        return got

    monkeypatch.setattr(idempotency, "try_claim", counting_try_claim)
    computed = 0

    async def compute():
        nonlocal computed
        computed += 1
        await everyone_waiting.wait()       # hold the first until all 19 others have found it busy
        return b'{"data": "the one result"}'

    async def scenario():
        nonlocal loop
        loop = asyncio.get_running_loop()
        async with started(settings) as a, started(settings) as b:
            principal, _ = await funded(a, 1_000)
            calls = [handle(gate, principal, "retry-me", BODY, compute) for gate in (a, b) for _ in range(10)]
            return await asyncio.gather(*calls)

    loop = None
    results = asyncio.run(scenario())
    assert computed == 1
    assert {(status, body) for status, body, _ in results} == {(200, b'{"data": "the one result"}')}
    assert sum(replayed for _, _, replayed in results) == 19
    assert _charges(settings) == {"usage_cost": 100, "balances": 900, "held": 0, "settled": 1, "refunded": 0}


def test_a_failed_first_attempt_releases_the_key(settings):
    async def fail():
        raise RuntimeError("device fell over")

    async def succeed():
        return b"ok"

    async def scenario():
        async with started(settings) as gate:
            principal, _ = await funded(gate, 1_000)
            with pytest.raises(RuntimeError):
                await handle(gate, principal, "k", BODY, fail)
            first = await handle(gate, principal, "k", BODY, succeed)
            second = await handle(gate, principal, "k", BODY, succeed)
            return first, second

    first, second = asyncio.run(scenario())
    assert first == (200, b"ok", False) and second == (200, b"ok", True)
    assert _charges(settings) == {"usage_cost": 100, "balances": 900, "held": 0, "settled": 1, "refunded": 1}


def test_leaving_the_block_without_settling_refunds(settings):
    async def scenario():
        async with started(settings) as gate:
            principal, _ = await funded(gate, 1_000)
            async with gate.idempotency(principal, "k", "fp") as slot:
                await gate.reserve(principal, model="m", tokens=100, price_per_million_usd=1.0,
                                   request_id="r", idempotency=slot)
            async with gate.idempotency(principal, "k", "fp") as again:
                assert again.replay is None and again.claim_id is not None

    asyncio.run(scenario())
    assert _charges(settings)["refunded"] == 1


def test_same_key_different_body_is_refused(settings):
    async def scenario():
        async with started(settings) as gate:
            principal, _ = await funded(gate, 1_000)
            await handle(gate, principal, "k", BODY, _ok)
            with pytest.raises(InvalidRequest) as info:
                await handle(gate, principal, "k", {**BODY, "input": ["other"]}, _ok)
            assert info.value.code == "idempotency_key_reused"
            other, _ = await funded(gate, 1_000)   # keys are per account: another account may reuse it
            assert (await handle(gate, other, "k", BODY, _ok))[2] is False

    asyncio.run(scenario())


async def _ok():
    return b"ok"


def test_a_duplicate_gives_up_with_409_while_the_first_is_still_running(settings):
    async def scenario():
        running, release = asyncio.Event(), asyncio.Event()
        async with started(settings, options=GateOptions(idempotency_wait_s=0.2)) as gate:
            principal, _ = await funded(gate, 1_000)

            async def slow():
                running.set()
                await release.wait()
                return b"late"

            first = asyncio.create_task(handle(gate, principal, "k", BODY, slow))
            await running.wait()
            with pytest.raises(Conflict) as info:
                await handle(gate, principal, "k", BODY, _ok)
            release.set()
            assert await first == (200, b"late", False)
            return info.value

    assert asyncio.run(scenario()).status == 409


def test_completed_records_expire(settings):
    async def scenario():
        async with started(settings) as gate:
            principal, _ = await funded(gate, 1_000)
            await handle(gate, principal, "k", BODY, _ok)
            with gate.engine.begin() as conn:
                conn.execute(sa.update(idempotency.IdempotencyRecord).values(
                    completed_at=utcnow() - idempotency.RETENTION - timedelta(seconds=1)))
            return await handle(gate, principal, "k", BODY, _ok)

    assert asyncio.run(scenario())[2] is False     # ran (and was charged) again
    assert _charges(settings)["settled"] == 2


def test_key_validation():
    assert idempotency.check_key("a" * 255)
    for bad in ("", "a" * 256, "tab\there"):
        with pytest.raises(InvalidRequest):
            idempotency.check_key(bad)
    assert idempotency.fingerprint({"b": 1, "a": 2}) == idempotency.fingerprint({"a": 2, "b": 1})
