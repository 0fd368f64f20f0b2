"""Device health that never waits for the device: a heartbeat from the device thread, and a timed probe.

``/ready`` runs on the event loop. Asking a GPU whether it answers
(``torch.cuda.synchronize``) waits for every kernel already queued, so during a
multi-second batch it would stall every request the loop serves. Instead:

- the device thread stamps the start and end of every forward pass (and how it
  ended); a pass that has run far longer than any pass before it, or that ended
  in a device error, makes the device unhealthy;
- while the device is idle, a probe (on CUDA: a synchronize) is started every
  ``probe_every_s`` on a thread of its own, and a probe that has not come back
  within ``probe_timeout_s`` makes the device unhealthy.

``state()`` only reads these stamps: it returns at once whatever the device is
doing. Torch-free, so it is tested with a fake clock.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class HealthState:
    ok: bool
    reason: str = ""


class Heartbeat:
    def __init__(self, *, probe: Callable[[], None] | None = None, clock: Callable[[], float] = time.monotonic,
                 stall_floor_s: float = 120.0, stall_factor: float = 20.0, probe_every_s: float = 10.0,
                 probe_timeout_s: float = 10.0) -> None:
        self._probe_fn = probe
        self._clock = clock
        self.stall_floor_s = stall_floor_s
        self.stall_factor = stall_factor
        self.probe_every_s = probe_every_s
        self.probe_timeout_s = probe_timeout_s
        self._lock = threading.Lock()
        self._in_flight: dict[int, float] = {}        # pass id -> start
        self._next_id = 0
        self._slowest_s = 0.0
        self._last_beat = clock()
        self._error: str | None = None
        self._probe_started: float | None = None       # a probe is running since then

    # -- the device thread ------------------------------------------------------------------

    def pass_started(self) -> int:
        with self._lock:
            self._next_id += 1
            self._in_flight[self._next_id] = self._clock()
            return self._next_id

    def pass_ended(self, token: int, error: BaseException | None = None, *, device_error: bool = False) -> None:
        """``device_error``: the failure says the device itself is broken (not e.g. out of memory)."""
        with self._lock:
            now = self._clock()
            started = self._in_flight.pop(token, now)
            self._last_beat = now
            if error is None:
                self._slowest_s = max(self._slowest_s, now - started)
                self._error = None
            elif device_error:
                self._error = f"the last forward pass failed: {type(error).__name__}: {error}"

    # -- anyone, at once --------------------------------------------------------------------

    @property
    def stall_after_s(self) -> float:
        return max(self.stall_floor_s, self.stall_factor * self._slowest_s)

    def state(self) -> HealthState:
        with self._lock:
            now = self._clock()
            if self._in_flight:
                running = now - min(self._in_flight.values())
                if running > self.stall_after_s:
                    return HealthState(False, f"a forward pass has run for {running:.0f} s "
                                              f"(the slowest before took {self._slowest_s:.1f} s)")
            if self._probe_started is not None and now - self._probe_started > self.probe_timeout_s:
                return HealthState(False, f"the device has not answered a probe for "
                                          f"{now - self._probe_started:.0f} s")
            if (self._probe_fn is not None and not self._in_flight and self._probe_started is None
                    and now - self._last_beat > self.probe_every_s):
                self._start_probe(now)
            if self._error:
                return HealthState(False, self._error)
            return HealthState(True, "busy" if self._in_flight else "idle")

    def _start_probe(self, now: float) -> None:
        self._probe_started = now

        def run() -> None:
            error = None
            try:
                self._probe_fn()
            except Exception as exc:
                error = f"the device failed a probe: {type(exc).__name__}: {exc}"
            with self._lock:
                self._probe_started = None
                self._last_beat = self._clock()
                self._error = error      # a probe that passes clears an earlier pass's device error

        threading.Thread(target=run, name="device-health-probe", daemon=True).start()
