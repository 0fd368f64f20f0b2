"""The loop that runs batches: claim one, run its lines a few at a time, record each, finalize.

One ``BatchRunner`` per server process, started and stopped by the app's
lifespan. It takes the oldest unfinished batch that no live process runs
(another process's batch is taken over only once that process's liveness
lock, the one accounts recovery uses, shows it dead), and runs up to
``batch_concurrency`` lines at once, all batches together, on the bulk lane.

Exactly once, across crashes. A line is finished when its row is in
``batch_lines`` (written with its batch's counts in one transaction, after
its output line is durable in the spool). Its charge is keyed by the batch
and line (``lines.py``): the charge and the stored response commit together,
and the line's row replaces that record. So a process SIGKILLed at any point
leaves each line either finished (skipped on resume), charged but not
recorded (its stored response is replayed: recorded, not charged again), or
neither (it runs, for the first time as far as the books know).
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from collections.abc import AsyncIterator, Callable
from functools import partial
from typing import Any, TypeVar

import orjson
from starlette.concurrency import run_in_threadpool

from gigarouter.accounts import recovery
from gigarouter.accounts.gate import Principal
from gigarouter.accounts.tables import utcnow
from gigarouter.batches.files import FileStore
from gigarouter.batches.lines import (
    LineError,
    LineRequest,
    LineRunner,
    Outcome,
    custom_id_of,
    error_line,
    line_request_id,
    parse_line,
    response_line,
)
from gigarouter.batches.store import BatchStore, LineRecord, new_file_id
from gigarouter.errors import GigarouterError

log = logging.getLogger(__name__)
T = TypeVar("T")

#: How often an idle runner looks for work another process or a restart left (new batches wake it at once).
IDLE_POLL_S = 2.0
#: A line whose failure may pass (a full queue, no provider now, a model still loading) is tried this many
#: times, waiting between tries (the error's Retry-After, doubling, at most RETRY_MAX_S); then it fails alone.
ATTEMPTS = 8
RETRY_MAX_S = 30.0
#: Lines read from the input file per trip to a worker thread.
READ_CHUNK_LINES = 256
#: While interactive requests are about, how often a batch waiting to start its next line looks again.
INTERACTIVE_POLL_S = 0.02
#: While interactive requests are about, batches trickle: one line at a time, at most one start this often.
TRICKLE_INTERVAL_S = 1.0
#: How often a running batch looks whether it was cancelled.
CANCEL_POLL_S = 0.5
#: On shutdown, how long lines in flight may take to finish and be recorded before they are cut off
#: (a cut-off line is not lost: it runs again at the next start, and is charged once).
STOP_GRACE_S = 30.0


class BatchRunner:
    def __init__(self, store: BatchStore, files: FileStore, lines: LineRunner, *, concurrency: int,
                 liveness: recovery.InstanceLock | None = None) -> None:
        """``liveness``: the accounts gate's lock when accounts are on (else the runner takes one of its own),
        so that a dead runner is a dead gateway, whose charges in flight are recovered before its lines run."""
        self.store = store
        self.files = files
        self.lines = lines
        self._slots = asyncio.Semaphore(concurrency)
        self._wake = asyncio.Event()
        self._closing = False
        self._task: asyncio.Task | None = None
        self._lock = liveness
        self._own_lock = liveness is None
        self._lines_in_flight = 0
        self._last_line_at = float("-inf")

    async def start(self) -> None:
        if self._lock is None:
            self._lock = await run_in_threadpool(recovery.instance_lock, self.store.engine)
        self._closing = False
        self._task = asyncio.create_task(self._loop(), name="batch-runner")

    def wake(self) -> None:
        """A batch was created or cancelled: look now."""
        self._wake.set()

    async def stop(self) -> None:
        """Take no new lines; those in flight finish and are recorded (within STOP_GRACE_S); let the batches go."""
        self._closing = True
        self._wake.set()
        if self._task is not None:
            try:
                await asyncio.wait_for(asyncio.shield(self._task), timeout=STOP_GRACE_S)
            except TimeoutError:
                self._task.cancel()
                await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
        if self._lock is not None:
            await run_in_threadpool(self.store.release, self._lock.owner)
            if self._own_lock:
                await run_in_threadpool(self._lock.close)
                self._lock = None

    # -- the loop ----------------------------------------------------------------------------

    async def _loop(self) -> None:
        running: dict[str, asyncio.Task] = {}
        try:
            await self._until_models_settle()
            while not self._closing:
                self._wake.clear()
                batch = await self._claim(exclude=set(running))
                if batch is not None:
                    task = asyncio.create_task(self._run_batch(batch), name=f"batch-{batch['id']}")
                    running[batch["id"]] = task
                    task.add_done_callback(lambda _, bid=batch["id"]: (running.pop(bid, None), self._wake.set()))
                    continue
                try:
                    await asyncio.wait_for(self._wake.wait(), timeout=IDLE_POLL_S)
                except TimeoutError:
                    pass
        finally:
            if running:   # closing: each batch stops taking lines and waits for its own
                await asyncio.gather(*running.values(), return_exceptions=True)

    async def _claim(self, *, exclude: set[str]) -> dict[str, Any] | None:
        try:
            return await self._db(self.store.claim, self._lock.owner, self._is_dead, exclude=exclude)
        except Exception:
            log.exception("the batch runner could not look for work")
            return None

    def _is_dead(self, owner: int) -> bool:
        """Another process's batch may be taken over once its liveness lock can be taken (it died). What it
        left in flight is recovered first (as accounts recovery would, later): a line it was charging for is
        then either charged (its answer stored, replayed here) or refunded (run here), never waited on."""
        assert self._lock is not None
        if not self._lock.probe(owner):
            return False
        try:
            recovery.recover_owner(self.store.engine, owner)
        finally:
            self._lock.release(owner)
        return True

    async def _until_models_settle(self) -> None:
        """Lines wait until every local model has loaded (or failed) and every route was probed once."""
        router = self.lines.router
        while not self._closing and not (all(d.state in ("ready", "failed") for d in router.deployments)
                                         and all(r.probed for r in router.routes)):
            await asyncio.sleep(0.1)

    async def _db(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        return await run_in_threadpool(partial(fn, *args, **kwargs))

    # -- one batch ---------------------------------------------------------------------------

    async def _run_batch(self, batch: dict[str, Any]) -> None:
        batch_id = batch["id"]
        try:
            await self._db(self.store.start, batch_id)
            if batch["status"] in ("validating", "in_progress"):
                await self._run_lines(batch)
            if not self._closing:
                await self._finalize(batch)
        except FileNotFoundError as exc:
            # Its input (or spool) is gone from the files directory: nothing to resume from.
            log.error("batch %s failed: %s", batch_id, exc)
            await self._db(self.store.fail, batch_id, code="file_missing",
                           message=f"a file of this batch is gone from the server's files directory: {exc.filename}")
        except Exception:
            # Left to the next look (this process or another), which resumes it where its rows say.
            log.exception("batch %s stopped on an error; it will be resumed", batch_id)
            await asyncio.sleep(IDLE_POLL_S)

    async def _read(self, name: str) -> AsyncIterator[tuple[int, bytes]]:
        """The input's lines, a chunk at a time off the event loop (a file may hold 200 MB)."""
        lines = self.files.lines(name)
        try:
            while chunk := await self._db(lambda: list(itertools.islice(lines, READ_CHUNK_LINES))):
                for item in chunk:
                    yield item
        finally:
            lines.close()

    async def _run_lines(self, batch: dict[str, Any]) -> None:
        batch_id = batch["id"]
        done = await self._db(self.store.finished_lines, batch_id)
        name = await self._db(self.store.input_path, batch["input_file_id"])
        principal = Principal(account_id=batch["account_id"], key_id=batch["key_id"], scopes=frozenset({"embed"}))
        seen: set[str] = set()
        in_flight: set[asyncio.Task] = set()
        looked = 0.0
        try:
            async for index, raw in self._read(name):
                if self._closing:
                    break
                outcome = None
                try:   # custom_ids are collected from finished lines too: a duplicate stays one after a restart
                    request = parse_line(index, raw, endpoint=batch["endpoint"])
                    if request.custom_id in seen:
                        outcome = Outcome(ok=False, output=error_line(
                            request.custom_id, "duplicate_custom_id",
                            f"line {index + 1}: custom_id {request.custom_id!r} was used by an earlier line"))
                    seen.add(request.custom_id)
                except LineError as exc:
                    outcome = Outcome(ok=False, output=error_line(custom_id_of(raw), exc.code, exc.message))
                if index in done:
                    continue
                if outcome is not None:
                    await self._record(batch, index, outcome)
                    continue
                waited = await self._yield_to_interactive()
                waited = self._slots.locked() or waited
                await self._slots.acquire()
                # Looked at after the wait for a slot (which may be long): a cancel stops the next line.
                if waited or time.monotonic() - looked > CANCEL_POLL_S:
                    looked = time.monotonic()
                    if self._closing or await self._stopping(batch):
                        self._slots.release()
                        break
                self._lines_in_flight += 1
                self._last_line_at = time.monotonic()
                task = asyncio.create_task(self._run_line(batch, request, principal))
                in_flight.add(task)
                task.add_done_callback(in_flight.discard)
        finally:
            # Lines in flight finish and are recorded, whether the batch ends, is cancelled or the server stops.
            await asyncio.gather(*in_flight, return_exceptions=True)

    async def _stopping(self, batch: dict[str, Any]) -> bool:
        status = await self._db(self.store.status, batch["id"])
        return status == "cancelling" or utcnow() >= batch["expires_at"]

    async def _run_line(self, batch: dict[str, Any], request: LineRequest, principal: Principal) -> None:
        try:
            outcome = await self._attempts(batch, request, principal)
            await self._record(batch, request.index, outcome, claim=principal)
        except Exception:
            log.exception("batch %s line %d could not run; it runs again when the batch resumes",
                          batch["id"], request.index)
        finally:
            self._lines_in_flight -= 1
            self._slots.release()

    async def _yield_to_interactive(self) -> bool:
        """While interactive requests are about (one arrived within the scheduler's interactive window),
        batches all but stop: a line starts only when none is running and none started for
        ``TRICKLE_INTERVAL_S``, so queries find the device free nearly always, and a batch still moves
        under a steady stream of them. True if it waited."""
        waited = False
        while self._interactive_recently() and (
                self._lines_in_flight >= 1 or time.monotonic() - self._last_line_at < TRICKLE_INTERVAL_S):
            waited = True
            await asyncio.sleep(INTERACTIVE_POLL_S)
        return waited

    def _interactive_recently(self) -> bool:
        return any(d.scheduler is not None and d.scheduler.interactive_recently
                   for d in self.lines.router.deployments)

    async def _attempts(self, batch: dict[str, Any], request: LineRequest, principal: Principal) -> Outcome:
        wait = 1.0
        for attempt in range(1, ATTEMPTS + 1):
            try:
                return await self.lines.run(request, batch_id=batch["id"], principal=principal,
                                            charged=partial(self.store.charged, principal.account_id))
            except GigarouterError as exc:   # only retryable ones reach here (429, 5xx)
                if attempt == ATTEMPTS or self._closing or utcnow() >= batch["expires_at"]:
                    if self._closing:
                        raise                # not the line's fault: it runs again at the next start
                    return Outcome(ok=False, output=response_line(
                        request.custom_id, status=exc.status, request_id=line_request_id(batch["id"], request.index),
                        body=orjson.dumps(exc.body())))
                wait = min(max(wait, float(getattr(exc, "retry_after", wait))), RETRY_MAX_S)
                log.info("batch %s line %d: %s; trying again in %.0f s", batch["id"], request.index, exc.message, wait)
                await asyncio.sleep(wait)
                wait *= 2
        raise AssertionError("unreachable")

    async def _record(self, batch: dict[str, Any], index: int, outcome: Outcome,
                      claim: Principal | None = None) -> None:
        offset = await self._db(self.files.append, f"{batch['id']}.spool", outcome.output)
        record = LineRecord(line=index, ok=outcome.ok, tokens=outcome.tokens, cost_micro=outcome.cost_micro,
                            spool_offset=offset, spool_length=len(outcome.output))
        key = (claim.account_id, line_request_id(batch["id"], index)) if claim and claim.account_id else None
        await self._db(self.store.record_line, batch["id"], record, claim=key)

    # -- the end -----------------------------------------------------------------------------

    async def _finalize(self, batch: dict[str, Any]) -> None:
        batch_id = batch["id"]
        status = await self._db(self.store.status, batch_id)
        finished = await self._db(self.store.finished_lines, batch_id)
        if status == "cancelling":
            final = "cancelled"
        elif len(finished) >= batch["total"]:
            final = "completed"
        elif utcnow() >= batch["expires_at"]:
            final = "expired"
            await self._expire_rest(batch, finished)
        else:
            return   # lines left to run (one failed to record): the next look resumes the batch
        await self._db(self.store.mark_finalizing, batch_id)
        spool = f"{batch_id}.spool"
        files, ids = [], {}
        for kind, ok in (("output", True), ("error", False)):
            segments = await self._db(self.store.segments, batch_id, ok=ok)
            ids[kind] = None
            if segments:
                file_id, name = new_file_id(), f"{batch_id}-{kind}.jsonl"
                size = await self._db(self.files.write, name, self.files.read_spool(spool, segments))
                files.append(dict(id=file_id, account_id=batch["account_id"], purpose="batch_output",
                                  filename=f"{batch_id}_{kind}.jsonl", bytes=size, lines=len(segments), path=name))
                ids[kind] = file_id
        await self._db(self.store.finish, batch_id, status=final, files=files, output_file_id=ids["output"],
                       error_file_id=ids["error"])
        await self._db(self.files.remove, spool)
        log.info("batch %s %s", batch_id, final)

    async def _expire_rest(self, batch: dict[str, Any], finished: set[int]) -> None:
        """Past its completion window, each line not run goes to the error file as expired (OpenAI does too)."""
        name = await self._db(self.store.input_path, batch["input_file_id"])
        async for index, raw in self._read(name):
            if index not in finished:
                await self._record(batch, index, Outcome(ok=False, output=error_line(
                    custom_id_of(raw), "batch_expired", "this request could not run before the batch expired")))
