"""The loop that owns a model's queue: admit, batch, run on the device thread, answer.

Requests become ``Job``s of one or more sequences. Each job waits in one of
two lanes: *interactive* (small requests, typically queries) and *bulk*. The
loop takes the next batch with the pure packing rule, alternating lanes when
both have work so neither can starve the other, runs it on a single device
thread (the event loop never blocks on the model), and scatters the vectors
back. An engine that can run several batches at once (``parallel_batches``,
one per CPU core) gets that many while the queue holds work for more than
one, each planned with its share of the token budget (so memory and a
waiting query's delay stay those of one full batch); a batch with nothing
running and nothing queued behind it has the whole device and budget.
A third lane, *background* (batch jobs), runs only when the other two are
empty, in batches cut to what the device runs in ``latency_target_s``; while
interactive requests are about it all but stops (one such batch at most every
``background_interval_s``, with nothing else running), so a query finds the
device free. Its tokens have a bound of their own and never make the other
lanes refuse work.
Sequences whose client has gone (or whose deadline passed) are dropped before
compute. Admission is bounded by predicted wait (``scheduler/admission.py``): a
request whose work would end later than ``max_queue_wait_s`` from now, at the
queue's measured drain rate, gets ``QueueFull`` (HTTP 429 with Retry-After) at
once; ``max_queued_tokens`` stays as a memory bound behind it.
A watchdog marks the device hung when a batch runs far past its predicted time
(``watchdog_limit_s``): queued work then fails with ``DeviceHung`` (503 with
Retry-After), new work is refused the same way, and the first batch that comes
back ends it.
A batch the device runs out of memory on is tried again in halves, down to
single sequences; only a sequence that does not fit alone fails, and only
its own job, with ``EngineOutOfMemory`` (HTTP 503 with Retry-After).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import partial

import numpy as np

from gigarouter.engine.base import Engine, pack
from gigarouter.errors import DeviceHung, EngineOutOfMemory, GigarouterError, NotReady, QueueFull
from gigarouter.metrics import Metrics
from gigarouter.recipes.base import PreparedInput
from gigarouter.scheduler.admission import DrainRate, RetryPacer, predicted_wait_s, retry_after_s, watchdog_limit_s
from gigarouter.scheduler.batching import batch_cost, plan_batch

log = logging.getLogger(__name__)


@dataclass(eq=False)
class Job:
    """One request's sequences and where their vectors go."""

    items: list[PreparedInput]
    interactive: bool
    future: asyncio.Future
    vectors: np.ndarray | None = None
    remaining: int = 0
    cancelled: bool = False
    submitted_at: float = field(default_factory=time.perf_counter)
    started_at: float | None = None       # first batch holding one of its sequences began
    busy_seconds: float = 0.0              # summed run time of the batches it rode in
    finished_at: float | None = None       # last of those batches ended

    @property
    def num_tokens(self) -> int:
        return sum(len(item.token_ids) for item in self.items)

    @property
    def infer_seconds(self) -> float:
        """Device time spent on it: its batches' run time, counting overlapping batches once."""
        if self.started_at is None or self.finished_at is None:
            return self.busy_seconds
        return min(self.busy_seconds, self.finished_at - self.started_at)

    @property
    def queue_seconds(self) -> float:
        return (self.started_at or self.submitted_at) - self.submitted_at


@dataclass(eq=False)
class _Slot:
    job: Job
    index: int

    @property
    def length(self) -> int:
        return len(self.job.items[self.index].token_ids)


@dataclass(eq=False)
class _Running:
    """A batch on the device, as the watchdog sees it."""

    slots: list[_Slot]
    tokens: int
    started: float
    limit_s: float          # past this it counts as hung

    def overdue(self, now: float) -> bool:
        return now - self.started > self.limit_s


class Scheduler:
    def __init__(self, engine: Engine, *, model: str, token_budget: int, max_queued_tokens: int,
                 metrics: Metrics | None = None, window: int = 512, latency_target_s: float = 0.05,
                 interactive_window_s: float = 1.0, background_interval_s: float = 1.0,
                 max_queue_wait_s: float | None = None, watchdog_floor_s: float = 10.0) -> None:
        self.engine = engine
        self.model = model
        self.token_budget = token_budget
        self.max_queued_tokens = max_queued_tokens
        # None: no bound by time (only max_queued_tokens).
        self.max_queue_wait_s = max_queue_wait_s
        self.watchdog_floor_s = watchdog_floor_s
        self.metrics = metrics
        self.window = window
        # While interactive requests are about, a bulk batch is cut to what the device
        # finishes in ``latency_target_s``, so a query never waits behind a long batch.
        self.latency_target_s = latency_target_s
        self.interactive_window_s = interactive_window_s
        self._last_interactive_at = float("-inf")
        self._lanes: dict[bool, deque[_Slot]] = {True: deque(), False: deque()}
        self._queued_tokens = 0
        self._background: deque[_Slot] = deque()
        self._background_tokens = 0
        self.background_interval_s = background_interval_s
        self._last_background_at = float("-inf")
        self._wake = asyncio.Event()
        self._accepting = False
        self._task: asyncio.Task | None = None
        self.parallel_batches = max(1, engine.parallel_batches)
        self._device = ThreadPoolExecutor(max_workers=self.parallel_batches, thread_name_prefix=f"device-{model}",
                                          initializer=getattr(engine, "device_thread_started", None))
        self._in_flight: dict[asyncio.Task, _Running] = {}
        self._in_flight_tokens = 0
        self.drain = DrainRate()
        self.pacer = RetryPacer()
        self._hung: str | None = None            # why the watchdog thinks the device hangs
        self._watchdog: asyncio.Task | None = None
        self._alone_in_flight = False       # a batch that was given the whole device is running
        self._last_lane_interactive = False
        # Moving averages of one batch's tokens/s, apart for a batch that had the device
        # alone and one that shared it: for the latency target and Retry-After.
        self._rate: dict[bool, float] = {False: 0.0, True: 0.0}

    # -- lifecycle -------------------------------------------------------------------------

    def start(self) -> None:
        self._accepting = True
        loop = asyncio.get_running_loop()
        self._task = loop.create_task(self._run(), name=f"scheduler-{self.model}")
        self._watchdog = loop.create_task(self._watch(), name=f"watchdog-{self.model}")

    async def stop(self) -> None:
        """Refuse new work, finish everything already admitted (not what a hung device holds), then stop."""
        self._accepting = False
        self._wake.set()
        if self._task is not None:
            await self._task
        if self._watchdog is not None:
            self._watchdog.cancel()
        self._device.shutdown(wait=self._hung is None)

    def seed_rate(self, tokens_per_s: float) -> None:
        """The drain rate measured at warm-up, so admission by wait works from the first request."""
        self.drain.seed(tokens_per_s)

    @property
    def queued_tokens(self) -> int:
        return self._queued_tokens

    @property
    def interactive_recently(self) -> bool:
        """An interactive request arrived within ``interactive_window_s`` (batch jobs hold back then)."""
        return time.monotonic() - self._last_interactive_at < self.interactive_window_s

    @property
    def hung(self) -> str | None:
        """Why the watchdog thinks the device hangs, or None."""
        return self._hung

    def _ahead_tokens(self) -> float:
        """Work ahead of a new request: the queue, and about half of what is on the device."""
        return self._queued_tokens + self._in_flight_tokens / 2

    def predicted_wait_s(self, extra_tokens: int = 0) -> float:
        """Seconds until the work queued now (plus ``extra_tokens``) is done, at the measured drain rate."""
        return predicted_wait_s(self._ahead_tokens() + extra_tokens, self.drain.tokens_per_s)

    # -- admission --------------------------------------------------------------------------

    def admission_error(self, tokens: int, *, max_wait_s: float | None = None) -> GigarouterError | None:
        """Why a request of ``tokens`` would be refused now (counted in the metrics), or None. Cheap (no
        lock, no scan): the API asks it with an estimate before authenticating or tokenizing, and
        ``submit`` with the exact count.

        ``max_wait_s`` (the request's remaining deadline) tightens ``max_queue_wait_s`` for one request.
        """
        if not self._accepting:
            return NotReady(f"model {self.model!r} is shutting down", code="shutting_down", retry_after=2.0)
        if self._hung is not None:
            return DeviceHung(f"model {self.model!r}: {self._hung}", retry_after=self.watchdog_floor_s)
        if not self._queued_tokens:   # an empty queue takes any request, or a big one could never run
            return None
        ahead = self._ahead_tokens() + tokens
        rate = self.drain.tokens_per_s
        if self._queued_tokens + tokens > self.max_queued_tokens:
            return self._refused(f"model {self.model!r} is at capacity ({self.max_queued_tokens} queued tokens); "
                             "retry shortly", retry_after=retry_after_s(ahead, rate, 0.0))
        limit = self.max_queue_wait_s
        if max_wait_s is not None:
            limit = max_wait_s if limit is None else min(limit, max_wait_s)
        if limit is not None and predicted_wait_s(ahead, rate) > limit:
            return self._refused(f"model {self.model!r} is at capacity: this request would wait about "
                             f"{predicted_wait_s(ahead, rate):.1f} s, over the limit of {limit:.1f} s; "
                             "retry after the Retry-After seconds", retry_after=retry_after_s(ahead, rate, limit))
        return None

    def _refused(self, message: str, *, retry_after: float) -> QueueFull:
        if self.metrics:
            self.metrics.rejected.labels(self.model).inc()
        # Under a flood, later than the queue alone would say: see RetryPacer.
        return QueueFull(message, retry_after=max(retry_after, self.pacer.refused()))

    async def submit(self, items: list[PreparedInput], *, interactive: bool, background: bool = False,
                     max_wait_s: float | None = None) -> Job:
        """Admit a job and return it; await ``job.future`` for ``[n, dim]`` float32 vectors.

        ``background``: a batch job's work, run only when nothing else waits (see the module); it is
        bounded by its own queued tokens, not by the predicted wait of the other lanes.
        """
        job = Job(items=items, interactive=interactive and not background,
                  future=asyncio.get_running_loop().create_future(), remaining=len(items))
        tokens = job.num_tokens
        if background:
            if not self._accepting:
                raise NotReady(f"model {self.model!r} is shutting down", code="shutting_down", retry_after=2.0)
            if self._hung is not None:
                raise DeviceHung(f"model {self.model!r}: {self._hung}", retry_after=self.watchdog_floor_s)
            if self._background_tokens and self._background_tokens + tokens > self.max_queued_tokens:
                raise QueueFull(f"model {self.model!r} has all the background work it can hold; retry shortly",
                                retry_after=retry_after_s(self._background_tokens + tokens,
                                                          self.drain.tokens_per_s, 0.0))
            self._background.extend(_Slot(job, i) for i in range(len(items)))
            self._background_tokens += tokens
            self._wake.set()
            return job
        refusal = self.admission_error(tokens, max_wait_s=max_wait_s)
        if refusal is not None:
            raise refusal
        self.pacer.admitted()
        if interactive:
            self._last_interactive_at = time.monotonic()
        lane = self._lanes[interactive]
        lane.extend(_Slot(job, i) for i in range(len(items)))
        self._queued_tokens += tokens
        self._report_queue()
        self._wake.set()
        return job

    def cancel(self, job: Job) -> None:
        """The client left or its deadline passed: its sequences leave the queue now (the predicted
        wait of everyone behind drops at once), and what is on the device is not delivered."""
        if not job.future.done():
            job.cancelled = True
            job.future.cancel()
            self._drop_cancelled()
            self._report_queue()

    # -- the loop ---------------------------------------------------------------------------

    async def _run(self) -> None:
        while True:
            # Clear before looking, so a submit that lands while we dispatch is not missed.
            self._wake.clear()
            while self._device_free() and (planned := self._next_batch()):
                self._dispatch(*planned)
            # Stopping: finish what was admitted, except what a hung device holds (already failed).
            if not self._accepting and not any(self._lanes.values()) and not self._background \
                    and (not self._in_flight or self._hung):
                return
            waits = [asyncio.ensure_future(self._wake.wait()), *self._in_flight]
            # Background work held back for queries is looked at again after a while, not only on news.
            await asyncio.wait(waits, timeout=0.05 if self._background else None,
                               return_when=asyncio.FIRST_COMPLETED)
            waits[0].cancel()

    def _device_free(self) -> bool:
        return (not self._alone_in_flight and len(self._in_flight) < self.parallel_batches
                and self._hung is None)

    def _dispatch(self, slots: list[_Slot], concurrent: bool) -> None:
        self._alone_in_flight = not concurrent
        tokens = sum(s.length for s in slots)
        # A shared batch runs at about its share of the drain rate.
        share = self.drain.tokens_per_s / (self.parallel_batches if concurrent else 1)
        running = _Running(slots, tokens, started=time.perf_counter(),
                           limit_s=watchdog_limit_s(predicted_wait_s(tokens, share), floor_s=self.watchdog_floor_s))
        task = asyncio.get_running_loop().create_task(self._execute(slots, concurrent=concurrent))
        self._in_flight[task] = running
        self._in_flight_tokens += tokens
        self.drain.batch_started()
        task.add_done_callback(self._batch_done)

    def _batch_done(self, task: asyncio.Task) -> None:
        if not task.cancelled() and task.exception() is not None:   # a bug here, not a device error
            log.error("batch for model %s failed", self.model, exc_info=task.exception())
        running = self._in_flight.pop(task)
        self._in_flight_tokens -= running.tokens
        # A batch the watchdog flagged says nothing about the normal rate: its time is not a sample.
        self.drain.batch_finished(running.tokens, discard=running.overdue(time.perf_counter()))
        if not self._in_flight:
            self._alone_in_flight = False
        if self._hung is not None and not self._overdue():
            log.warning("model %s: the device answered again; accepting work", self.model)
            self._hung = None
        self._wake.set()

    # -- the watchdog -----------------------------------------------------------------------

    async def _watch(self) -> None:
        every = min(1.0, self.watchdog_floor_s / 4)
        while True:
            await asyncio.sleep(every)
            overdue = self._overdue()
            if overdue is not None and self._hung is None:
                self._declare_hung(overdue)

    def _overdue(self) -> _Running | None:
        now = time.perf_counter()
        return next((r for r in self._in_flight.values() if r.overdue(now)), None)

    def _declare_hung(self, batch: _Running) -> None:
        """Fail everything waiting on the device (queued, and the stuck batch's own jobs) with 503."""
        self._hung = (f"the device has not finished a batch of {batch.tokens} tokens in "
                      f"{time.perf_counter() - batch.started:.0f} s (limit {batch.limit_s:.0f} s)")
        log.error("model %s: %s; failing queued work until it answers", self.model, self._hung)
        error = DeviceHung(f"model {self.model!r}: {self._hung}", retry_after=self.watchdog_floor_s)
        slots = [s for lane in self._lanes.values() for s in lane] + list(self._background)
        slots += [s for r in self._in_flight.values() for s in r.slots]
        for job in {id(s.job): s.job for s in slots}.values():
            if not job.future.done():
                job.future.set_exception(error)
        for lane in self._lanes.values():
            lane.clear()
        self._background.clear()
        self._queued_tokens = self._background_tokens = 0
        self._report_queue()

    def _next_batch(self) -> tuple[list[_Slot], bool] | None:
        """The next batch and whether it shares the device (None: nothing waits)."""
        self._drop_cancelled()
        interactive, bulk = self._lanes[True], self._lanes[False]
        if not interactive and not bulk:
            return self._next_background()
        # Alternate when both lanes wait, so neither starves the other.
        use_interactive = bool(interactive) and (not bulk or not self._last_lane_interactive)
        lane = interactive if use_interactive else bulk
        self._last_lane_interactive = use_interactive
        window = [lane[i] for i in range(min(self.window, len(lane)))]
        lengths = [s.length for s in window]
        # Share the device only when there is something to share it with: a batch that
        # starts with nothing running and everything queued inside it gets every core.
        alone = (self.parallel_batches == 1 or not self._in_flight and len(lane) == len(window)
                 and not self._lanes[not use_interactive]
                 and (len(window) == 1 or batch_cost(lengths) <= self.token_budget))
        budget = self.token_budget if alone else max(1, self.token_budget // self.parallel_batches)
        if not use_interactive:
            budget = min(budget, self._bulk_budget(concurrent=not alone))
        slots = _take(lane, window, plan_batch(lengths, token_budget=budget, window=self.window))
        self._queued_tokens -= sum(s.length for s in slots)
        self._report_queue()
        return slots, not alone

    def _next_background(self) -> tuple[list[_Slot], bool] | None:
        """A background batch when the other lanes are empty: cut to the latency target, and while queries
        are about only with nothing else running and at most one per ``background_interval_s``."""
        if not self._background:
            return None
        if self.interactive_recently and (self._in_flight or
                                          time.monotonic() - self._last_background_at < self.background_interval_s):
            return None
        lane = self._background
        window = [lane[i] for i in range(min(self.window, len(lane)))]
        rate = self._rate[False] or self._rate[True] * self.parallel_batches
        budget = max(1, int(rate * self.latency_target_s)) if rate else self.token_budget
        alone = not self._in_flight
        if not alone:
            budget = max(1, min(budget, self.token_budget // self.parallel_batches))
        slots = _take(lane, window, plan_batch([s.length for s in window], token_budget=min(budget, self.token_budget),
                                               window=self.window))
        self._background_tokens -= sum(s.length for s in slots)
        self._last_background_at = time.monotonic()
        return slots, not alone

    def _bulk_budget(self, *, concurrent: bool) -> int:
        """No limit, or, while queries are about, what one batch runs in the latency target."""
        recent = time.monotonic() - self._last_interactive_at < self.interactive_window_s
        if not (self._lanes[True] or recent):
            return self.token_budget
        # A shared batch runs at about 1/parallel_batches of a lone one's rate, and back.
        rate = self._rate[concurrent] or (self._rate[False] / self.parallel_batches if concurrent
                                          else self._rate[True] * self.parallel_batches)
        if not rate:
            return self.token_budget
        return max(1, int(rate * self.latency_target_s))

    def _drop_cancelled(self) -> None:
        if any(s.job.cancelled for s in self._background):
            self._background_tokens -= sum(s.length for s in self._background if s.job.cancelled)
            kept = [s for s in self._background if not s.job.cancelled]
            self._background.clear()
            self._background.extend(kept)
        for lane in self._lanes.values():
            if any(s.job.cancelled for s in lane):
                kept = [s for s in lane if not s.job.cancelled]
                dropped = len(lane) - len(kept)
                self._queued_tokens -= sum(s.length for s in lane if s.job.cancelled)
                lane.clear()
                lane.extend(kept)
                if self.metrics and dropped:
                    self.metrics.dropped.labels(self.model).inc(dropped)

    async def _execute(self, slots: list[_Slot], *, concurrent: bool) -> None:
        started = time.perf_counter()
        for s in slots:
            if s.job.started_at is None:
                s.job.started_at = started
        try:
            await self._embed_and_deliver(slots, concurrent=concurrent)
        except BaseException as exc:  # the batch failed: every job in it fails with it, none hangs
            for s in slots:
                if not s.job.future.done():
                    s.job.future.set_exception(exc if isinstance(exc, Exception) else NotReady(
                        f"model {self.model!r} stopped while this request was running", code="shutting_down"))
            if not isinstance(exc, Exception):
                raise

    async def _embed_and_deliver(self, slots: list[_Slot], *, concurrent: bool) -> None:
        """Run one forward pass over ``slots`` and hand each its vector.

        On device out-of-memory, try each half in turn (still inside this batch's task,
        so nothing else takes the device meanwhile): the other jobs keep their vectors
        and only a sequence too big to run alone fails, and only its own job.
        """
        loop = asyncio.get_running_loop()
        started = time.perf_counter()
        batch = pack([s.job.items[s.index].token_ids for s in slots],
                     [s.job.items[s.index].pool_start for s in slots])
        try:
            vectors = await loop.run_in_executor(self._device, partial(self.engine.embed, batch,
                                                                       concurrent=concurrent))
        except EngineOutOfMemory:
            if self.metrics:
                self.metrics.out_of_memory.labels(self.model).inc()
            if len(slots) == 1:
                if not slots[0].job.future.done():      # its client may have gone meanwhile
                    slots[0].job.future.set_exception(EngineOutOfMemory(
                        f"model {self.model!r} ran out of device memory on a sequence of {batch.num_tokens} "
                        "tokens; retry later or send shorter input", retry_after=max(1.0, self.predicted_wait_s())))
                return
            log.warning("model %s: out of device memory on %d sequences (%d tokens); trying halves",
                        self.model, len(slots), batch.num_tokens)
            half = len(slots) // 2
            for part in (slots[:half], slots[half:]):
                # A job failed by the first half (or cancelled meanwhile) needs nothing more.
                part = [s for s in part if not s.job.future.done()]
                if part:
                    await self._embed_and_deliver(part, concurrent=concurrent)
            return
        finished = time.perf_counter()
        self._observe_batch(batch.num_tokens, len(slots), finished - started, concurrent=concurrent)
        for job in {id(s.job): s.job for s in slots}.values():
            job.busy_seconds += finished - started
            job.finished_at = finished
        for row, s in enumerate(slots):
            self._deliver(s, vectors[row])

    @staticmethod
    def _deliver(slot: _Slot, vector: np.ndarray) -> None:
        job = slot.job
        if job.future.done():
            return
        if job.vectors is None:
            job.vectors = np.empty((len(job.items), vector.shape[0]), dtype=np.float32)
        job.vectors[slot.index] = vector
        job.remaining -= 1
        if job.remaining == 0:
            job.future.set_result(job.vectors)

    def _observe_batch(self, tokens: int, sequences: int, elapsed: float, *, concurrent: bool) -> None:
        rate = tokens / max(elapsed, 1e-6)
        old = self._rate[concurrent]
        self._rate[concurrent] = rate if not old else 0.8 * old + 0.2 * rate
        if self.metrics:
            self.metrics.batch_tokens.labels(self.model).observe(tokens)
            self.metrics.batch_sequences.labels(self.model).observe(sequences)

    def _report_queue(self) -> None:
        if self.metrics:
            self.metrics.queue_tokens.labels(self.model).set(self._queued_tokens)
            self.metrics.queue_sequences.labels(self.model).set(sum(len(lane) for lane in self._lanes.values()))


def _take(lane: deque[_Slot], window: list[_Slot], chosen: list[int]) -> list[_Slot]:
    """Remove the ``chosen`` slots of ``window`` (the head of ``lane``) from the lane, the rest keeping
    their places at its head, and return them."""
    picked = set(chosen)
    rest = [s for i, s in enumerate(window) if i not in picked]
    for _ in range(len(window)):
        lane.popleft()
    lane.extendleft(reversed(rest))
    return [window[i] for i in chosen]
