"""A small in-process sliding-window limiter for the web's own free actions (try-it, sign-in attempts)."""

from __future__ import annotations

import time
from collections import deque


class SlidingWindow:
    """At most ``limit`` events per ``seconds`` for each key; keys are forgotten once idle."""

    def __init__(self, limit: int, seconds: float, *, max_keys: int = 10_000) -> None:
        self.limit = limit
        self.seconds = seconds
        self.max_keys = max_keys
        self._events: dict[str, deque[float]] = {}

    def allow(self, key: str, *, now: float | None = None) -> bool:
        now = time.monotonic() if now is None else now
        events = self._events.get(key)
        if events is None:
            if len(self._events) >= self.max_keys:
                self._forget_idle(now)
            events = self._events[key] = deque()
        while events and events[0] <= now - self.seconds:
            events.popleft()
        if len(events) >= self.limit:
            return False
        events.append(now)
        return True

    def _forget_idle(self, now: float) -> None:
        for key in [k for k, v in self._events.items() if not v or v[-1] <= now - self.seconds]:
            del self._events[key]
        if len(self._events) >= self.max_keys:       # still full of active keys: start over
            self._events.clear()
