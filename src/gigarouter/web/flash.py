"""One-time notes kept on the server between a form's POST and the page it redirects to.

A new API key is shown once, and a reload must not post the form again (and make
another key). So the POST keeps the key here, under the browser's session, and
answers 303; the page it redirects to takes the note out, so a reload shows the
key no more (POST/redirect/GET).

Notes live in this process's memory for ``TTL_S``: a note that is gone (too late, a
restart, another worker) only means the page says the key was shown and offers to
create another. Only the session token's hash is kept, never the token.
"""

from __future__ import annotations

import hashlib
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

from fastapi import FastAPI

TTL_S = 300.0
MAX_NOTES = 10_000


class FlashStore:
    def __init__(self, *, ttl_s: float = TTL_S, max_notes: int = MAX_NOTES,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.ttl_s, self.max_notes, self.clock = ttl_s, max_notes, clock
        self._notes: OrderedDict[tuple[str, str], tuple[float, Any]] = OrderedDict()
        self._lock = threading.Lock()

    def put(self, session_token: str, kind: str, value: Any) -> None:
        now = self.clock()
        with self._lock:
            self._drop_expired(now)
            key = (_hash(session_token), kind)
            self._notes.pop(key, None)
            self._notes[key] = (now + self.ttl_s, value)
            while len(self._notes) > self.max_notes:
                self._notes.popitem(last=False)

    def take(self, session_token: str | None, kind: str) -> Any | None:
        """The note, once; None when there is none (or it expired)."""
        if not session_token:
            return None
        with self._lock:
            expires, value = self._notes.pop((_hash(session_token), kind), (0.0, None))
        return value if expires > self.clock() else None

    def _drop_expired(self, now: float) -> None:
        while self._notes:
            key, (expires, _) = next(iter(self._notes.items()))
            if expires > now:
                return
            del self._notes[key]


def flash_store(app: FastAPI) -> FlashStore:
    store = getattr(app.state, "web_flash", None)
    if store is None:
        store = app.state.web_flash = FlashStore()
    return store


def _hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()
