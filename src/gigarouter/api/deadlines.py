"""A request's deadline: the server's ``request_timeout_s``, or less when the client asks for less.

``X-Request-Timeout: <seconds>`` asks for a shorter deadline. openai-python sends
its own read timeout as ``X-Stainless-Read-Timeout`` on every request; a client that
stops reading after N seconds has no use for an answer after N seconds, so it counts
the same. The shortest of these wins; a client cannot ask for more than the
server's. A value that is not a positive finite number of seconds is a 400 naming
the header: a typo must not silently mean "wait ten minutes".
"""

from __future__ import annotations

import math

from starlette.datastructures import Headers

from gigarouter.errors import InvalidRequest

#: Headers a client names its own deadline with, in seconds.
TIMEOUT_HEADERS = ("X-Request-Timeout", "X-Stainless-Read-Timeout")


def request_timeout_s(headers: Headers, server_timeout_s: float) -> float:
    """Seconds this request may take: the server's bound, lowered by the client's timeout headers."""
    timeout = server_timeout_s
    for name in TIMEOUT_HEADERS:
        raw = headers.get(name)
        if raw is not None:
            timeout = min(timeout, _seconds(name, raw))
    return timeout


def _seconds(name: str, raw: str) -> float:
    try:
        value = float(raw.strip()) if len(raw) <= 32 else math.nan
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value > 0):
        shown = raw if len(raw) <= 32 else f"{raw[:32]}..."
        raise InvalidRequest(f"header {name} must be a positive number of seconds, got {shown!r}", param=name,
                             code="invalid_header")
    return value
