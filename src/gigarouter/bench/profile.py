"""Where a running server's time goes: py-spy samples folded into pipeline stages.

``py-spy record --idle --threads -f raw`` gives one line per distinct stack
with its sample count. Each stack is put in the first category whose marker
appears in it (most specific first), per thread kind (the event loop, the
device thread, the tokenizer/thread-pool workers). A thread's share of
"idle" is time it spent waiting (epoll, a condition variable, a queue).

py-spy is a separate tool (``pip install py-spy``); this module only reads
its output, and ``record`` runs it on a pid the caller started.
"""

from __future__ import annotations

import shutil
import subprocess
from collections import Counter, defaultdict
from pathlib import Path

#: a stack whose innermost frame is one of these is a thread waiting, not working
#: Under uvloop the loop itself is C, so a main thread whose innermost Python frame is
#: asyncio's Runner.run is inside uvloop: waiting in epoll (or parsing HTTP in C, too brief to matter).
IDLE_LEAVES = ("EpollSelector.select", "Condition.wait", "Queue.get", "Event.wait", "_worker (concurrent",
               "select (selectors", "lock.acquire", "Thread.join", "sleep (", "Runner.run (asyncio/runners")

#: (category, markers): a busy stack belongs to the first category with a marker in any frame.
CATEGORIES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("attention (grid + sdpa)", ("attend (", "to_grid", "from_grid", "AttentionLayout")),
    ("linear layers", ("Linear.forward",)),
    ("model: other ops (layernorm, gelu, embeddings)", ("gigarouter/engine/models",)),
    ("pooling", ("pooling/pooling.py",)),
    ("engine: host<->device, numpy", ("TorchEngine.embed",)),
    ("tokenize (recipe)", ("prepare_texts", "prepare_token_ids", "encode_batch", "recipes/")),
    ("response: normalise + JSON/base64", ("_payload", "_dumps", "_answer", "finish (", "quantize", "to_base64",
                                           "orjson")),
    ("request: read + parse JSON body", ("read_json_body", "parse_embedding_request", "json/decoder",
                                          "json/__init__")),
    ("scheduler: plan + pack + deliver", ("plan_batch", "_next_batch", "pack (", "_deliver", "Scheduler.",
                                           "scheduler/")),
    ("accounts gate", ("accounts/",)),
    ("HTTP server + framework (uvicorn, h11, starlette, fastapi)", ("uvicorn", "h11", "starlette", "fastapi",
                                                                    "middleware")),
    ("asyncio machinery", ("asyncio/",)),
    ("other", ("",)),
)


def thread_kind(thread_frame: str) -> str:
    if "device-" in thread_frame:
        return "device threads (mean of each)"
    if "MainThread" in thread_frame:
        return "event loop (main thread)"
    if "AnyIO worker" in thread_frame or "asyncio_" in thread_frame or "ThreadPoolExecutor" in thread_frame:
        return "thread-pool workers (tokenize, big JSON)"
    return "other threads"


def categorize(frames: list[str]) -> str:
    if not frames or any(m in frames[-1] for m in IDLE_LEAVES):
        return "idle"
    for name, markers in CATEGORIES:
        if any(m in f for m in markers for f in frames):
            return name
    return "other"


def summarize_raw(text: str) -> dict:
    """``py-spy -f raw`` output -> {thread kind: {"samples": n, "shares": {category: fraction}}}."""
    per: dict[str, Counter] = defaultdict(Counter)
    for line in text.splitlines():
        if not line.strip() or " " not in line:
            continue
        stack, count = line.rsplit(" ", 1)
        frames = stack.split(";")
        per[thread_kind(frames[0])][categorize(frames[1:])] += int(count)
    out = {}
    for kind, counts in sorted(per.items()):
        total = sum(counts.values())
        out[kind] = {"samples": total, "shares": {k: v / total for k, v in counts.most_common()}}
    return out


def busy_shares(summary: dict) -> dict:
    """The same shares with idle left out: what a thread did while it was doing something."""
    out = {}
    for kind, entry in summary.items():
        busy = {k: v for k, v in entry["shares"].items() if k != "idle"}
        total = sum(busy.values())
        out[kind] = {"busy_fraction": total, "shares": {k: v / total for k, v in busy.items()} if total else {}}
    return out


def record(pid: int, *, seconds: float, out: Path, rate: int = 100, py_spy: str | None = None) -> Path:
    """Run ``py-spy record`` on ``pid`` for ``seconds`` (raw format, idle stacks and thread names kept)."""
    exe = py_spy or shutil.which("py-spy")
    if not exe:
        raise FileNotFoundError("py-spy not found; pip install py-spy (any virtual environment) and pass its path")
    argv = [exe, "record", "-p", str(pid), "-d", str(int(seconds)), "-r", str(rate), "--idle", "--threads",
            "-f", "raw", "-o", str(out), "--nonblocking"]
    subprocess.run(argv, check=True, capture_output=True, timeout=seconds + 60)
    return out


async def profile_under_load(server, requests, *, concurrency: int, seconds: float, out_dir: Path,
                             label: str, py_spy: str | None = None) -> dict:
    """Record ``server`` with py-spy while a closed-loop load of ``seconds`` runs against it."""
    import asyncio

    from gigarouter.bench.loadgen import Target, run_load
    from gigarouter.bench.servers import SERVED_NAME

    target = Target(server.spec.url, SERVED_NAME, server.spec.embeddings_path)
    raw = out_dir / f"{label}.pyspy.txt"
    load = asyncio.create_task(run_load(target, requests, concurrency=concurrency, duration=seconds + 2,
                                        server_pid=server.pid))
    await asyncio.sleep(1.0)             # past the warm-up, into the steady state
    await asyncio.to_thread(record, server.pid, seconds=seconds, out=raw, py_spy=py_spy)
    result = (await load).to_dict()
    summary = summarize_raw(raw.read_text())
    return {"label": label, "concurrency": concurrency, "load": result, "threads": summary,
            "busy": busy_shares(summary), "raw": raw.name}
