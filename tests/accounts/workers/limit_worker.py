"""One gateway process hammering shared Redis buckets: run by test_limits.py, two at a time.

Prints ``ready``, waits for ``go`` on stdin (so both processes start together),
then fires ATTEMPTS calls at each of two buckets, up to 64 at a time as a
busy gateway would, and prints how many were admitted and how many calls
missed Redis: ``<requests admitted> <token calls admitted> <fallbacks>``.

    python limit_worker.py REDIS_URL PREFIX ATTEMPTS
"""

from __future__ import annotations

import asyncio
import sys

from gigarouter.accounts.limits import Limit, RedisLimiter
from gigarouter.errors import RateLimited

# A long period: the buckets barely refill during the test, so "admitted == limit" is exact.
# Each limit is more than one process's attempts, so both processes must get some.
REQUESTS = Limit(requests=1500, period_s=24 * 3600)
TOKENS = Limit(requests=100_000, tokens=7 * 1500, period_s=24 * 3600)


async def admitted(limiter: RedisLimiter, bucket: str, limit: Limit, tokens: int, attempts: int) -> int:
    in_flight = asyncio.Semaphore(64)

    async def one() -> int:
        async with in_flight:
            try:
                await limiter.hit(bucket, limit, requests=1, tokens=tokens)
                return 1
            except RateLimited:
                return 0

    return sum(await asyncio.gather(*(one() for _ in range(attempts))))


async def main(url: str, prefix: str, attempts: int) -> None:
    limiter = RedisLimiter.from_url(url, prefix=prefix)
    print("ready", flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
    requests, tokens = await asyncio.gather(admitted(limiter, "key_a", REQUESTS, 0, attempts),
                                            admitted(limiter, "key_b", TOKENS, 7, attempts))
    print(requests, tokens, limiter.fallbacks, flush=True)
    await limiter.close()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2], int(sys.argv[3])))
