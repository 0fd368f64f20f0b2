"""torch.compile (inductor, CPU, weights frozen) against the hand-built oneDNN path (engine/onednn.py).

Each BERT layer's forward is compiled with ``dynamic=True`` (a batch's token count varies),
attention left to eager (its buckets are planned on the host), ``inductor.config.freezing``
on so inductor packs the linear weights and fuses the elementwise ops around them. The
model runs server-like batches of 1,024 tokens cut from 600 texts of the bench corpus; each
variant is built fresh, warmed by one pass over all batches (compile time included, shown),
then timed over one more.

    python experiments/cpu/torch_compile.py [float32|bfloat16-mixed]
"""

from __future__ import annotations

import sys
import time

import torch
from _common import sorted_batches

import gigarouter.engine.models.bert as bert
from gigarouter.bench.corpus import mixed_corpus
from gigarouter.engine.build import build_model
from gigarouter.engine.onednn import pack_linears
from gigarouter.engine.sources import ResolvedCheckpoint, embedded_model_dir
from gigarouter.recipes.base import Instructions, build_recipe


def batches(texts: list[str]):
    recipe = build_recipe("sbert", embedded_model_dir(), card_instructions=Instructions())
    items = recipe.prepare_texts(texts, input_type="document", instruction=None, truncate="end")
    return sorted_batches([it.token_ids for it in items])


def build(kind: str, mixed: bool):
    d = embedded_model_dir()
    model, _ = build_model(ResolvedCheckpoint(base_dir=d, adapter_dirs=(), tokenizer_dir=d, base_name=None),
                           recipe_name="sbert", dtype=torch.float32, device=torch.device("cpu"), bf16_matmuls=mixed)
    if kind == "onednn":
        pack_linears(model)
    elif kind == "compile":
        import torch._inductor.config as inductor

        inductor.freezing = True
        torch._dynamo.config.cache_size_limit = 64
        bert.attend = torch._dynamo.disable(bert.attend)
        for layer in model.encoder.layer:
            layer.forward = torch.compile(layer.forward, dynamic=True)
    return model


def run(model, work) -> float:
    t = time.perf_counter()
    with torch.inference_mode():
        for b in work:
            model(torch.from_numpy(b.input_ids), torch.from_numpy(b.cu_seqlens))
    return time.perf_counter() - t


if __name__ == "__main__":
    precision = sys.argv[1] if len(sys.argv) > 1 else "bfloat16-mixed"
    texts = list(mixed_corpus(600).texts)
    work = batches(texts)
    for kind in ("aten", "onednn", "compile", "onednn", "compile"):
        model = build(kind, precision == "bfloat16-mixed")
        first = run(model, work)
        print(f"{precision} {kind:<8} {len(texts) / run(model, work):6.1f} inputs/s (first pass {first:.1f} s)",
              flush=True)
