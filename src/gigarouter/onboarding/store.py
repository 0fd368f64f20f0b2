"""Onboarding results and each catalog model's status, in the accounts database.

Two tables beside the accounts schema, created by the migrations ``0006_onboarding`` and ``0007_onboarding_runner``:

- ``onboarding_runs``: one dated row per run (who ran it against which provider, commit, device,
  library versions, each step's result as JSON, the reason it failed), updated while it runs
  (``step`` and ``progress`` are what the admin queue shows).
- ``model_status``: one row per model that has ever been onboarded: ``coming_soon``, ``benchmarking``
  or ``live``, the reason it is not live, and the run that decided it.

The moves: a run starts -> ``benchmarking`` (a live model stays ``live`` while it is re-checked);
every step passes -> ``live``; a step fails -> ``coming_soon`` with the reason, which takes a live
model out of live. A model never onboarded has no row: the catalog then keeps its older rule
(live while a healthy provider serves it), so an operator's own deployment needs no run.

One run per model at a time, across every server and CLI sharing the database. Each run records
its ``runner``: the liveness owner id of the process running it (``accounts/recovery.py``: a lock
the OS or Postgres drops the moment that process dies, SIGKILL included). A run whose runner is
dead is closed as abandoned, by the next run's start and by the gateways' recovery sweep: its
results so far are kept, and it does not count against the model (a live model stays live; a
model never onboarded goes back to ``coming_soon``). Runs recorded before migration 0007 have no
runner and count as abandoned: upgrade every process sharing the database together.
"""

from __future__ import annotations

import json
import logging
import secrets
import zlib
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import (
    Column,
    Connection,
    Engine,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    and_,
    func,
    insert,
    select,
    text,
    update,
)

from gigarouter.accounts import recovery
from gigarouter.accounts.db import is_sqlite, transaction
from gigarouter.accounts.tables import NAMING, UtcDateTime, utcnow

log = logging.getLogger(__name__)

COMING_SOON = "coming_soon"
BENCHMARKING = "benchmarking"
LIVE = "live"
STATUSES = (COMING_SOON, BENCHMARKING, LIVE)

RUNNING = "running"
PASSED = "passed"
FAILED = "failed"

#: Why a run whose process died was closed (the admin queue and the run's page show it).
ABANDONED = "abandoned: the process running it stopped (killed or crashed) before the run finished"
#: Postgres advisory-lock classid under which run starts for one model are serialized
#: (SQLite's BEGIN IMMEDIATE already serializes every write transaction).
_START_LOCK_CLASS = 0x6F6E_6272

metadata = MetaData(naming_convention=NAMING)

onboarding_runs = Table(
    "onboarding_runs", metadata,
    Column("id", String(40), primary_key=True),
    Column("model", String(200), nullable=False, index=True),
    Column("state", String(20), nullable=False),           # running | passed | failed
    Column("step", String(40), nullable=False),             # the step running now, or the last one
    Column("progress", String(200), nullable=False),        # a line for the admin queue
    Column("provider", String(500), nullable=False),        # "in-process" or the provider's base URL
    Column("started_at", UtcDateTime, nullable=False),
    Column("finished_at", UtcDateTime, nullable=True),
    Column("commit", String(64), nullable=True),
    Column("device", String(300), nullable=True),
    Column("versions", Text, nullable=False),               # JSON: python, torch, mteb, ...
    Column("results", Text, nullable=False),                # JSON: step name -> its result
    Column("reason", Text, nullable=True),                  # why it failed
    Column("runner", Integer, nullable=True),               # liveness owner id of the process running it
)

model_status = Table(
    "model_status", metadata,
    Column("model", String(200), primary_key=True),
    Column("status", String(20), nullable=False),
    Column("reason", Text, nullable=True),
    Column("run_id", String(40), nullable=True),
    Column("updated_at", UtcDateTime, nullable=False),
)


@dataclass(frozen=True)
class Run:
    id: str
    model: str
    state: str
    step: str
    progress: str
    provider: str
    started_at: datetime
    finished_at: datetime | None
    commit: str | None
    device: str | None
    versions: dict[str, Any] = field(default_factory=dict)
    results: dict[str, Any] = field(default_factory=dict)
    reason: str | None = None

    @property
    def finished(self) -> bool:
        return self.state != RUNNING


@dataclass(frozen=True)
class ModelStatus:
    model: str
    status: str
    reason: str | None
    run_id: str | None
    updated_at: datetime


def new_run_id() -> str:
    return f"onb_{secrets.token_hex(10)}"


class RunInProgress(Exception):
    """This model has a run going already, in this process or in another live one."""


class OnboardingStore:
    """Short transactions on the accounts engine; the web calls them through ``run_in_threadpool``.

    ``liveness`` is the process's liveness lock (the accounts gate's, in a server). Without one the
    store takes its own when it first needs it (the CLI), and ``close`` gives it back.
    """

    def __init__(self, engine: Engine, *, liveness: recovery.InstanceLock | None = None) -> None:
        self.engine = engine
        self._liveness = liveness
        self._own_liveness = False

    @property
    def liveness(self) -> recovery.InstanceLock:
        if self._liveness is None:
            self._liveness = recovery.instance_lock(self.engine)
            self._own_liveness = True
        return self._liveness

    def close(self) -> None:
        """Give back a liveness lock this store took (its runs still going then count as abandoned)."""
        if self._own_liveness and self._liveness is not None:
            self._liveness.close()
            self._liveness = None
            self._own_liveness = False

    def start(self, model: str, *, provider: str, commit: str | None, device: str | None,
              versions: dict[str, Any]) -> Run:
        """A new running run; the model moves to benchmarking (a live one stays live until the run ends).

        Raises ``RunInProgress`` while another run of the model is going in a live process; a run
        whose process died is closed as abandoned first.
        """
        runner = self.liveness.owner
        self.abandon_dead(model=model)
        run_id = new_run_id()
        now = utcnow()
        with transaction(self.engine) as conn:
            _serialize_starts(conn, model)
            going = conn.execute(select(onboarding_runs.c.id).where(
                onboarding_runs.c.model == model, onboarding_runs.c.state == RUNNING)).first()
            if going is not None:
                raise RunInProgress(model)
            conn.execute(insert(onboarding_runs).values(
                id=run_id, model=model, state=RUNNING, step="starting", progress="starting", provider=provider,
                started_at=now, commit=commit, device=device, versions=json.dumps(versions), results="{}",
                runner=runner))
            current = conn.execute(select(model_status).where(model_status.c.model == model)).first()
            if current is None:
                conn.execute(insert(model_status).values(model=model, status=BENCHMARKING, reason=None,
                                                         run_id=run_id, updated_at=now))
            elif current.status != LIVE:
                conn.execute(update(model_status).where(model_status.c.model == model).values(
                    status=BENCHMARKING, run_id=run_id, updated_at=now))
        return self.run(run_id)

    def report(self, run_id: str, *, step: str, progress: str, results: dict[str, Any] | None = None) -> None:
        values: dict[str, Any] = {"step": step, "progress": progress[:200]}
        if results is not None:
            values["results"] = json.dumps(results)
        with transaction(self.engine) as conn:
            conn.execute(update(onboarding_runs).where(onboarding_runs.c.id == run_id).values(**values))

    def finish(self, run_id: str, *, results: dict[str, Any], reason: str | None) -> Run:
        """Close the run: no reason -> passed and the model is live; a reason -> failed and not live.

        A run is closed once: finishing one already closed (abandoned by a sweep that found its
        process dead) changes nothing.
        """
        now = utcnow()
        passed = reason is None
        with transaction(self.engine) as conn:
            model = conn.execute(select(onboarding_runs.c.model).where(onboarding_runs.c.id == run_id)).scalar_one()
            closed = conn.execute(update(onboarding_runs).where(
                onboarding_runs.c.id == run_id, onboarding_runs.c.state == RUNNING).values(
                state=PASSED if passed else FAILED, step="done", finished_at=now, results=json.dumps(results),
                progress="passed" if passed else f"failed: {reason}"[:200], reason=reason)).rowcount
            if closed:
                conn.execute(update(model_status).where(model_status.c.model == model).values(
                    status=LIVE if passed else COMING_SOON, reason=reason, run_id=run_id, updated_at=now))
            else:
                log.warning("onboarding run %s was closed already (abandoned?); its result is not recorded", run_id)
        return self.run(run_id)

    def run(self, run_id: str) -> Run:
        with transaction(self.engine, write=False) as conn:
            row = conn.execute(select(onboarding_runs).where(onboarding_runs.c.id == run_id)).first()
        if row is None:
            raise KeyError(run_id)
        return _run(row)

    def runs(self, model: str | None = None, *, limit: int = 50) -> list[Run]:
        """Newest first."""
        query = select(onboarding_runs).order_by(onboarding_runs.c.started_at.desc()).limit(limit)
        if model is not None:
            query = query.where(onboarding_runs.c.model == model)
        with transaction(self.engine, write=False) as conn:
            return [_run(row) for row in conn.execute(query)]

    def latest_runs(self) -> dict[str, Run]:
        """Each model's newest run (the admin queue's column)."""
        return self._newest()

    def latest_passed(self) -> dict[str, Run]:
        """Each model's newest passing run: the measured numbers its page shows."""
        return self._newest(onboarding_runs.c.state == PASSED)

    def _newest(self, *conditions) -> dict[str, Run]:
        """One row per model (its newest run meeting ``conditions``), in one query however many runs exist."""
        runs = onboarding_runs.c
        newest = (select(runs.model, func.max(runs.started_at).label("at")).where(*conditions)
                  .group_by(runs.model).subquery())
        newest_row = and_(runs.model == newest.c.model, runs.started_at == newest.c.at)
        query = select(onboarding_runs).join(newest, newest_row).where(*conditions).order_by(runs.id)
        latest: dict[str, Run] = {}
        with transaction(self.engine, write=False) as conn:
            for row in conn.execute(query):
                latest.setdefault(row.model, _run(row))
        return latest

    def statuses(self) -> dict[str, ModelStatus]:
        with transaction(self.engine, write=False) as conn:
            return {row.model: ModelStatus(model=row.model, status=row.status, reason=row.reason,
                                           run_id=row.run_id, updated_at=row.updated_at)
                    for row in conn.execute(select(model_status))}

    def abandon_dead(self, *, model: str | None = None) -> int:
        """Close the running runs (of ``model``, or all) whose process died; how many were closed.

        The run keeps the results it had. The model's status was this run's only if the model was
        not live (a live model keeps its passing run while re-checked): then it goes back to
        ``coming_soon``, with the reason. A dead process says nothing about the model.
        """
        lock = self.liveness
        query = select(onboarding_runs.c.id, onboarding_runs.c.runner).where(onboarding_runs.c.state == RUNNING)
        if model is not None:
            query = query.where(onboarding_runs.c.model == model)
        with transaction(self.engine, write=False) as conn:
            by_runner: dict[int | None, list[str]] = defaultdict(list)
            for row in conn.execute(query):
                by_runner[row.runner].append(row.id)
        closed = 0
        for runner, run_ids in by_runner.items():
            if runner is not None and not lock.probe(runner):
                continue        # alive (this process, or another that still holds its lock)
            try:
                closed += sum(self._abandon(run_id) for run_id in run_ids)
            finally:
                if runner is not None:
                    lock.release(runner)
        if closed:
            log.warning("closed %d onboarding run(s) whose process had died", closed)
        return closed

    def _abandon(self, run_id: str) -> int:
        now = utcnow()
        with transaction(self.engine) as conn:
            closed = conn.execute(update(onboarding_runs).where(
                onboarding_runs.c.id == run_id, onboarding_runs.c.state == RUNNING).values(
                state=FAILED, step="done", finished_at=now, progress=ABANDONED[:200], reason=ABANDONED)).rowcount
            if closed:
                conn.execute(update(model_status).where(
                    model_status.c.run_id == run_id, model_status.c.status == BENCHMARKING).values(
                    status=COMING_SOON, reason=ABANDONED, updated_at=now))
        return closed


async def watch_abandoned_runs(gate) -> None:
    """Have a database gate close dead processes' runs now and at each of its recovery sweeps."""
    store = OnboardingStore(gate.engine, liveness=gate.liveness)
    await gate.add_sweep(store.abandon_dead)


def _serialize_starts(conn: Connection, model: str) -> None:
    """Two processes starting a run of one model at once: the second waits here, then sees the first's run."""
    if not is_sqlite(conn.engine):
        conn.execute(text("SELECT pg_advisory_xact_lock(:c, :o)"),
                     {"c": _START_LOCK_CLASS, "o": zlib.crc32(model.encode()) - 2**31})


def _run(row) -> Run:
    return Run(id=row.id, model=row.model, state=row.state, step=row.step, progress=row.progress,
               provider=row.provider, started_at=row.started_at, finished_at=row.finished_at, commit=row.commit,
               device=row.device, versions=json.loads(row.versions or "{}"), results=json.loads(row.results or "{}"),
               reason=row.reason)
