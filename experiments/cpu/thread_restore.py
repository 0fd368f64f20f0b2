"""Does giving torch's thread count back after each pass cost anything? (docs/benchmarks.md, section 13,
"Thread count given back".)

    python experiments/cpu/thread_restore.py

One device thread runs the served default model's engine on three loads: lone 12-token passes
(one thread each, SMALL_PASS_TOKENS), a small and a 1,024-token pass in turn (1 thread then 2),
and large passes only. Two ways, interleaved round by round in one process:

- ``restore``: ``engine.embed`` as served, which sets the pass's count and puts the thread's back;
- ``sticky``: the count set before the pass and left so (what the engine did before 2026-11-30,
  which leaked a lone query's 1 to every thread started afterwards).

It prints milliseconds per round of each load, per way and round, then the thread count a new
thread starts with after each way.
"""

from __future__ import annotations

import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import torch

from gigarouter import Embedder
from gigarouter.engine.base import pack
from gigarouter.engine.runner import PROCESS_THREADS, SMALL_PASS_TOKENS
from gigarouter.settings import Settings

ROUNDS = 3


def new_thread_count() -> int:
    """The intra-op thread count a thread started now begins with."""
    seen: list[int] = []
    thread = threading.Thread(target=lambda: seen.append(torch.get_num_threads()))
    thread.start()
    thread.join()
    return seen[0]


def main() -> None:
    with Embedder(settings=Settings(cache="off")) as embedder:
        engine = embedder.engine
        small = pack([[101] + [2000 + i for i in range(10)] + [102]])
        large = pack([[101] + [2000 + i % 50 for i in range(126)] + [102]] * 8)

        def sticky(batch) -> None:
            torch.set_num_threads(1 if batch.num_tokens <= SMALL_PASS_TOKENS else PROCESS_THREADS)
            engine._embed(batch)

        ways = {"restore": engine.embed, "sticky": sticky}
        loads = {"small": ([small], 300), "small+large": ([small, large], 60), "large": ([large], 60)}
        results = []
        with ThreadPoolExecutor(1, initializer=engine.device_thread_started) as device:
            for way in ways.values():              # warm both
                for batch in (small, large):
                    device.submit(way, batch).result()
            for round_ in range(ROUNDS):
                for name, way in ways.items():
                    row = {"round": round_, "way": name}
                    for load, (batches, repeats) in loads.items():
                        started = time.perf_counter()
                        for _ in range(repeats):
                            for batch in batches:
                                device.submit(way, batch).result()
                        row[f"{load}_ms"] = round((time.perf_counter() - started) / repeats * 1000, 3)
                    results.append(row)
                    print(json.dumps(row), flush=True)
            for name, way in ways.items():
                device.submit(way, small).result()     # the last pass a lone query's
                print(json.dumps({"way": name, "new_thread_torch_threads": new_thread_count(),
                                  "process": PROCESS_THREADS}))
                torch.set_num_threads(PROCESS_THREADS)


if __name__ == "__main__":
    main()
