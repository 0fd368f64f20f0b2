"""A small in-process sliding-window limiter for the web's own free actions (try-it, sign-in attempts).

Memory is bounded and spraying new keys cannot reset anyone's count. Each key's
recent events sit in an exact table of at most ``max_keys`` keys. When it is
full, the least recently used key leaves it: dropped if idle for a whole
window (forgetting it changes nothing), else evicted *into* a fixed
table of ``slots`` buckets (a keyed hash of the key picks its bucket), where its
events are merged with those of other evicted keys, newest ``limit`` kept. A key
that comes back starts from its bucket's events, so an evicted key is never
counted lower than it was, only, when it shares its bucket, higher: under a flood
of new keys the limiter errs towards refusing, never towards letting a guesser
start over. (Before, a full table was simply cleared: 10,000 new keys re-opened
sign-in guessing for everyone.)
"""

from __future__ import annotations

import hashlib
import secrets
import threading
import time
from collections import OrderedDict, deque


class SlidingWindow:
    """At most ``limit`` events per ``seconds`` for each key."""

    def __init__(self, limit: int, seconds: float, *, max_keys: int = 10_000, slots: int = 4096) -> None:
        self.limit = limit
        self.seconds = seconds
        self.max_keys = max_keys
        self.slots = slots
        self._events: OrderedDict[str, deque[float]] = OrderedDict()   # least recently used first
        self._evicted: dict[int, deque[float]] = {}                      # bucket -> newest events, sorted
        self._salt = secrets.token_bytes(16)     # buckets an attacker cannot aim at
        self._lock = threading.Lock()

    def allow(self, key: str, *, now: float | None = None) -> bool:
        now = time.monotonic() if now is None else now
        with self._lock:
            events = self._events.get(key)
            if events is None:
                events = self._events[key] = self._from_bucket(key, now)
                if len(self._events) > self.max_keys:
                    self._make_room(now)
            else:
                self._events.move_to_end(key)
            while events and events[0] <= now - self.seconds:
                events.popleft()
            if len(events) >= self.limit:
                return False
            events.append(now)
            return True

    def __len__(self) -> int:
        return len(self._events)

    def _bucket(self, key: str) -> int:
        digest = hashlib.blake2b(key.encode("utf-8", "surrogatepass"), key=self._salt, digest_size=8).digest()
        return int.from_bytes(digest, "big") % self.slots

    def _from_bucket(self, key: str, now: float) -> deque[float]:
        merged = self._evicted.get(self._bucket(key))
        return deque(t for t in merged if t > now - self.seconds) if merged else deque()

    def _make_room(self, now: float) -> None:
        # The front of the table is the least recently used key: idle ones are dropped (a key with no
        # event in the window is full again), active ones go to their bucket. O(1) per new key.
        while len(self._events) > self.max_keys:
            key, events = self._events.popitem(last=False)
            live = [t for t in events if t > now - self.seconds]
            if live:
                self._keep(self._bucket(key), live, now)

    def _keep(self, bucket: int, events: list[float], now: float) -> None:
        # A set: a key that came back from this bucket carries copies of its events; count them once.
        merged = sorted({t for t in (*self._evicted.get(bucket, ()), *events) if t > now - self.seconds})
        if merged:
            self._evicted[bucket] = deque(merged[-self.limit:])
        else:
            self._evicted.pop(bucket, None)
