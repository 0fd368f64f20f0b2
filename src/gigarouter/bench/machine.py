"""What a number was measured on, and how fast that device multiplies matrices.

Every result file carries ``machine_info()`` (CPU model, cores, load average,
library versions, git commit, date) beside its numbers, and engine results are
judged against ``matmul_rate()`` measured in the same run, so a figure from a
busy or different machine explains itself.
"""

from __future__ import annotations

import datetime as dt
import os
import platform
import subprocess
import time
from collections.abc import Iterator
from importlib import metadata
from pathlib import Path


def cpu_model() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=5).stdout
    except (OSError, subprocess.SubprocessError):
        out = ""
    for line in out.splitlines():
        if line.startswith("Model name:"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def git_commit(cwd: Path | None = None) -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=5,
                             cwd=cwd or Path(__file__).parent)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


def machine_info(*, device: str = "cpu") -> dict:
    info = {
        "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "cpu": cpu_model(),
        "cpu_cores": os.cpu_count(),
        "load_average": [round(x, 2) for x in os.getloadavg()],
        "python": platform.python_version(),
        "torch": _version("torch"),
        "transformers": _version("transformers"),
        "sentence_transformers": _version("sentence-transformers"),
        "gigarouter_commit": git_commit(),
    }
    if device.startswith("cuda"):
        import torch

        info["gpu"] = torch.cuda.get_device_name(torch.device(device))
    return info


def matmul_rate(*, device: str = "cpu", dtype: str = "auto", sizes: tuple[int, ...] | None = None,
                repeats: int = 3) -> dict:
    """Dense square matmul FLOP/s on ``device`` (fp32 on CPU, bf16 on GPU unless ``dtype`` says otherwise).

    Several sizes are tried (the fastest size depends on caches and the BLAS);
    the best time over sizes and ``repeats`` is taken as the device's
    arithmetic limit, since noise only ever slows a run down.

    On CUDA each sample is a run of ``10 * repeats`` products timed with CUDA events
    after a warm-up, on random operands (zeros run faster) of two alternating pairs,
    each larger than the L2 cache: a host clock around one product measures the
    launch and the synchronize as much as the product.
    """
    import torch

    dev = torch.device(device)
    if dtype == "auto":
        dtype = "bfloat16" if dev.type == "cuda" else "float32"
    tdtype = getattr(torch, dtype)
    sizes = sizes or ((4096, 8192) if dev.type == "cuda" else (1024, 2048))
    rates: dict[int, list[float]] = {}
    with torch.inference_mode():
        for n in sizes:
            if dev.type == "cuda":
                rates[n] = _cuda_matmul_rates(n, tdtype, dev, repeats)
                continue
            a = torch.randn(n, n, device=dev, dtype=tdtype)
            b = torch.randn(n, n, device=dev, dtype=tdtype)
            torch.matmul(a, b)  # warm-up: kernel selection, thread pool start
            for _ in range(repeats):
                t0 = time.perf_counter()
                torch.matmul(a, b)
                rates.setdefault(n, []).append(2.0 * n ** 3 / (time.perf_counter() - t0))
    all_rates = sorted(r for rs in rates.values() for r in rs)
    best_size = max(rates, key=lambda n: max(rates[n]))
    return {"device": str(dev), "dtype": dtype, "sizes": list(sizes), "best_size": best_size,
            "threads": torch.get_num_threads(), "best_flops": all_rates[-1],
            "median_flops": all_rates[len(all_rates) // 2],
            "timing": "cuda events, 10 products per sample" if dev.type == "cuda" else "host clock per product"}


def _cuda_matmul_rates(n: int, dtype, dev, repeats: int, per_sample: int = 10) -> list[float]:
    import torch

    pairs = [(torch.randn(n, n, device=dev, dtype=dtype), torch.randn(n, n, device=dev, dtype=dtype))
             for _ in range(2)]
    out = torch.empty(n, n, device=dev, dtype=dtype)
    for a, b in pairs * 2:                       # warm-up: cuBLAS handle, heuristics, clocks up
        torch.matmul(a, b, out=out)
    rates = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for i in range(per_sample):
            a, b = pairs[i % 2]
            torch.matmul(a, b, out=out)
        end.record()
        end.synchronize()
        rates.append(2.0 * n ** 3 * per_sample / (start.elapsed_time(end) / 1000))
    return rates


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU seconds a process (all its threads) has used, from /proc; None if unknown."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    ticks = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12])) / ticks


def rss_bytes(pid: int) -> int | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def group_cpu_seconds(pgid: int) -> float | None:
    """CPU seconds of every live process in a process group (a server and the workers it spawned)."""
    used = [cpu for _, _, group, cpu in _proc_stats() if group == pgid]
    return sum(used) if used else None


def tree_cpu_seconds(*roots: int) -> float | None:
    """CPU seconds of live processes descended from ``roots`` (themselves included), whatever their group.

    A Ray instance's workers and replicas leave the process group of the process that
    started it, but stay its descendants (through the raylet).
    """
    used = _process_table()
    wanted = descendants(*roots, table=used)
    if not wanted:
        return None
    return sum(used[p][1] for p in wanted)


def descendants(*roots: int, table: dict[int, tuple[int, float]] | None = None) -> set[int]:
    """Live pids descended from ``roots``, themselves included."""
    table = table if table is not None else _process_table()
    wanted = {r for r in roots if r in table}
    changed = bool(wanted)
    while changed:
        changed = False
        for pid, (parent, _) in table.items():
            if parent in wanted and pid not in wanted:
                wanted.add(pid)
                changed = True
    return wanted


def _process_table() -> dict[int, tuple[int, float]]:
    """pid -> (parent pid, CPU seconds used) for every live process."""
    return {pid: (parent, cpu) for pid, parent, _, cpu in _proc_stats()}


def _proc_stats() -> Iterator[tuple[int, int, int, float]]:
    """(pid, parent pid, process group, CPU seconds used) of every live process, from /proc/PID/stat."""
    ticks = os.sysconf("SC_CLK_TCK")
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:   # the command name may hold spaces and parentheses: split after its last ')'
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:     # the process ended while we looked
            continue
        yield int(entry.name), int(fields[1]), int(fields[2]), (int(fields[11]) + int(fields[12])) / ticks
