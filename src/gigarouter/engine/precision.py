"""Which precision a model runs in, chosen once per model from the device and what the CPU has.

Four precisions (``dtype`` in a ``[[models]]`` entry picks one; ``auto`` lets this module choose):

- ``float32``: everything in float32.
- ``bfloat16`` / ``float16``: weights and activations in the half type (the GPU default).
- ``bfloat16-mixed``: the feed-forward matmuls (two thirds of a BERT layer's FLOPs, more
  in a gated MLP) in bfloat16: bf16 weights, the input cast to bf16, float32 accumulation
  inside the GEMM. Everything else float32: the attention projections and attention
  itself (Q/K/V rounding costs the most digits per FLOP), the residual stream,
  LayerNorm/RMSNorm statistics, softmax, GELU/SiLU, embeddings, pooling sums. On
  all-MiniLM-L6-v2, 200 texts of the bench corpus keep cosine >= 0.99997 to
  sentence-transformers fp32 (min 0.999974), where plain ``bfloat16`` drops to 0.99988 and
  every Linear in bf16 to 0.99996 (docs/benchmarks.md, section 13: which op costs which digits).

``auto`` = ``bfloat16`` on a GPU; on a CPU ``bfloat16-mixed`` where the CPU multiplies
bf16 natively (AMX ``amx_bf16`` or ``avx512_bf16``, where oneDNN's bf16 GEMM runs at
2-5x the fp32 rate), else ``float32`` (without those instructions a bf16 GEMM is
emulated and slower than fp32). That is the rule OpenVINO applies to its own default.
``choose_precision`` is a pure function of the request, the device and the CPU flags.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

FLOAT32 = "float32"
BFLOAT16 = "bfloat16"
FLOAT16 = "float16"
BFLOAT16_MIXED = "bfloat16-mixed"
PRECISIONS = (FLOAT32, BFLOAT16, FLOAT16, BFLOAT16_MIXED)

#: /proc/cpuinfo flags of CPUs whose bf16 matmuls beat fp32 (Intel AMX; AVX-512 BF16 on Intel
#: Cooper Lake and later and AMD Zen 4 and later).
BF16_MATMUL_FLAGS = ("amx_bf16", "avx512_bf16")

_TORCH_DTYPES = {FLOAT32: torch.float32, BFLOAT16: torch.bfloat16, FLOAT16: torch.float16,
                 BFLOAT16_MIXED: torch.float32}


@dataclass(frozen=True)
class Precision:
    """The precision one model runs in, and why (the start-up log and /v1/models say both)."""

    name: str
    reason: str

    @property
    def weights_dtype(self) -> torch.dtype:
        """The dtype weights load in; a mixed model casts its Linear weights to bf16 afterwards."""
        return _TORCH_DTYPES[self.name]

    @property
    def mixed(self) -> bool:
        return self.name == BFLOAT16_MIXED


def cpu_flags(cpuinfo: Path = Path("/proc/cpuinfo")) -> frozenset[str]:
    """The CPU's feature flags (empty where /proc/cpuinfo is missing or unreadable, e.g. macOS)."""
    try:
        text = cpuinfo.read_text()
    except OSError:
        return frozenset()
    for line in text.splitlines():
        if line.startswith("flags"):
            return frozenset(line.partition(":")[2].split())
    return frozenset()


def choose_precision(requested: str, *, device_type: str, flags: frozenset[str] | set[str]) -> Precision:
    """``requested`` (auto or one of PRECISIONS) on ``device_type`` with CPU ``flags`` -> the precision."""
    if requested != "auto":
        if requested not in PRECISIONS:
            raise ValueError(f"precision must be auto or one of {', '.join(PRECISIONS)}, not {requested!r}")
        return Precision(requested, "set by dtype in the model's config")
    if device_type == "cuda":
        return Precision(BFLOAT16, "auto: the GPU default")
    native = [f for f in BF16_MATMUL_FLAGS if f in flags]
    if native:
        return Precision(BFLOAT16_MIXED, f"auto: this CPU multiplies bf16 natively ({', '.join(native)})")
    return Precision(FLOAT32, f"auto: this CPU has no native bf16 matmul ({' or '.join(BF16_MATMUL_FLAGS)})")


class BF16Linear(nn.Module):
    """``nn.Linear`` with its matmul in bfloat16: input and output float32, the bias added in float32.

    The GEMM accumulates in float32 (oneDNN on AMX/AVX-512-BF16, ATen's fallback elsewhere) and
    rounds its result to bf16 once; the bias is added after, so it keeps every digit. Parameter
    names are nn.Linear's, so state dicts and LoRA merges see the same keys.
    """

    def __init__(self, linear: nn.Linear) -> None:
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.weight = nn.Parameter(linear.weight.detach().to(torch.bfloat16), requires_grad=False)
        bias = linear.bias
        self.bias = None if bias is None else nn.Parameter(bias.detach().float(), requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # x: [T, in] float32 -> [T, out] float32
        out = F.linear(x.to(torch.bfloat16), self.weight).float()
        return out if self.bias is None else out.add_(self.bias)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}"


def is_feed_forward(name: str) -> bool:
    """A Linear outside attention: BERT's ``intermediate.dense`` / ``output.dense``, Mistral's ``mlp.*``
    (not BERT's ``attention.self.query`` or ``attention.output.dense``, nor Mistral's ``self_attn.*``)."""
    return "attention" not in name and "attn" not in name


def use_bf16_matmuls(model: nn.Module, *, where: Callable[[str], bool] = is_feed_forward) -> nn.Module:
    """Swap each ``nn.Linear`` of a float32 ``model`` whose name ``where`` accepts (by default the
    feed-forward ones) for a ``BF16Linear``, in place. The rest stays float32. Returns the model."""
    targets = [(name, module) for name, module in model.named_modules()
               if type(module) is nn.Linear and where(name)]
    for name, linear in targets:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, BF16Linear(linear))
    return model
