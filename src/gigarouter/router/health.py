"""What the router knows of one provider of one model: breaker, latency, uptime, throughput.

The circuit breaker opens after ``failures`` failures in a row (requests or
probes); while open the provider gets no requests. After its cooldown the
router's probe loop sends it the probe set (the half-open probe): success closes
the breaker, failure reopens it with the cooldown doubled, up to ``MAX_COOLDOWN_S``.
Latency and uptime are kept for the last hour, for ``/v1/models`` and sorting.
"""

from __future__ import annotations

import statistics
import time
from collections import deque

WINDOW_S = 3600.0
MAX_COOLDOWN_S = 60.0
_MAX_SAMPLES = 4096
#: The p50 is recomputed once this share of the samples is new, or after a second:
#: routing asks for it on every request, and a median of 4,096 samples costs ~1 ms.
_P50_STALE_FRACTION = 1 / 64
_P50_STALE_S = 1.0


class Health:
    def __init__(self, *, failures: int = 3, cooldown_s: float = 2.0, clock=time.monotonic) -> None:
        self.failures_to_open = failures
        self.base_cooldown_s = cooldown_s
        self.cooldown_s = cooldown_s
        self.consecutive_failures = 0
        self.open_until: float | None = None       # set while the breaker is open
        self.tokens_per_s = 0.0                     # moving average, for sort=throughput
        self._clock = clock
        self._latencies: deque[tuple[float, float]] = deque(maxlen=_MAX_SAMPLES)   # (when, seconds)
        self._outcomes: deque[tuple[float, bool]] = deque(maxlen=_MAX_SAMPLES)      # (when, ok)
        self._added = 0                             # latency samples ever added
        self._p50: tuple[float, int, float | None] | None = None   # (computed at, _added then, value)

    @property
    def is_open(self) -> bool:
        return self.open_until is not None

    def due_for_probe(self) -> bool:
        """Open and past its cooldown: time for a half-open probe."""
        return self.open_until is not None and self._clock() >= self.open_until

    def success(self, *, seconds: float | None = None, tokens: int = 0) -> None:
        now = self._clock()
        self.consecutive_failures = 0
        self.open_until = None
        self.cooldown_s = self.base_cooldown_s
        self._outcomes.append((now, True))
        if seconds is not None:
            self._latencies.append((now, seconds))
            self._added += 1
            if tokens and seconds > 0:
                rate = tokens / seconds
                self.tokens_per_s = rate if not self.tokens_per_s else 0.8 * self.tokens_per_s + 0.2 * rate

    def failure(self) -> None:
        now = self._clock()
        self._outcomes.append((now, False))
        self.consecutive_failures += 1
        if self.open_until is not None:
            # Past the cooldown it is a failed half-open probe: wait longer. Before it, a request
            # that was under way when the breaker opened: the same outage, already counted.
            if now >= self.open_until:
                self.cooldown_s = min(MAX_COOLDOWN_S, self.cooldown_s * 2)
                self.open_until = now + self.cooldown_s
        elif self.consecutive_failures >= self.failures_to_open:
            self.open_until = now + self.cooldown_s

    def p50_latency_ms(self) -> float | None:
        now = self._clock()
        if self._p50 is not None:
            at, added, value = self._p50
            fresh = self._added - added <= len(self._latencies) * _P50_STALE_FRACTION
            if fresh and now - at < _P50_STALE_S:
                return value
        recent = [s for when, s in self._latencies if when >= now - WINDOW_S]
        value = round(statistics.median(recent) * 1000, 2) if recent else None
        self._p50 = (now, self._added, value)
        return value

    def uptime(self) -> float | None:
        """Share of the last hour's requests and probes that succeeded (None: nothing seen yet)."""
        recent = [ok for when, ok in self._outcomes if when >= self._clock() - WINDOW_S]
        return round(sum(recent) / len(recent), 4) if recent else None
