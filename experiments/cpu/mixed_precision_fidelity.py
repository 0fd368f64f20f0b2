"""Which op costs which digits: all-MiniLM-L6-v2 with one kind of op at a time in bfloat16,
every vector compared with sentence-transformers in float32 (issue 18).

    python experiments/cpu/mixed_precision_fidelity.py [--texts 200]

Each variant starts from the float32 model and moves one set of ops to bf16 (or, for
"bfloat16 everywhere", all of them: what ``dtype = "bfloat16"`` runs). Reported per
variant: the minimum and mean cosine over the texts (the first N of the bench corpus),
and the number of vectors under 0.99997 (the issue's bar). The numerics do not depend
on whether the CPU multiplies bf16 natively (both paths round inputs to bf16 and
accumulate in fp32), so this runs on any CPU; only its speed does.
"""

from __future__ import annotations

import argparse
import copy
from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F
from _common import header
from torch import nn

import gigarouter.engine.models.bert as bert
from gigarouter.bench.corpus import mixed_corpus
from gigarouter.engine.base import pack
from gigarouter.engine.build import build_model
from gigarouter.engine.precision import BF16Linear, use_bf16_matmuls
from gigarouter.engine.sources import ResolvedCheckpoint, embedded_model_dir
from gigarouter.pooling.pooling import PoolingMode, pool
from gigarouter.recipes.base import Instructions, build_recipe

BAR = 0.99997


class FusedBiasBF16Linear(BF16Linear):
    """The bias inside the bf16 GEMM (rounded to bf16, added before the output is rounded)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        bias = None if self.bias is None else self.bias.to(torch.bfloat16)
        return F.linear(x.to(torch.bfloat16), self.weight, bias).float()


def swap(model: nn.Module, where: Callable[[str], bool], cls=BF16Linear) -> nn.Module:
    for name, module in list(model.named_modules()):
        if type(module) is nn.Linear and where(name):
            parent, _, child = name.rpartition(".")
            setattr(model.get_submodule(parent), child, cls(module))
    return model


def layernorm_in_bf16(model: nn.Module) -> nn.Module:
    """Every LayerNorm computed on bf16 input with bf16 weights (statistics in bf16 precision)."""
    for module in model.modules():
        if isinstance(module, nn.LayerNorm):
            def forward(x, m=module):
                return F.layer_norm(x.bfloat16(), m.normalized_shape, m.weight.bfloat16(), m.bias.bfloat16(),
                                    m.eps).float()
            module.forward = forward
    return model


def residual_in_bf16(model: nn.Module) -> nn.Module:
    """Every Linear in bf16, and the residual stream (each LayerNorm's output) rounded to bf16 between ops."""
    use_bf16_matmuls(model, where=lambda n: True)
    for module in model.modules():
        if isinstance(module, nn.LayerNorm):
            def forward(x, m=module):
                return F.layer_norm(x, m.normalized_shape, m.weight, m.bias, m.eps).bfloat16().float()
            module.forward = forward
    return model


def attend_in_bf16(q, k, v, layout):
    return SHIPPED_ATTEND(q.bfloat16(), k.bfloat16(), v.bfloat16(), layout).float()


SHIPPED_ATTEND = bert.attend


def not_attention(name: str) -> bool:
    return "attention" not in name


VARIANTS: dict[str, tuple[Callable[[nn.Module], nn.Module], bool]] = {
    # name: (how the fp32 model changes, attention in bf16?)
    "float32": (lambda m: m, False),
    "bfloat16 everywhere (dtype = bfloat16)": (lambda m: m.to(torch.bfloat16), False),
    "every Linear in bf16, the rest float32": (lambda m: use_bf16_matmuls(m, where=lambda n: True), False),
    "  only Q, K, V projections": (lambda m: swap(m, lambda n: "attention.self" in n), False),
    "  only attention output projection": (lambda m: swap(m, lambda n: "attention.output" in n), False),
    "  only FFN up (intermediate)": (lambda m: swap(m, lambda n: "intermediate" in n), False),
    "  only FFN down": (lambda m: swap(m, lambda n: n.endswith(".output.dense") and not_attention(n)), False),
    "shipped bfloat16-mixed: FFN up and down in bf16": (use_bf16_matmuls, False),
    "every Linear, bias inside the bf16 GEMM": (lambda m: swap(m, lambda n: True, FusedBiasBF16Linear), False),
    "every Linear + attention (QK^T, softmax, PV) in bf16": (lambda m: use_bf16_matmuls(m, where=lambda n: True),
                                                             True),
    "every Linear + residual stream rounded to bf16": (residual_in_bf16, False),
    "float32 but LayerNorm in bf16": (layernorm_in_bf16, False),
}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--texts", type=int, default=200)
    args = parser.parse_args()
    from sentence_transformers import SentenceTransformer

    model_dir = embedded_model_dir()
    texts = list(mixed_corpus(args.texts).texts)
    reference = SentenceTransformer(str(model_dir), device="cpu").encode(
        texts, batch_size=32, normalize_embeddings=True, convert_to_numpy=True)
    recipe = build_recipe("sbert", model_dir, card_instructions=Instructions())
    items = recipe.prepare_texts(texts, input_type="document", instruction=None, truncate="end")
    resolved = ResolvedCheckpoint(base_dir=model_dir, adapter_dirs=(), tokenizer_dir=model_dir, base_name="")
    fp32, pooling = build_model(resolved, recipe_name="sbert", dtype=torch.float32, device=torch.device("cpu"))
    assert pooling == PoolingMode.MEAN

    def embed(model: nn.Module) -> np.ndarray:
        out = []
        for start in range(0, len(items), 32):
            batch = pack([it.token_ids for it in items[start:start + 32]])
            cu = torch.from_numpy(batch.cu_seqlens)
            with torch.inference_mode():
                hidden = model(torch.from_numpy(batch.input_ids), cu)
                out.append(pool(hidden, cu, torch.from_numpy(batch.pool_starts), pooling))
        vectors = torch.cat(out).numpy()
        return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)

    print(f"# {header()}; {len(texts)} texts of the bench corpus; cosine to sentence-transformers fp32")
    print(f"{'variant':56s} {'min cosine':>11s} {'mean':>11s} {'< ' + str(BAR):>10s}")
    for name, (change, bf16_attention) in VARIANTS.items():
        model = change(copy.deepcopy(fp32))
        bert.attend = attend_in_bf16 if bf16_attention else SHIPPED_ATTEND
        try:
            cos = np.sum(embed(model) * reference, axis=1)
        finally:
            bert.attend = SHIPPED_ATTEND
        print(f"{name:56s} {cos.min():11.7f} {cos.mean():11.7f} {int((cos < BAR).sum()):10d}")


if __name__ == "__main__":
    main()
