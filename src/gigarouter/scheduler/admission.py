"""Admission by predicted wait: how fast a model's queue drains, and what that says about a new request.

A queue bounded by tokens alone (``max_queued_tokens``) lets minutes of work pile
up before anyone is refused: every admitted request then waits those minutes, and
under a flood nobody is served in time. The bound that matters to a client is
time, so each queue measures its *drain rate*: tokens completed per second of
*busy* device time (wall time with at least one batch running, so idle gaps do
not dilute it and parallel batches count once). From it and the tokens ahead,

    predicted wait = (queued tokens + half the tokens in running batches) / drain rate

and a request whose own work would end later than ``max_queue_wait_ms`` from now
is refused at once (429, Retry-After = seconds until the queue has drained enough
for it, at least 1). A request is always admitted into an empty queue, however
big: otherwise a request larger than the limit's worth of tokens could never run.

Pure and clock-injected, so it is tested without a device.
"""

from __future__ import annotations

import time
from collections.abc import Callable

#: Busy seconds folded into one sample: long enough to smooth batch-to-batch noise, short
#: enough that a change in traffic (long documents after short queries) shows within seconds.
SAMPLE_WINDOW_S = 0.5
#: Weight of the newest sample in the moving average.
SMOOTHING = 0.3
#: A batch on the device longer than this many times its predicted time (and the watchdog's floor)
#: means the device hangs.
WATCHDOG_FACTOR = 10.0


class DrainRate:
    """Tokens per second of busy device time: an EWMA over windows of ``SAMPLE_WINDOW_S`` busy seconds.

    ``batch_started`` / ``batch_finished`` are called by the scheduler loop (one thread);
    ``seed`` gives a first value measured at warm-up, replaced by real traffic's samples.
    """

    def __init__(self, *, clock: Callable[[], float] = time.perf_counter, window_s: float = SAMPLE_WINDOW_S,
                 smoothing: float = SMOOTHING) -> None:
        self._clock = clock
        self.window_s = window_s
        self.smoothing = smoothing
        self.tokens_per_s = 0.0            # 0 = not known yet
        self._running = 0
        self._busy_since: float | None = None
        self._window_tokens = 0
        self._window_busy_s = 0.0

    def seed(self, tokens_per_s: float) -> None:
        """A first estimate (from a timed warm-up batch); real samples move it as they come."""
        if self.tokens_per_s == 0 and tokens_per_s > 0:
            self.tokens_per_s = tokens_per_s

    def batch_started(self) -> None:
        if self._running == 0:
            self._busy_since = self._clock()
        self._running += 1

    def batch_finished(self, tokens: int, *, discard: bool = False) -> None:
        """``discard``: the batch says nothing about the normal rate (the watchdog flagged it):
        the window it ends is dropped instead of folded in."""
        now = self._clock()
        self._running = max(0, self._running - 1)
        if self._busy_since is not None:
            self._window_busy_s += now - self._busy_since
        self._busy_since = now if self._running else None
        if discard:
            self._window_tokens, self._window_busy_s = 0, 0.0
            return
        self._window_tokens += tokens
        # Nothing known yet: the first batch is the first estimate, at once.
        if self._window_busy_s >= self.window_s or self.tokens_per_s == 0 and self._window_busy_s > 0:
            self._fold()

    def _fold(self) -> None:
        sample = self._window_tokens / self._window_busy_s
        if self.tokens_per_s == 0:
            self.tokens_per_s = sample
        else:
            self.tokens_per_s += self.smoothing * (sample - self.tokens_per_s)
        self._window_tokens, self._window_busy_s = 0, 0.0


def predicted_wait_s(ahead_tokens: float, tokens_per_s: float) -> float:
    """Seconds until work ``ahead_tokens`` deep is done; 0 while the rate is unknown."""
    return ahead_tokens / tokens_per_s if tokens_per_s > 0 else 0.0


def retry_after_s(ahead_tokens: float, tokens_per_s: float, max_wait_s: float) -> float:
    """Seconds until the queue has drained enough that ``ahead_tokens`` would finish within ``max_wait_s``."""
    return max(1.0, predicted_wait_s(ahead_tokens, tokens_per_s) - max_wait_s)


class RetryPacer:
    """Retry-After under a flood: spread the refused clients over the time the queue needs to serve them.

    The queue alone would say "1 s" to every refused client (its wait falls under the limit
    within a second), so N clients that honour it come back together every second and are
    mostly refused again: the server spends its CPU refusing. Per window of ``window_s``,
    the clients waiting to come back are about ``refused / window * after_s`` (each returns
    once per ``after_s``) and the queue admits ``admitted / window`` a second, so serving
    them all takes ``refused * after_s / admitted`` seconds: the advice moves halfway there
    each window, between ``min_s`` and ``max_s``, and falls back to ``min_s`` once nobody is
    refused. Clients add their own jitter (openai-python waits what it is told).
    """

    def __init__(self, *, clock: Callable[[], float] = time.monotonic, window_s: float = 0.25,
                 min_s: float = 1.0, max_s: float = 30.0) -> None:
        self._clock = clock
        self.window_s, self.min_s, self.max_s = window_s, min_s, max_s
        self.after_s = min_s
        self._refused = self._admitted = 0
        self._since = clock()

    def admitted(self) -> None:
        self._tick()
        self._admitted += 1

    def refused(self) -> float:
        """Count a refusal; the Retry-After to give it."""
        self._tick()
        self._refused += 1
        return self.after_s

    def _tick(self) -> None:
        now = self._clock()
        if now - self._since < self.window_s:
            return
        if self._refused == 0:
            self.after_s = self.min_s
        elif self._admitted:     # a window that admitted nothing (one huge batch) says nothing
            target = self._refused * self.after_s / self._admitted
            self.after_s = min(self.max_s, max(self.min_s, (self.after_s + target) / 2))
        self._refused = self._admitted = 0
        self._since = now


def watchdog_limit_s(predicted_s: float, *, floor_s: float, factor: float = WATCHDOG_FACTOR) -> float:
    """How long a batch may run before the device counts as hung: ``factor`` times its prediction, never
    under ``floor_s`` (the first batches, a cold cache, a busy machine)."""
    return max(floor_s, factor * predicted_s)
