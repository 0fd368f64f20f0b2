"""The circuit breaker and the last hour's latency and uptime, on a fake clock."""

from __future__ import annotations

import pytest

from gigarouter.router.health import MAX_COOLDOWN_S, WINDOW_S, Health


class Clock:
    """A monotonic clock the test moves by hand."""

    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


def test_a_fresh_provider_is_closed_with_nothing_measured(clock):
    health = Health(clock=clock)
    assert not health.is_open and not health.due_for_probe()
    assert health.p50_latency_ms() is None and health.uptime() is None


def test_the_breaker_opens_after_n_failures_in_a_row(clock):
    health = Health(failures=3, cooldown_s=2.0, clock=clock)
    health.failure()
    health.failure()
    assert not health.is_open
    health.failure()
    assert health.is_open and health.open_until == clock.now + 2.0


def test_a_success_between_failures_resets_the_count(clock):
    health = Health(failures=3, clock=clock)
    health.failure()
    health.failure()
    health.success()
    health.failure()
    health.failure()
    assert not health.is_open and health.consecutive_failures == 2


def test_a_probe_is_due_only_after_the_cooldown(clock):
    health = Health(failures=1, cooldown_s=2.0, clock=clock)
    health.failure()
    clock.now += 1.99
    assert health.is_open and not health.due_for_probe()
    clock.now += 0.01
    assert health.due_for_probe()


def test_each_failed_probe_doubles_the_cooldown_up_to_the_cap(clock):
    health = Health(failures=1, cooldown_s=2.0, clock=clock)
    health.failure()
    seen = []
    for _ in range(8):
        clock.now = health.open_until      # the probe is due, and fails
        assert health.due_for_probe()
        health.failure()
        seen.append(health.cooldown_s)
        assert health.open_until == clock.now + health.cooldown_s
        assert not health.due_for_probe()
    assert seen == [4.0, 8.0, 16.0, 32.0, MAX_COOLDOWN_S, MAX_COOLDOWN_S, MAX_COOLDOWN_S, MAX_COOLDOWN_S]
    assert MAX_COOLDOWN_S == 60.0


def test_a_successful_probe_closes_the_breaker_and_resets_the_cooldown(clock):
    health = Health(failures=1, cooldown_s=2.0, clock=clock)
    health.failure()
    clock.now = health.open_until
    health.failure()                       # cooldown now 4 s
    clock.now = health.open_until
    health.success(seconds=0.01)
    assert not health.is_open and not health.due_for_probe()
    assert health.cooldown_s == 2.0 and health.consecutive_failures == 0
    health.failure()                       # opens again with the base cooldown
    assert health.open_until == clock.now + 2.0


def test_failures_of_requests_in_flight_do_not_count_as_failed_probes(clock):
    """A burst of concurrent failures opens the breaker once; only a failed half-open probe doubles it."""
    health = Health(failures=3, cooldown_s=2.0, clock=clock)
    for _ in range(10):                    # ten requests that were already under way fail together
        health.failure()
    assert health.is_open and health.cooldown_s == 2.0
    assert health.open_until == clock.now + 2.0
    clock.now += 2.0
    assert health.due_for_probe()


def test_p50_latency_is_the_median_in_ms(clock):
    health = Health(clock=clock)
    for seconds in (0.030, 0.010, 0.020):
        health.success(seconds=seconds)
    assert health.p50_latency_ms() == 20.0
    health.success()                       # no timing: no latency sample
    assert health.p50_latency_ms() == 20.0


def test_only_the_last_hour_counts(clock):
    health = Health(failures=100, clock=clock)
    health.success(seconds=5.0)            # an old, slow success
    health.failure()
    health.failure()
    clock.now += WINDOW_S / 2
    health.success(seconds=0.010)
    assert health.p50_latency_ms() == pytest.approx(2505.0)
    assert health.uptime() == 0.5
    clock.now += WINDOW_S / 2 + 1          # the first three samples are over an hour old
    assert health.p50_latency_ms() == 10.0
    assert health.uptime() == 1.0
    clock.now += WINDOW_S
    assert health.p50_latency_ms() is None and health.uptime() is None


def test_uptime_counts_requests_and_probes(clock):
    health = Health(failures=100, clock=clock)
    for ok in (True, True, True, False):
        health.success() if ok else health.failure()
    assert health.uptime() == 0.75


def test_throughput_is_a_moving_average(clock):
    health = Health(clock=clock)
    health.success(seconds=1.0, tokens=100)
    assert health.tokens_per_s == 100.0
    health.success(seconds=1.0, tokens=200)
    assert health.tokens_per_s == pytest.approx(120.0)
    health.success(seconds=1.0)            # no tokens: unchanged
    assert health.tokens_per_s == pytest.approx(120.0)
