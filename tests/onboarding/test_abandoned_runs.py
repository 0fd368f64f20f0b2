"""Onboarding runs whose process died are closed as abandoned; one run per model across processes.

Each run records its runner's liveness owner (accounts/recovery.py: an flock for SQLite, a
Postgres advisory lock), which the OS or the database drops when the process dies, SIGKILL
included. Real processes here: a worker starts a run and is killed or kept alive.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections.abc import Iterator

import pytest
import sqlalchemy as sa

from gigarouter.accounts.db import make_engine
from gigarouter.onboarding.store import (
    ABANDONED,
    BENCHMARKING,
    COMING_SOON,
    LIVE,
    OnboardingStore,
    RunInProgress,
    onboarding_runs,
)
from tests.accounts.helpers import started, worker_env
from tests.onboarding.helpers import WORKER, Holder


@pytest.fixture
def store(any_store) -> OnboardingStore:
    """This process's store (conftest's ``any_store``): another process, to the workers."""
    return any_store


@pytest.fixture
def holders(migrated_url) -> Iterator[list[Holder]]:
    made: list[Holder] = []
    yield made
    for holder in made:
        holder.close()


def hold(holders: list[Holder], url: str, model: str) -> Holder:
    holders.append(Holder(url, model))
    return holders[-1]


def test_a_run_whose_process_was_killed_is_closed_and_keeps_its_results(store, holders, migrated_url):
    holder = hold(holders, migrated_url, "m")
    assert holder.run_id.startswith("onb_")
    assert store.abandon_dead() == 0                     # its process is alive: the run is going
    assert store.run(holder.run_id).state == "running" and store.statuses()["m"].status == BENCHMARKING
    holder.kill()
    assert store.abandon_dead() == 1
    run = store.run(holder.run_id)
    assert (run.state, run.reason, run.step) == ("failed", ABANDONED, "done") and run.finished_at is not None
    assert run.results == {"fidelity": {"passed": True}}          # what it had learnt is kept
    status = store.statuses()["m"]
    assert (status.status, status.reason, status.run_id) == (COMING_SOON, ABANDONED, holder.run_id)
    assert store.abandon_dead() == 0                              # closed once


def test_one_run_per_model_across_processes_until_its_process_dies(store, holders, migrated_url):
    holder = hold(holders, migrated_url, "m")
    with pytest.raises(RunInProgress):
        store.start("m", provider="in-process", commit=None, device=None, versions={})
    assert hold_refused(migrated_url, "m")                  # a third process is refused too
    other = store.start("other-model", provider="in-process", commit=None, device=None, versions={})
    assert other.state == "running"                          # other models are free
    holder.kill()
    mine = store.start("m", provider="in-process", commit=None, device=None, versions={})   # closes the dead one
    assert store.run(holder.run_id).reason == ABANDONED and mine.state == "running"
    with pytest.raises(RunInProgress):                       # and this process's own run counts as going
        store.start("m", provider="in-process", commit=None, device=None, versions={})


def hold_refused(url: str, model: str) -> bool:
    proc = subprocess.run([sys.executable, str(WORKER), url, model], input="", capture_output=True, text=True,
                          env=worker_env(), timeout=60)
    return proc.stdout.strip() == "in-progress"


def test_a_live_model_stays_live_when_its_recheck_dies_and_a_finished_run_is_not_reopened(store, holders,
                                                                                           migrated_url):
    first = store.start("m", provider="in-process", commit=None, device=None, versions={})
    store.finish(first.id, results={}, reason=None)
    holder = hold(holders, migrated_url, "m")                # the re-check, in another process
    holder.kill()
    assert store.abandon_dead() == 1
    status = store.statuses()["m"]
    assert (status.status, status.run_id) == (LIVE, first.id)          # a dead checker says nothing of the model
    # A finish arriving after the sweep (a process that was only cut off) changes nothing.
    store.finish(holder.run_id, results={"speed": {"passed": True}}, reason=None)
    assert store.run(holder.run_id).reason == ABANDONED and store.statuses()["m"].run_id == first.id


def test_a_run_finished_by_its_own_process_is_left_alone(store, holders, migrated_url):
    holder = hold(holders, migrated_url, "m")
    assert holder.finish() == "finished"
    assert store.abandon_dead() == 0
    assert store.run(holder.run_id).state == "passed" and store.statuses()["m"].status == LIVE


def test_runs_from_before_the_runner_column_count_as_abandoned(store, migrated_url):
    run = store.start("m", provider="in-process", commit=None, device=None, versions={})
    with store.engine.begin() as conn:      # as a gateway before migration 0007 recorded it
        conn.execute(sa.update(onboarding_runs).where(onboarding_runs.c.id == run.id).values(runner=None))
    assert store.abandon_dead() == 1 and store.run(run.id).reason == ABANDONED


def test_a_server_closes_dead_processes_runs_when_it_starts(holders, migrated_url, tmp_path):
    from fastapi.testclient import TestClient

    from gigarouter.api.app import create_app
    from gigarouter.settings import Settings
    from tests.accounts.conftest import SECRET

    dead = hold(holders, migrated_url, "a")
    dead.kill()
    alive = hold(holders, migrated_url, "b")
    settings = Settings(data_dir=tmp_path / "data", database_url=migrated_url, server_secret=SECRET, models=(),
                        auth="required")
    with TestClient(create_app(settings)) as client:
        assert client.get("/health").status_code == 200
        reader = OnboardingStore(make_engine(migrated_url, pool_size=1))
        try:
            assert reader.run(dead.run_id).reason == ABANDONED
            assert reader.run(alive.run_id).state == "running"
        finally:
            reader.engine.dispose()


def test_a_gateway_closes_runs_whose_process_dies_while_it_is_up(holders, migrated_url, tmp_path):
    from gigarouter.accounts.service import GateOptions
    from gigarouter.onboarding.store import watch_abandoned_runs
    from gigarouter.settings import Settings
    from tests.accounts.conftest import SECRET

    settings = Settings(data_dir=tmp_path / "data", database_url=migrated_url, server_secret=SECRET)
    reader = OnboardingStore(make_engine(migrated_url, pool_size=1))

    async def scenario() -> None:
        async with started(settings, options=GateOptions(recovery_interval_s=0.2)) as gate:
            await watch_abandoned_runs(gate)                 # as the app's lifespan does
            holder = await asyncio.to_thread(hold, holders, migrated_url, "b")
            await asyncio.sleep(0.6)                         # sweeps went by
            assert reader.run(holder.run_id).state == "running"            # alive: left alone
            holder.kill()
            for _ in range(50):                                             # the next sweep closes it
                if reader.run(holder.run_id).state != "running":
                    break
                await asyncio.sleep(0.1)
            assert reader.run(holder.run_id).reason == ABANDONED

    try:
        asyncio.run(scenario())
    finally:
        reader.engine.dispose()
