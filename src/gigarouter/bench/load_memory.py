"""Peak host memory while loading a bf16 checkpoint, as a multiple of the checkpoint's size.

The issue's bar: under 1.25x, so a 14.5 GB Mistral-7B loads on a 24 GiB machine.
A scaled-down Mistral-shaped bf16 checkpoint (about 300 MB by default) is
written to a directory, then loaded in a fresh process that measures its own
peak RSS (VmHWM, reset after the imports) before and after: the difference is
what loading cost.
Every weight is touched after loading, so memory-mapped pages count too.

    python -m gigarouter.bench.load_memory [--dir DIR] [--mb 300] [--shards 2] [--mode mmap|read]
    /usr/bin/time -v python -m gigarouter.bench.load_memory measure DIR --mode read

``mmap`` is the CPU path (file-backed views); ``read`` is the path every other
device and dtype takes (plain reads, one tensor buffer at a time).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
from pathlib import Path


def scaled_config(target_mb: int) -> dict:
    """Mistral-7B's proportions at hidden 1024: 8 KV heads of 16, SwiGLU 3.5x, vocab 32000."""
    hidden, inter, vocab = 1024, 3584, 32000
    per_layer = 2 * (2 * hidden * hidden + 2 * hidden * 256 + 3 * hidden * inter)   # bytes in bf16
    layers = max(1, round((target_mb * 1e6 - 2 * vocab * hidden) / per_layer))
    return {"model_type": "mistral", "architectures": ["MistralModel"], "vocab_size": vocab, "hidden_size": hidden,
            "intermediate_size": inter, "num_hidden_layers": layers, "num_attention_heads": 16,
            "num_key_value_heads": 4, "head_dim": 64, "rms_norm_eps": 1e-5, "rope_theta": 10000.0,
            "sliding_window": 4096, "hidden_act": "silu", "torch_dtype": "bfloat16"}


def write_random_checkpoint(directory: Path, config: dict, *, shards: int = 1, seed: int = 0) -> int:
    """A bf16 Mistral checkpoint with random weights; returns its size in bytes (weights files only)."""
    import torch

    from gigarouter.engine.merge import save_checkpoint

    g = torch.Generator().manual_seed(seed)
    with torch.device("meta"):
        from gigarouter.engine.build import model_for

        model = model_for(config, "e5")
    named = [("model." + name, (torch.randn(p.shape, generator=g) * 0.02).to(torch.bfloat16))
             for name, p in model.named_parameters()]
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "config.json").write_text(json.dumps(config))
    total = sum(t.numel() * t.element_size() for _, t in named)
    save_checkpoint(directory, named, max_shard_bytes=-(-total // shards))
    return sum(p.stat().st_size for p in directory.glob("*.safetensors"))


def _status_bytes(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"no {field} in /proc/self/status")


def _reset_peak() -> int:
    """Start the peak-RSS count here; returns the baseline it counts from.

    ``ru_maxrss`` survives fork (a child starts at its parent's peak), so it is
    only a last resort; Linux's VmHWM belongs to this process image, and writing
    5 to clear_refs resets it to the current RSS. Where that is not allowed, the
    baseline is the current RSS, which can only overstate what loading added.
    """
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass
    try:
        return _status_bytes("VmRSS")
    except (OSError, RuntimeError):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _peak_bytes() -> int:
    try:
        return _status_bytes("VmHWM")
    except (OSError, RuntimeError):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024      # Linux reports KiB


def measure(directory: Path, *, mode: str) -> dict:
    """Load ``directory`` in bf16 on CPU in this process; the peak RSS it added over the baseline."""
    import torch

    from gigarouter.engine.build import model_for
    from gigarouter.engine.loading import load_weights, read_config

    model = model_for(read_config(directory), "e5")          # meta device: costs nothing
    baseline = _reset_peak()
    load_weights(model, directory, dtype=torch.bfloat16, device=torch.device("cpu"),
                 checkpoint_key=model.checkpoint_key, zero_copy=mode == "mmap")
    with torch.no_grad():
        for p in model.parameters():                          # fault every page in: 4 KiB = 2048 bf16
            float(p.reshape(-1)[::2048].float().sum())
    size = sum(p.stat().st_size for p in directory.glob("*.safetensors"))
    peak = _peak_bytes()
    return {"mode": mode, "checkpoint_bytes": size, "baseline_rss_bytes": baseline, "peak_rss_bytes": peak,
            "added_bytes": peak - baseline, "ratio": (peak - baseline) / size}


def measure_in_subprocess(directory: Path, *, mode: str) -> dict:
    """``measure`` in a fresh interpreter, so nothing this process holds is counted."""
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    out = subprocess.run([sys.executable, "-m", "gigarouter.bench.load_memory", "measure", str(directory),
                          "--mode", mode], check=True, capture_output=True, text=True, env=env)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("command", nargs="?", default="run", choices=["run", "measure"])
    parser.add_argument("directory", nargs="?", type=Path)
    parser.add_argument("--mb", type=int, default=300)
    parser.add_argument("--shards", type=int, default=2)
    parser.add_argument("--mode", choices=["mmap", "read", "both"], default="both")
    args = parser.parse_args(argv)
    if args.command == "measure":
        print(json.dumps(measure(args.directory, mode=args.mode)))
        return
    with tempfile.TemporaryDirectory() as tmp:
        directory = args.directory or Path(tmp) / "ckpt"
        size = write_random_checkpoint(directory, scaled_config(args.mb), shards=args.shards)
        print(f"checkpoint: {size / 1e6:.0f} MB in {args.shards} shard(s), bf16")
        for mode in (["mmap", "read"] if args.mode == "both" else [args.mode]):
            r = measure_in_subprocess(directory, mode=mode)
            print(f"{mode:5s} peak RSS added {r['added_bytes'] / 1e6:7.0f} MB = {r['ratio']:.3f}x the checkpoint")


if __name__ == "__main__":
    main()
