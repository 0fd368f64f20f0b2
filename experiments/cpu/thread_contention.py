"""Why the CPU server runs one single-threaded batch per core: one batch stream over both
cores against two single-threaded streams, on a quiet machine and beside a process that
takes ~17% of one core in 2 ms bursts (as an event loop or a load generator does).

    python experiments/cpu/thread_contention.py
"""

from __future__ import annotations

import subprocess
import sys
import threading

import torch
from _common import header, interleaved, server_like_batches, tokens_per_second

from gigarouter.embedder import Embedder

NOISE = ("import time\nwhile True:\n    t = time.perf_counter()\n"
         "    while time.perf_counter() - t < 0.002: pass\n    time.sleep(0.010)\n")


def main() -> None:
    embedder = Embedder()
    batches = server_like_batches(embedder, texts=1024)
    tokens = sum(b.num_tokens for b in batches)
    cores = torch.get_num_threads()

    def one_stream() -> float:
        torch.set_num_threads(cores)
        return tokens_per_second(lambda: [embedder.engine.embed(b) for b in batches], tokens)

    def per_core_streams() -> float:
        def work(part):
            torch.set_num_threads(1)
            for b in part:
                embedder.engine.embed(b)
        threads = [threading.Thread(target=work, args=(batches[i::cores],)) for i in range(cores)]

        def run():
            for t in threads:
                t.start()
            for t in threads:
                t.join()
        rate = tokens_per_second(run, tokens)
        torch.set_num_threads(cores)
        return rate

    print(f"# {header()}")
    for label, noisy in (("quiet", False), ("beside ~17% of a core in bursts", True)):
        noise = subprocess.Popen([sys.executable, "-c", NOISE]) if noisy else None
        try:
            rates = interleaved({f"one {cores}-thread stream": one_stream,
                                 f"{cores} single-thread streams": per_core_streams}, rounds=4)
        finally:
            if noise:
                noise.kill()
        a, b = rates.values()
        print(f"{label:34s} " + "  ".join(f"{k}: {v:,.0f} tokens/s" for k, v in rates.items())
              + f"  ratio {b / a:.2f}x")


if __name__ == "__main__":
    main()
