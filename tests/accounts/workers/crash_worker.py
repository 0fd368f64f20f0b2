"""A gateway under load, to be SIGKILLed: run by test_recovery.py as a separate process.

It leaves reservations and idempotency claims in flight on purpose (requests
whose "compute" never ends), keeps four request loops reserving, settling and
refunding, prints ``loaded`` once all of that is under way, and runs until killed.

    python crash_worker.py DATABASE_URL DATA_DIR API_KEY SERVER_SECRET
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

from gigarouter.accounts.service import DatabaseGate
from gigarouter.settings import Settings

HELD, CLAIMED_ONLY, LOOPS, WARMUP_OPS = 5, 2, 4, 40


async def main(url: str, data_dir: str, key: str, secret: str) -> None:
    settings = Settings(database_url=url, data_dir=Path(data_dir), server_secret=secret)
    gate = DatabaseGate.from_settings(settings, migrate=False)
    await gate.start()
    principal = await gate.authenticate(f"Bearer {key}", scope="embed")
    never = asyncio.Event()
    in_flight = asyncio.Semaphore(0)
    warmed = asyncio.Event()
    done_ops = 0

    async def held(i: int) -> None:       # reserved, computing forever (some under an Idempotency-Key)
        async with gate.idempotency(principal, f"held-{i}" if i < 3 else None, "fp") as slot:
            await gate.reserve(principal, model="m", tokens=100, price_per_million_usd=1.0,
                               request_id=f"held-{i}", idempotency=slot)
            in_flight.release()
            await never.wait()

    async def claimed_only(i: int) -> None:   # claimed a key, died before reserving
        async with gate.idempotency(principal, f"claimed-{i}", "fp"):
            in_flight.release()
            await never.wait()

    async def loop(n: int) -> None:
        nonlocal done_ops
        for i in range(10**9):
            charge = await gate.reserve(principal, model="m", tokens=10 + n, price_per_million_usd=1.0,
                                        request_id=f"loop-{n}-{i}")
            if i % 5 == 4:
                await gate.refund(charge, status=500)
            else:
                await gate.settle(charge, status=200, latency_ms=1.0)
            done_ops += 1
            if done_ops == WARMUP_OPS:
                warmed.set()

    tasks = [asyncio.create_task(held(i)) for i in range(HELD)]
    tasks += [asyncio.create_task(claimed_only(i)) for i in range(CLAIMED_ONLY)]
    for _ in range(HELD + CLAIMED_ONLY):
        await in_flight.acquire()
    tasks += [asyncio.create_task(loop(n)) for n in range(LOOPS)]
    await warmed.wait()
    print("loaded", flush=True)
    await asyncio.gather(*tasks)


if __name__ == "__main__":
    asyncio.run(main(*sys.argv[1:5]))
