"""How much memory a burst of refused web sign-ups costs the server (issue 12).

Starts ``gigarouter serve`` (the default model, accounts on, a temp data dir) as a
subprocess, then sends BURST sign-ups at once from one address with fresh emails:
the per-address limit (10 an hour) refuses all but 10. Prints the server's
resident memory before, its high-water mark and resident memory after, and the
statuses. Before issue 12 every sign-up hashed its password (argon2id, 64 MiB
each) before the limit was checked, all at once; now the limit and the email are
checked first and at most two hashes run at a time.

    python experiments/accounts/signup_memory.py [BURST]
"""

from __future__ import annotations

import asyncio
import collections
import os
import re
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

BURST = int(sys.argv[1]) if len(sys.argv) > 1 else 120


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def memory(pid: int) -> dict[str, float]:
    """VmRSS and VmHWM (peak) in MiB, from /proc."""
    fields = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines() if ":" in line)
    return {k: int(fields[k].split()[0]) / 1024 for k in ("VmRSS", "VmHWM")}


async def burst(base: str) -> collections.Counter:
    async with httpx.AsyncClient(base_url=base, timeout=120) as client:
        page = await client.get("/signup")
        token = re.search(r'name="csrf_token" value="([0-9a-f]{64})"', page.text).group(1)

        async def one(i: int) -> int:
            r = await client.post("/signup", data={"email": f"burst{i}-{os.getpid()}@example.com",
                                                   "password": "a long enough password 1", "csrf_token": token})
            return r.status_code

        return collections.Counter(await asyncio.gather(*(one(i) for i in range(BURST))))


def main() -> None:
    port = free_port()
    data = Path(tempfile.mkdtemp(prefix="signup-memory-"))
    config = data / "config.toml"
    config.write_text(f'auth = "required"\nserver_secret = "signup-memory-secret-0123456789"\n'
                      f'data_dir = "{data}"\n')
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    server = subprocess.Popen([sys.executable, "-m", "gigarouter.cli", "serve", "--config", str(config),
                               "--port", str(port), "--log-level", "warning"])
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180
        while True:
            try:
                if httpx.get(f"{base}/ready", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline and server.poll() is None, "the server did not start"
            time.sleep(0.2)
        httpx.get(f"{base}/signup")          # warm the web pages once
        before = memory(server.pid)
        started = time.perf_counter()
        statuses = asyncio.run(burst(base))
        elapsed = time.perf_counter() - started
        time.sleep(1.0)
        after = memory(server.pid)
    finally:
        server.terminate()
        server.wait(timeout=30)
    print(f"commit {commit}, {os.cpu_count()} cores, burst of {BURST} sign-ups from one address")
    print(f"statuses: {dict(sorted(statuses.items()))} in {elapsed:.1f} s")
    print(f"RSS before {before['VmRSS']:.0f} MiB; peak {after['VmHWM']:.0f} MiB; RSS after {after['VmRSS']:.0f} MiB")


if __name__ == "__main__":
    main()
