"""Crash recovery: SIGKILL a gateway mid-load; at the next start every reservation is closed and the books agree."""

from __future__ import annotations

import asyncio
import os
import selectors
import signal
import subprocess
import sys
import time

import pytest
import sqlalchemy as sa

from gigarouter.accounts import recovery
from gigarouter.accounts.db import is_sqlite, normalize_url
from gigarouter.accounts.service import GateOptions
from tests.accounts.conftest import POSTGRES_URL, SECRET
from tests.accounts.helpers import WORKERS, check_invariants, funded, started, worker_env


def _read_line(proc: subprocess.Popen, timeout: float) -> str:
    selector = selectors.DefaultSelector()
    selector.register(proc.stdout, selectors.EVENT_READ)
    ready = selector.select(timeout)
    selector.close()
    return proc.stdout.readline().strip() if ready else ""


def _wait_until_released(engine: sa.Engine, owners: set[int], timeout: float = 15.0) -> None:
    """Postgres ends a killed client's session (and its advisory locks) asynchronously: wait for that."""
    if is_sqlite(engine):
        return  # the kernel dropped the flock before waitpid returned
    deadline = time.monotonic() + timeout
    query = sa.text("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND objsubid = 2 "
                    "AND classid::bigint = :c AND objid::bigint = ANY(:owners)")
    while True:
        with engine.connect() as conn:
            if conn.execute(query, {"c": recovery.LOCK_CLASS, "owners": list(owners)}).scalar_one() == 0:
                return
        assert time.monotonic() < deadline, "the killed gateway's session never ended"
        time.sleep(0.05)


def test_sigkill_mid_load_then_recovery_at_start(settings):
    async def setup():
        async with started(settings) as gate:
            return await funded(gate, 10_000_000)

    principal, key = asyncio.run(setup())
    proc = subprocess.Popen(
        [sys.executable, str(WORKERS / "crash_worker.py"), settings.resolved_database_url, str(settings.data_dir),
         key, SECRET], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=worker_env())
    try:
        line = _read_line(proc, timeout=60)
        assert line == "loaded", proc.stderr.read() if proc.poll() is not None else "worker did not load"
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        proc.stdout.close()
        proc.stderr.close()

    engine = sa.create_engine(settings.resolved_database_url)
    with engine.connect() as conn:
        held = conn.execute(sa.text("SELECT owner FROM reservations WHERE state = 'held'")).scalars().all()
        claims = conn.execute(sa.text("SELECT count(*) FROM idempotency_records WHERE state = 'in_flight'")).scalar()
    assert len(held) >= 5 and claims >= 5          # the crash left work in flight
    _wait_until_released(engine, set(held))

    async def restart():
        async with started(settings) as gate:
            report = gate.startup_recovery
            # A retry of a request that died in flight runs once and is charged once.
            async with gate.idempotency(principal, "held-0", "fp") as slot:
                assert slot.replay is None and slot.claim_id is not None
                charge = await gate.reserve(principal, model="m", tokens=100, price_per_million_usd=1.0,
                                            request_id="retry", idempotency=slot)
                await gate.settle(charge, status=200, latency_ms=1.0, response=b"ok")
            return report

    report = asyncio.run(restart())
    assert report.refunded == len(held) and report.released_claims >= 2
    check_invariants(engine)
    with engine.connect() as conn:
        statuses = conn.execute(sa.text("SELECT status FROM usage_records u JOIN reservations r "
                                        "ON r.id = u.reservation_id WHERE r.request_id LIKE 'held-%'")).scalars()
        assert set(statuses) == {recovery.STATUS_NO_RESPONSE}
        assert conn.execute(sa.text("SELECT count(*) FROM idempotency_records WHERE state = 'in_flight'")).scalar() == 0
    engine.dispose()


def test_recovery_leaves_a_live_gateways_work_alone(settings):
    async def scenario():
        async with started(settings) as first:
            principal, _ = await funded(first, 1_000)
            charge = await first.reserve(principal, model="m", tokens=100, price_per_million_usd=1.0,
                                         request_id="in-flight")
            async with started(settings) as second:           # a second gateway starting meanwhile
                report = await second.recover()
            await first.settle(charge, status=200, latency_ms=1.0)
            return report

    report = asyncio.run(scenario())
    assert report.refunded == 0
    engine = sa.create_engine(settings.resolved_database_url)
    assert check_invariants(engine)["settled"] == 1
    engine.dispose()


def test_own_reservations_past_the_time_limit_are_refunded(settings):
    async def scenario():
        async with started(settings, options=GateOptions(stale_reservation_s=0)) as gate:
            principal, _ = await funded(gate, 1_000)
            charge = await gate.reserve(principal, model="m", tokens=100, price_per_million_usd=1.0, request_id="lost")
            report = await gate.recover()
            await gate.settle(charge, status=200, latency_ms=1.0)   # too late: stays refunded, not charged
            return report, await gate.get_account(principal.account_id)

    report, account = asyncio.run(scenario())
    assert report.refunded == 1 and account.balance_micro == 1_000
    engine = sa.create_engine(settings.resolved_database_url)
    check_invariants(engine)
    engine.dispose()


@pytest.mark.parametrize("kind", ["file", "sole"])
def test_instance_locks_tell_the_living_from_the_dead(tmp_path, kind):
    if kind == "sole":
        lock = recovery.SoleLock()
        assert lock.probe(lock.owner + 1) and not lock.probe(lock.owner)
        return
    alive = recovery.FileLock(tmp_path / "g")
    other = recovery.FileLock(tmp_path / "g")
    assert alive.owner != other.owner
    assert not other.probe(alive.owner)          # held by a live holder
    assert other.probe(12345)                    # nobody ever held it
    other.release(12345)
    alive.close()                                # a clean exit releases it too
    assert other.probe(alive.owner)
    other.close()


@pytest.mark.postgres
def test_postgres_lock_survives_a_lost_session(postgres_admin):
    engine = sa.create_engine(normalize_url(POSTGRES_URL))
    lock = recovery.PostgresLock(engine)
    held = sa.text("SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND objsubid = 2 "
                   "AND classid::bigint = :c AND objid::bigint = :o")
    args = {"c": recovery.LOCK_CLASS, "o": lock.owner}
    try:
        with postgres_admin.connect() as conn:
            (pid,) = conn.execute(held, args).scalars().all()
            # Returns once the session has really ended (PostgreSQL 14+), releasing the lock.
            assert conn.execute(sa.text("SELECT pg_terminate_backend(:p, 5000)"), {"p": pid}).scalar_one()
            assert conn.execute(held, args).scalars().all() == []
        lock.keepalive()                       # notices the lost session and takes the lock again
        with postgres_admin.connect() as conn:
            assert len(new := conn.execute(held, args).scalars().all()) == 1 and new != [pid]
        lock.keepalive()                       # and a healthy session is left alone
    finally:
        lock.close()
        engine.dispose()
