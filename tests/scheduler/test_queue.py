"""The scheduler loop: budgets, lanes, cancellation, bounded queue, graceful drain."""

from __future__ import annotations

import asyncio
import threading
import time

import numpy as np
import pytest

from gigarouter.errors import EngineOutOfMemory, NotReady, QueueFull
from gigarouter.metrics import Metrics
from gigarouter.recipes.base import PreparedInput
from gigarouter.scheduler.queue import Scheduler
from tests.conftest import FakeEngine


def items(*lengths: int) -> list[PreparedInput]:
    return [PreparedInput(token_ids=list(range(1, n + 1)), pool_start=0) for n in lengths]


def run(coro):
    return asyncio.run(coro)


def embed_one_job(engine, lengths, *, token_budget: int):
    """Start a scheduler, embed one bulk job of these lengths, drain; the finished job."""
    async def main():
        sched = Scheduler(engine, model="m", token_budget=token_budget, max_queued_tokens=10_000)
        sched.start()
        job = await sched.submit(items(*lengths), interactive=False)
        await job.future
        await sched.stop()
        return job

    return run(main())


def test_batches_respect_the_token_budget_and_results_keep_order():
    engine = FakeEngine(token_budget=64)
    vectors = embed_one_job(engine, [16] * 10, token_budget=64).future.result()
    assert vectors.shape == (10, 8)
    assert all(b.num_sequences * int(b.lengths.max()) <= 64 for b in engine.batches)
    alone = FakeEngine().embed(__import__("gigarouter.engine.base", fromlist=["pack"]).pack([list(range(1, 17))]))
    np.testing.assert_array_equal(vectors[3], alone[0])


def test_full_queue_refuses_with_retry_after():
    async def main():
        gate = threading.Event()
        sched = Scheduler(FakeEngine(gate=gate), model="m", token_budget=100, max_queued_tokens=100)
        sched.start()
        first = await sched.submit(items(50), interactive=False)     # taken by the device, blocks
        await asyncio.sleep(0.05)
        second = await sched.submit(items(60, 40), interactive=False)  # waits: queue holds 100
        with pytest.raises(QueueFull) as err:
            await sched.submit(items(10), interactive=False)
        gate.set()
        await asyncio.gather(first.future, second.future)
        await sched.stop()
        return err.value

    err = run(main())
    assert err.status == 429 and int(err.headers["Retry-After"]) >= 1


def test_cancelled_jobs_are_dropped_before_compute():
    async def main():
        gate = threading.Event()
        engine = FakeEngine(gate=gate)
        sched = Scheduler(engine, model="m", token_budget=100, max_queued_tokens=10_000)
        sched.start()
        blocker = await sched.submit(items(10), interactive=False)
        await asyncio.sleep(0.05)
        doomed = await sched.submit(items(7, 7, 7), interactive=False)
        sched.cancel(doomed)
        kept = await sched.submit(items(9), interactive=False)
        gate.set()
        await asyncio.gather(blocker.future, kept.future)
        await sched.stop()
        return engine, sched

    engine, sched = run(main())
    assert all(7 not in b.lengths for b in engine.batches)
    assert sched.queued_tokens == 0


def test_lanes_alternate_so_bulk_cannot_starve_queries():
    async def main():
        gate = threading.Event()
        engine = FakeEngine(gate=gate)
        sched = Scheduler(engine, model="m", token_budget=32, max_queued_tokens=100_000)
        sched.start()
        blocker = await sched.submit(items(32), interactive=False)
        await asyncio.sleep(0.05)
        bulk = await sched.submit(items(*([32] * 6)), interactive=False)
        query = await sched.submit(items(4), interactive=True)
        gate.set()
        await asyncio.gather(blocker.future, bulk.future, query.future)
        await sched.stop()
        return engine

    engine = run(main())
    order = [int(b.lengths.max()) for b in engine.batches]
    # the query runs right after the batch in flight, not after six bulk batches
    assert order.index(4) == 1


def test_stop_finishes_admitted_work_and_refuses_new():
    async def main():
        sched = Scheduler(FakeEngine(), model="m", token_budget=64, max_queued_tokens=10_000)
        sched.start()
        job = await sched.submit(items(*([30] * 8)), interactive=False)
        await sched.stop()
        assert job.future.done() and job.future.result().shape == (8, 8)
        with pytest.raises(NotReady):
            await sched.submit(items(3), interactive=False)

    run(main())


def test_engine_failure_fails_the_jobs_in_that_batch_only():
    class Exploding(FakeEngine):
        def embed(self, batch, *, concurrent=False):
            if 13 in batch.lengths:
                raise RuntimeError("device fell over")
            return super().embed(batch, concurrent=concurrent)

    async def main():
        sched = Scheduler(Exploding(), model="m", token_budget=13, max_queued_tokens=10_000)
        sched.start()
        bad = await sched.submit(items(13), interactive=False)
        good = await sched.submit(items(5), interactive=False)
        with pytest.raises(RuntimeError):
            await bad.future
        assert (await good.future).shape == (1, 8)
        await sched.stop()

    run(main())


def test_bulk_batches_shrink_to_the_latency_target_while_queries_are_about():
    class Paced(FakeEngine):          # about 2000 tokens/s, so 20 tokens fit in the 10 ms target
        def embed(self, batch, *, concurrent=False):
            time.sleep(batch.num_tokens / 2000)
            return super().embed(batch, concurrent=concurrent)

    async def main():
        engine = Paced()
        sched = Scheduler(engine, model="m", token_budget=1000, max_queued_tokens=100_000,
                          latency_target_s=0.01)
        sched.start()
        bulk = await sched.submit(items(*([10] * 8)), interactive=False)
        await bulk.future
        alone = [b.num_sequences for b in engine.batches]
        engine.batches.clear()
        query = await sched.submit(items(4), interactive=True)
        await query.future
        bulk = await sched.submit(items(*([10] * 8)), interactive=False)
        await bulk.future
        await sched.stop()
        return alone, [b.num_sequences for b in engine.batches[1:]]

    alone, guarded = run(main())
    assert alone == [8]                       # no queries about: one full-budget batch
    assert guarded and max(guarded) <= 2      # after a query: batches of <= 20 tokens


class Overlapping(FakeEngine):
    """Counts how many batches are on the "device" at once; each holds it ~30 ms."""

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self._lock = threading.Lock()
        self.running = 0
        self.most_at_once = 0

    def embed(self, batch, *, concurrent=False):
        with self._lock:
            self.running += 1
            self.most_at_once = max(self.most_at_once, self.running)
        try:
            time.sleep(0.03)
            return super().embed(batch, concurrent=concurrent)
        finally:
            with self._lock:
                self.running -= 1


def test_a_backlog_runs_as_parallel_batches_each_told_it_shares_the_device():
    engine = Overlapping(token_budget=64, parallel_batches=2)
    vectors = embed_one_job(engine, [16] * 8, token_budget=64).future.result()
    assert engine.most_at_once == 2
    assert engine.concurrent_calls[:2] == [True, True]
    # Each shared batch gets its share of the budget, so two at once hold one budget's tokens.
    # (If both finish before the loop looks again, the rest may run as one lone full batch.)
    shared = [b.num_tokens for b, c in zip(engine.batches, engine.concurrent_calls, strict=True) if c]
    assert shared and all(n == 32 for n in shared)
    # Every row is still its own sequence's vector, whichever thread computed it.
    np.testing.assert_array_equal(vectors, FakeEngine().embed(
        __import__("gigarouter.engine.base", fromlist=["pack"]).pack([list(range(1, 17))] * 8)))


def test_a_batch_with_nothing_behind_it_gets_the_device_alone_and_holds_it():
    async def main():
        gate = threading.Event()
        engine = FakeEngine(token_budget=16, parallel_batches=2, gate=gate)
        sched = Scheduler(engine, model="m", token_budget=16, max_queued_tokens=10_000)
        sched.start()
        first = await sched.submit(items(8), interactive=True)
        await asyncio.to_thread(engine.entered.wait, 5)
        second = await sched.submit(items(8), interactive=True)
        await asyncio.sleep(0.1)
        started_while_held = len(engine.concurrent_calls)
        gate.set()
        await asyncio.gather(first.future, second.future)
        await sched.stop()
        return engine, started_while_held

    engine, started_while_held = run(main())
    assert started_while_held == 1            # the second waited for the lone batch to finish
    assert engine.concurrent_calls == [False, False]


def test_stop_waits_for_every_parallel_batch():
    async def main():
        engine = Overlapping(token_budget=16, parallel_batches=2)
        sched = Scheduler(engine, model="m", token_budget=16, max_queued_tokens=10_000)
        sched.start()
        job = await sched.submit(items(*([16] * 5)), interactive=False)
        await asyncio.sleep(0.01)
        await sched.stop()
        return job, engine

    job, engine = run(main())
    assert job.future.done() and job.future.result().shape == (5, 8)
    assert engine.running == 0


def test_a_batch_that_fails_after_the_device_fails_its_jobs_instead_of_hanging():
    class TooFewRows(FakeEngine):
        def embed(self, batch, *, concurrent=False):
            return super().embed(batch, concurrent=concurrent)[:1]

    async def main():
        sched = Scheduler(TooFewRows(), model="m", token_budget=64, max_queued_tokens=10_000)
        sched.start()
        job = await sched.submit(items(4, 4, 4), interactive=False)
        with pytest.raises(IndexError):
            await asyncio.wait_for(job.future, timeout=5)
        await sched.stop()

    run(main())


def test_inference_time_counts_overlapping_batches_once():
    engine = Overlapping(token_budget=64, parallel_batches=2)
    job = embed_one_job(engine, [16] * 8, token_budget=64)
    assert engine.most_at_once == 2
    assert job.busy_seconds >= 0.03 * len(engine.batches)     # 30 ms batches
    assert job.infer_seconds < job.busy_seconds               # two ran at a time
    assert job.infer_seconds == pytest.approx(job.finished_at - job.started_at)


class OutOfMemoryOver(FakeEngine):
    """Runs out of device memory on any batch over ``limit`` tokens; ``attempts`` logs every try."""

    def __init__(self, limit: int, **kwargs) -> None:
        super().__init__(**kwargs)
        self.limit = limit
        self.attempts: list[list[int]] = []

    def embed(self, batch, *, concurrent=False):
        self.attempts.append(batch.lengths.tolist())
        if batch.num_tokens > self.limit:
            raise EngineOutOfMemory(f"{batch.num_tokens} tokens do not fit")
        return super().embed(batch, concurrent=concurrent)


def embed_together(engine, jobs: list[list[int]], metrics: Metrics | None = None) -> list:
    """Submit jobs (each a list of lengths, every sequence's ids unique) before the loop runs, so they
    share a first batch; each job's vectors, or the exception it failed with."""
    def unique_items(j: int, lengths: list[int]) -> list[PreparedInput]:
        return [PreparedInput(token_ids=list(range(1000 * j + 100 * i, 1000 * j + 100 * i + n)), pool_start=0)
                for i, n in enumerate(lengths)]

    async def main():
        sched = Scheduler(engine, model="m", token_budget=1000, max_queued_tokens=10_000, metrics=metrics)
        sched.start()
        submitted = [await sched.submit(unique_items(j, lengths), interactive=False)
                     for j, lengths in enumerate(jobs)]
        await asyncio.gather(*(job.future for job in submitted), return_exceptions=True)
        await sched.stop()
        return [job.future.exception() or job.future.result() for job in submitted]

    return run(main())


def test_a_batch_out_of_memory_is_split_in_halves_and_every_job_gets_its_own_vectors():
    jobs = [[10, 20], [15], [5, 5, 5], [20]]
    expected = embed_together(FakeEngine(), jobs)
    engine, metrics = OutOfMemoryOver(limit=25), Metrics()
    got = embed_together(engine, jobs, metrics)
    assert len(engine.attempts[0]) == 7                     # all rode the first batch, which failed
    assert all(b.num_tokens <= 25 for b in engine.batches)   # the halves that ran
    assert sum(b.num_sequences for b in engine.batches) == 7  # each sequence ran exactly once
    for want, have in zip(expected, got, strict=True):
        np.testing.assert_array_equal(have, want)
    failed_passes = len(engine.attempts) - len(engine.batches)
    counted = metrics.registry.get_sample_value("gigarouter_out_of_memory_batches_total", {"model": "m"})
    assert failed_passes > 0 and counted == failed_passes


def test_a_sequence_out_of_memory_alone_fails_only_its_job_with_a_503_and_retry_after():
    jobs = [[10, 20], [40], [5], [6, 50]]
    expected = embed_together(FakeEngine(), jobs)
    engine = OutOfMemoryOver(limit=25)
    got = embed_together(engine, jobs)
    for lone in (got[1], got[3]):
        assert isinstance(lone, EngineOutOfMemory)
        assert lone.status == 503 and lone.code == "device_out_of_memory"
        assert lone.retry_after >= 1 and int(lone.headers["Retry-After"]) >= 1
    np.testing.assert_array_equal(got[0], expected[0])
    np.testing.assert_array_equal(got[2], expected[2])
    assert [50] in engine.attempts and [40] in engine.attempts   # each was tried alone before it failed
