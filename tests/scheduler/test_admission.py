"""Admission by predicted wait, the drain rate behind it, deadlines leaving the queue, and the watchdog."""

from __future__ import annotations

import asyncio
import threading

import pytest

from gigarouter.errors import DeviceHung, QueueFull
from gigarouter.scheduler.admission import DrainRate, retry_after_s, watchdog_limit_s
from gigarouter.scheduler.queue import Scheduler
from tests.conftest import FakeEngine
from tests.scheduler.test_queue import items, run


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_drain_rate_counts_busy_time_only_and_parallel_batches_once():
    clock = FakeClock()
    rate = DrainRate(clock=clock, window_s=1.0, smoothing=0.5)
    rate.batch_started()
    clock.now += 0.5
    rate.batch_finished(500)                 # first batch: the first estimate at once
    assert rate.tokens_per_s == pytest.approx(1000)
    clock.now += 60                          # idle: does not dilute the rate
    rate.batch_started()
    rate.batch_started()                     # two batches side by side: 1.0 busy second, 1600 tokens
    clock.now += 0.6
    rate.batch_finished(600)
    clock.now += 0.4
    rate.batch_finished(1000)
    assert rate.tokens_per_s == pytest.approx(1000 + 0.5 * (1600 - 1000))


def test_seed_is_a_first_estimate_that_traffic_moves():
    clock = FakeClock()
    rate = DrainRate(clock=clock, window_s=1.0, smoothing=0.5)
    rate.seed(4000)
    assert rate.tokens_per_s == 4000
    rate.batch_started()
    clock.now += 1.0
    rate.batch_finished(2000)
    assert rate.tokens_per_s == pytest.approx(3000)
    rate.seed(9999)                          # a seed never overrides what was learnt
    assert rate.tokens_per_s == pytest.approx(3000)


def test_a_batch_the_watchdog_flagged_is_not_a_sample():
    clock = FakeClock()
    rate = DrainRate(clock=clock, window_s=1.0)
    rate.seed(1000)
    rate.batch_started()
    clock.now += 500
    rate.batch_finished(100, discard=True)
    assert rate.tokens_per_s == 1000


def test_retry_after_and_watchdog_limits():
    assert retry_after_s(3500, 1000, 1.0) == pytest.approx(2.5)
    assert retry_after_s(100, 1000, 1.0) == 1.0          # never under a second
    assert watchdog_limit_s(0.2, floor_s=10) == 10
    assert watchdog_limit_s(3.0, floor_s=10) == 30


def blocked_scheduler(gate: threading.Event, *, rate: float, **kwargs) -> tuple[Scheduler, FakeEngine]:
    engine = FakeEngine(gate=gate)
    sched = Scheduler(engine, model="m", token_budget=100, max_queued_tokens=1_000_000, **kwargs)
    sched.seed_rate(rate)
    sched.start()
    return sched, engine


def test_admission_refuses_at_the_predicted_wait_with_retry_after():
    async def main():
        gate = threading.Event()
        sched, engine = blocked_scheduler(gate, rate=100.0, max_queue_wait_s=1.0)
        on_device = await sched.submit(items(20), interactive=False)       # 20 tokens on the device
        await asyncio.to_thread(engine.entered.wait, 5)
        queued = await sched.submit(items(50), interactive=False)          # ahead: 10 + 50 -> 0.6 s
        assert sched.predicted_wait_s() == pytest.approx(0.6)
        fits = await sched.submit(items(30), interactive=False)            # ends at 0.9 s: admitted
        with pytest.raises(QueueFull) as refused:
            await sched.submit(items(300), interactive=False)               # would end at 3.9 s
        with pytest.raises(QueueFull):
            await sched.submit(items(11), interactive=False)                # 1.01 s: just over
        gate.set()
        await asyncio.gather(on_device.future, queued.future, fits.future)
        await sched.stop()
        return refused.value

    refused = run(main())
    assert refused.status == 429 and refused.code == "queue_full"
    # 3.9 s predicted, limit 1 s: the queue is under the limit for it again in 2.9 s -> 3
    assert refused.headers["Retry-After"] == "3"


def test_an_empty_queue_takes_a_request_of_any_size():
    async def main():
        gate = threading.Event()
        sched, engine = blocked_scheduler(gate, rate=10.0, max_queue_wait_s=0.1)
        big = await sched.submit(items(100, 100, 100), interactive=False)   # 30 s of work, nothing queued
        gate.set()
        await big.future
        await sched.stop()

    run(main())


def test_a_short_deadline_tightens_the_limit():
    async def main():
        gate = threading.Event()
        sched, engine = blocked_scheduler(gate, rate=100.0, max_queue_wait_s=10.0)
        first = await sched.submit(items(20), interactive=False)
        await asyncio.to_thread(engine.entered.wait, 5)
        second = await sched.submit(items(50), interactive=False)
        assert sched.admission_error(50) is None                            # 1.1 s < 10 s
        refusal = sched.admission_error(50, max_wait_s=0.5)                 # but not within 0.5 s
        gate.set()
        await asyncio.gather(first.future, second.future)
        await sched.stop()
        return refusal

    assert isinstance(run(main()), QueueFull)


def test_cancel_takes_the_tokens_out_of_the_queue_at_once():
    async def main():
        gate = threading.Event()
        sched, engine = blocked_scheduler(gate, rate=100.0, max_queue_wait_s=1.0)
        first = await sched.submit(items(20), interactive=False)
        await asyncio.to_thread(engine.entered.wait, 5)
        expired = await sched.submit(items(80), interactive=False)
        assert sched.admission_error(30) is not None
        sched.cancel(expired)                                              # its deadline passed
        assert sched.queued_tokens == 0 and sched.admission_error(30) is None
        gate.set()
        await first.future
        await sched.stop()
        return engine.batches

    batches = run(main())
    assert [b.num_tokens for b in batches] == [20]                          # the expired job never ran


def test_watchdog_fails_queued_work_while_the_device_hangs_then_recovers():
    async def main():
        gate = threading.Event()
        sched, engine = blocked_scheduler(gate, rate=1_000_000.0, watchdog_floor_s=0.2)
        stuck = await sched.submit(items(20), interactive=False)
        await asyncio.to_thread(engine.entered.wait, 5)
        waiting = await sched.submit(items(30), interactive=False)
        for _ in range(100):
            if sched.hung:
                break
            await asyncio.sleep(0.02)
        hung = sched.hung
        outcomes = await asyncio.gather(stuck.future, waiting.future, return_exceptions=True)
        with pytest.raises(DeviceHung) as refused:
            await sched.submit(items(5), interactive=False)
        gate.set()                                                         # the batch comes back at last
        for _ in range(100):
            if not sched.hung:
                break
            await asyncio.sleep(0.02)
        after = await sched.submit(items(5), interactive=False)
        vectors = await after.future
        await sched.stop()
        return hung, outcomes, refused.value, sched.hung, vectors

    hung, outcomes, refused, hung_after, vectors = run(main())
    assert hung and "has not finished a batch of 20 tokens" in hung
    assert all(isinstance(o, DeviceHung) for o in outcomes)                 # nobody left waiting
    assert refused.status == 503 and int(refused.headers["Retry-After"]) >= 1
    assert hung_after is None and vectors.shape == (1, 8)


def test_retry_pacer_spreads_a_flood_over_the_time_to_serve_it_and_relaxes_after():
    from gigarouter.scheduler.admission import RetryPacer

    now = [0.0]
    pacer = RetryPacer(clock=lambda: now[0], window_s=1.0, min_s=1.0, max_s=60.0)

    def window(refused: int, admitted: int) -> float:
        """One second of traffic; the advice once it is closed (by the next second's first admission)."""
        for _ in range(admitted - 1):
            pacer.admitted()
        for _ in range(refused):
            pacer.refused()
        now[0] += 1.0
        pacer.admitted()
        return pacer.after_s

    assert pacer.refused() == 1.0                    # nothing measured yet: the queue's own advice
    # 1000 clients told "1 s" come back each second; 50 a second are admitted: 20 s would serve them.
    first = window(refused=1000, admitted=50)
    assert 8.0 < first < 12.0                        # halfway to the ~20 s target in one window
    # Clients honour it: 1000 of them told T seconds come back about 1000/T a second.
    advice = [window(refused=int(1000 / pacer.after_s), admitted=50) for _ in range(20)]
    assert all(1.0 < a <= 60.0 for a in advice)
    assert 15.0 < advice[-1] < 25.0                  # settles near clients / admissions a second
    assert window(refused=0, admitted=50) == 1.0     # nobody refused: back to the queue's advice

    # A window that admitted nothing (one huge batch on the device) leaves the advice alone.
    stalled = RetryPacer(clock=lambda: now[0], window_s=1.0)
    stalled.after_s = 7.0
    for _ in range(10):
        stalled.refused()
    now[0] += 1.0
    assert stalled.refused() == 7.0
