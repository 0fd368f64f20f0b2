"""The p50 the router sorts by on every request is recomputed only when enough is new (it was a median
of up to 4,096 samples per request: a gateway's largest cost in front of a fast upstream)."""

from __future__ import annotations

import statistics

from gigarouter.router import health as health_module
from gigarouter.router.health import Health


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_the_p50_is_exact_for_few_samples_and_amortised_for_many(monkeypatch):
    clock = Clock()
    health = Health(clock=clock)
    for k, seconds in enumerate((0.030, 0.010, 0.020, 0.040, 0.050), start=1):
        health.success(seconds=seconds)
        assert health.p50_latency_ms() == round(statistics.median((0.030, 0.010, 0.020, 0.040, 0.050)[:k]) * 1000, 2)
    for _ in range(4096):
        health.success(seconds=0.010)
    assert health.p50_latency_ms() == 10.0

    calls = []
    real = statistics.median
    monkeypatch.setattr(health_module.statistics, "median", lambda xs: calls.append(1) or real(xs))
    for _ in range(1000):                  # a request each: one success, one lookup
        health.success(seconds=0.010)
        health.p50_latency_ms()
    assert 1000 // 64 <= len(calls) <= 1000 // 64 + 1

    for _ in range(3000):                  # the provider got slower: seen within 1/64 of the samples
        health.success(seconds=0.100)
    assert health.p50_latency_ms() == 100.0
    health.success(seconds=0.010)
    clock.now += 1.0                       # and within a second, whatever the count
    assert health.p50_latency_ms() == 100.0 and len(calls) > 1000 // 64 + 1
