"""torch's dynamic int8 quantization (fbgemm; VNNI where the CPU has it) as a CPU opt-in: speed
against float32, and cosine to float32 on the same batches. Tried for issue 18, not shipped.

Weights are int8 (per tensor, or per output channel); activations are quantized per batch at run
time, so a vector depends on the other sequences of its batch, which an embeddings server must
not allow even before fidelity is counted.

    python experiments/cpu/int8_dynamic.py
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import torch
from torch import nn
from torch.ao.quantization import default_dynamic_qconfig, per_channel_dynamic_qconfig, quantize_dynamic

sys.path.insert(0, str(Path(__file__).parent))
from torch_compile import batches

from gigarouter.bench.corpus import mixed_corpus
from gigarouter.engine.build import build_model
from gigarouter.engine.sources import ResolvedCheckpoint, embedded_model_dir
from gigarouter.pooling.modes import PoolingMode
from gigarouter.pooling.pooling import pool


def model(qconfig=None) -> nn.Module:
    d = embedded_model_dir()
    m, _ = build_model(ResolvedCheckpoint(base_dir=d, adapter_dirs=(), tokenizer_dir=d, base_name=None),
                       recipe_name="sbert", dtype=torch.float32, device=torch.device("cpu"))
    if qconfig is None:
        return m
    return quantize_dynamic(m, {name: qconfig for name, mod in m.named_modules() if isinstance(mod, nn.Linear)},
                            dtype=torch.qint8)


def encode(m: nn.Module, work) -> torch.Tensor:
    out = []
    with torch.inference_mode():
        for b in work:
            cu = torch.from_numpy(b.cu_seqlens)
            hidden = m(torch.from_numpy(b.input_ids), cu)
            out.append(nn.functional.normalize(pool(hidden, cu, torch.from_numpy(b.pool_starts), PoolingMode.MEAN)))
    return torch.cat(out)


if __name__ == "__main__":
    work = batches(list(mixed_corpus(600).texts))
    variants = {"float32": None, "int8, per-tensor weights": default_dynamic_qconfig,
                "int8, per-channel weights": per_channel_dynamic_qconfig}
    reference = None
    for _ in range(2):
        for name, qconfig in variants.items():
            m = model(qconfig)
            encode(m, work)
            t = time.perf_counter()
            vectors = encode(m, work)
            rate = 600 / (time.perf_counter() - t)
            reference = vectors if reference is None else reference
            cos = (vectors * reference).sum(1)
            print(f"{name:<28} {rate:6.1f} inputs/s, min cosine to float32 {float(cos.min()):.4f}, "
                  f"mean {float(cos.mean()):.4f}", flush=True)
