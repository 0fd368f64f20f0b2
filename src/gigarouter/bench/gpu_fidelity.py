"""bf16 against fp32 on a Mistral-7B-shaped random checkpoint, plus load time and host memory.

For a machine with a GPU (about 45 GB of device memory: fp32 and bf16 copies side
by side). Writes a random bf16 checkpoint with the real 7B shapes (14.5 GB, in
5 GiB shards) unless --dir already holds one, then:

- loads it in bf16 on the device, timing the load and measuring the host's peak
  RSS added (the 1.25x bar of the issue);
- loads it again in fp32 as the reference;
- embeds packed random token sequences (1 to 4096 tokens) both ways, causal +
  last token (Linq/e5) and bidirectional + mean (LLM2Vec), and reports the
  cosine of each bf16 vector to its fp32 twin;
- checks a packed bf16 batch against its sequences one by one, and the varlen
  flash-attention path against the padded-grid path;
- records which attention path each packed bf16 batch ran (``attention.PATH_CALLS``)
  and exits non-zero when it was not the intended one (varlen on CUDA, ``--expect-path``);
- times a forward pass over a full token budget (FLOPs: no embedding lookup, attention
  included).

    python -m gigarouter.bench.gpu_fidelity [--dir DIR] [--out report.json]
    python -m gigarouter.bench.gpu_fidelity --tiny --device cpu     # a smoke run anywhere
"""

from __future__ import annotations

import argparse
import json
import time
from collections import Counter
from pathlib import Path

import numpy as np
import torch

from gigarouter.bench.load_memory import _peak_bytes, _reset_peak
from gigarouter.bench.shapes import model_flops
from gigarouter.engine.models import attention
from gigarouter.pooling.pooling import pool

MISTRAL_7B = {"model_type": "mistral", "architectures": ["MistralModel"], "vocab_size": 32000, "hidden_size": 4096,
              "intermediate_size": 14336, "num_hidden_layers": 32, "num_attention_heads": 32,
              "num_key_value_heads": 8, "head_dim": 128, "rms_norm_eps": 1e-5, "rope_theta": 10000.0,
              "sliding_window": 4096, "hidden_act": "silu", "torch_dtype": "bfloat16"}
TINY = {**MISTRAL_7B, "hidden_size": 64, "intermediate_size": 224, "num_hidden_layers": 2, "num_attention_heads": 4,
        "num_key_value_heads": 2, "head_dim": 16}
LENGTHS = (1, 7, 64, 300, 512, 1000, 2048, 4096)


def write_checkpoint(directory: Path, config: dict, *, device: torch.device, seed: int = 0) -> int:
    """Random bf16 weights (std 0.02, norms near 1) in Hugging Face layout; returns bytes written."""
    from gigarouter.engine.build import model_for
    from gigarouter.engine.merge import MAX_SHARD_BYTES, save_checkpoint

    model = model_for(config, "e5")
    g = torch.Generator(device=device).manual_seed(seed)
    named = []
    for name, p in model.named_parameters():
        t = torch.randn(p.shape, generator=g, device=device) * (0.02 if p.dim() > 1 else 0.1)
        named.append(("model." + name, (t + (1.0 if p.dim() == 1 else 0.0)).to(torch.bfloat16).cpu()))
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "config.json").write_text(json.dumps(config))
    save_checkpoint(directory, named, max_shard_bytes=MAX_SHARD_BYTES)
    return sum(p.stat().st_size for p in directory.glob("*.safetensors"))


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def load(directory: Path, *, recipe: str, dtype: torch.dtype, device: torch.device) -> tuple:
    # Here, not at the top: bench/gpu_first_run.py uses this module on a GPU image that lacks
    # what engine/sources.py pulls in (settings, platformdirs).
    from gigarouter.engine.build import build_model
    from gigarouter.engine.sources import ResolvedCheckpoint

    resolved = ResolvedCheckpoint(base_dir=directory, adapter_dirs=(), tokenizer_dir=directory, base_name="bench")
    baseline = _reset_peak()
    start = time.perf_counter()
    model, pooling = build_model(resolved, recipe_name=recipe, dtype=dtype, device=device)
    model.attention_path = attention.select_attention(device, dtype, max_seq_len=max(LENGTHS),
                                                      **model.attention_shape()).path
    sync(device)
    return model, pooling, time.perf_counter() - start, _peak_bytes() - baseline


def sequences(vocab: int, lengths=LENGTHS, seed: int = 1) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(3, vocab, (n,), generator=g) for n in lengths]


@torch.inference_mode()
def embed(model, pooling, seqs: list[torch.Tensor], device: torch.device) -> torch.Tensor:
    ids = torch.cat(seqs).to(device)
    cu = np.concatenate([[0], np.cumsum([len(s) for s in seqs])])      # host copy, as the engine passes it
    return pool(model(ids, cu), cu, np.zeros(len(seqs), dtype=np.int64), pooling).float().cpu()


def cosine(a: torch.Tensor, b: torch.Tensor) -> list[float]:
    return torch.nn.functional.cosine_similarity(a, b, dim=1).tolist()


def low_precision_runs(low, pooling, seqs: list[torch.Tensor], device: torch.device) -> dict:
    """The bf16 model packed (on its chosen path, recording which path ran), one by one, and on the grid path."""
    before = Counter(attention.PATH_CALLS)
    packed = embed(low, pooling, seqs, device)
    ran = dict(attention.PATH_CALLS - before)
    one_by_one = torch.cat([embed(low, pooling, [s], device) for s in seqs])
    chosen, low.attention_path = low.attention_path, attention.GRID     # the padded-grid path
    try:
        grid = embed(low, pooling, seqs, device)
    finally:
        low.attention_path = chosen
    return {"packed": packed, "one_by_one": one_by_one, "grid": grid, "path": chosen, "calls": ran}


def runs_row(recipe: str, pooling, seqs: list[torch.Tensor], low: dict, reference: torch.Tensor, *,
             expect_path: str) -> dict:
    return {"recipe": recipe, "pooling": pooling.value, "lengths": [len(s) for s in seqs],
            "attention_path": low["path"], "attention_calls": low["calls"], "intended_path": expect_path,
            "path_ok": set(low["calls"]) == {expect_path},
            "bf16_vs_fp32_cosine": cosine(low["packed"], reference),
            "batch_vs_one_by_one_cosine": cosine(low["packed"], low["one_by_one"]),
            "varlen_vs_grid_cosine": cosine(low["packed"], low["grid"])}


def fidelity(directory: Path, *, recipe: str, device: torch.device, seqs: list[torch.Tensor],
             expect_path: str) -> dict:
    low, pooling, load_s, host_added = load(directory, recipe=recipe, dtype=torch.bfloat16, device=device)
    size = sum(p.stat().st_size for p in directory.glob("*.safetensors"))
    runs = low_precision_runs(low, pooling, seqs, device)
    del low
    high, _, _, _ = load(directory, recipe=recipe, dtype=torch.float32, device=device)
    reference = embed(high, pooling, seqs, device)
    del high
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return {**runs_row(recipe, pooling, seqs, runs, reference, expect_path=expect_path), "bf16_load_seconds": load_s,
            "host_peak_added_bytes": host_added, "host_peak_ratio": host_added / size, "checkpoint_bytes": size}


@torch.inference_mode()
def throughput(directory: Path, *, device: torch.device, tokens: int, seq_len: int = 512) -> dict:
    model, _, _, _ = load(directory, recipe="e5", dtype=torch.bfloat16, device=device)
    n = max(1, tokens // seq_len)
    ids = torch.randint(3, model.config.vocab_size, (n * seq_len,), device=device)
    cu = np.arange(0, n * seq_len + 1, seq_len)
    model(ids, cu)                                                         # warm-up
    sync(device)
    start = time.perf_counter()
    for _ in range(3):
        model(ids, cu)
    sync(device)
    seconds = (time.perf_counter() - start) / 3
    flops = model_flops(model, [seq_len] * n)
    return {"tokens": n * seq_len, "seconds": seconds, "tokens_per_second": n * seq_len / seconds,
            "attention_path": model.attention_path, "achieved_tflops": flops / seconds / 1e12}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dir", type=Path, default=Path("/tmp/gigarouter-7b-random"))
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--tiny", action="store_true", help="a 2-layer model of the same family (smoke test)")
    parser.add_argument("--tokens", type=int, default=32768, help="token budget for the throughput pass")
    parser.add_argument("--max-len", type=int, default=max(LENGTHS), help="longest test sequence")
    parser.add_argument("--expect-path", choices=attention.PATHS,
                        help="the attention path packed bf16 batches must run (default: varlen on CUDA, else grid)")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    expect = args.expect_path or (attention.VARLEN if device.type == "cuda" else attention.GRID)
    config = TINY if args.tiny else MISTRAL_7B
    if not (args.dir / "config.json").exists():
        start = time.perf_counter()
        size = write_checkpoint(args.dir, config, device=device)
        print(f"wrote {size / 1e9:.2f} GB random bf16 checkpoint in {time.perf_counter() - start:.0f} s")
    seqs = sequences(config["vocab_size"], [n for n in LENGTHS if n <= args.max_len])
    report = {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else str(device),
              "config": config, "runs": [fidelity(args.dir, recipe=r, device=device, seqs=seqs, expect_path=expect)
                                         for r in ("e5", "llm2vec")],
              "throughput": throughput(args.dir, device=device, tokens=args.tokens)}
    for run in report["runs"]:
        print(f"{run['recipe']:8s} bf16 vs fp32 cosine min {min(run['bf16_vs_fp32_cosine']):.6f}  "
              f"batch vs single min {min(run['batch_vs_one_by_one_cosine']):.6f}  "
              f"varlen vs grid min {min(run['varlen_vs_grid_cosine']):.6f}  "
              f"load {run['bf16_load_seconds']:.1f} s, host peak {run['host_peak_ratio']:.2f}x  "
              f"attention ran {run['attention_calls']} (intended {run['intended_path']})")
    t = report["throughput"]
    print(f"forward: {t['tokens_per_second']:.0f} tokens/s, {t['achieved_tflops']:.0f} TFLOP/s")
    if args.out:
        args.out.write_text(json.dumps(report, indent=2))
    wrong = [r for r in report["runs"] if not r["path_ok"]]
    if wrong:
        raise SystemExit(f"attention ran {[r['attention_calls'] for r in wrong]}, not the intended "
                         f"{expect!r} path: {wrong[0]['attention_path']!r} was chosen")
    return report


if __name__ == "__main__":
    main()
