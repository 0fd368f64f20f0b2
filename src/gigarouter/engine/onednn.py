"""Linear layers on oneDNN for CPU serving: weights reordered once, activation and residual fused.

On a CPU, ``F.linear`` in float32 goes to MKL's sgemm, which re-packs the weight on
every call and leaves bias, GELU and the residual add to separate passes over memory.
``OneDnnLinear`` reorders the weight once, at load, into oneDNN's blocked layout (as
PyTorch's inductor does for frozen CPU graphs) and asks the GEMM to apply GELU or add
the residual as it writes its output. Measured on AMD EPYC Zen 4 (docs/benchmarks.md,
section 13): 1.1-1.25x sgemm's rate on all-MiniLM-L6-v2's shapes, 1.14-1.17x end to end.

Two kinds, matching ``engine/precision.py``:

- float32 (the ``float32`` precision, and the fp32 part of ``bfloat16-mixed``): fp32 in,
  fp32 accumulate, fp32 out.
- bf16 (the feed-forward matmuls of ``bfloat16-mixed``): the input rounded to bf16 once,
  fp32 accumulation inside the GEMM, the output rounded to bf16. With GELU fused (BERT's
  up-projection) the bias and GELU are applied to the fp32 accumulator and only GELU's
  output is rounded, which is the down-projection's bf16 input anyway: one rounding where
  the unfused path had two. Without an activation the bias is added in fp32 after the
  GEMM, as ``BF16Linear`` does.

Serving only (``providers/local/loading.py``): the reordered weight is an opaque oneDNN
tensor, not a parameter, so a packed model has no state dict to save or merge adapters
into; ``build_model`` leaves models unpacked unless asked. ``GIGAROUTER_CPU_LINEAR=aten``
(read when a model loads) keeps ATen's kernels, for A/B measurements.
"""

from __future__ import annotations

import logging
import os

import torch
from torch import nn

from gigarouter.engine.precision import BF16Linear

log = logging.getLogger(__name__)

ONEDNN = "onednn"
ATEN = "aten"
ACTIVATIONS = ("none", "gelu")


def unavailable_reason(*, bf16: bool = False) -> str | None:
    """Why oneDNN's packed linear cannot run here (None when it can); ``bf16``: its bf16 kernels too."""
    if not torch.backends.mkldnn.is_available():
        return "this torch build has no oneDNN (mkldnn)"
    for op in ("_linear_pointwise", "_reorder_linear_weight"):
        if not hasattr(torch.ops.mkldnn, op):
            return f"this torch build has no torch.ops.mkldnn.{op}"
    if bf16 and not bf16_supported():
        # oneDNN refuses to reorder a bf16 weight on such a CPU (an AVX2-only one, e.g. AMD Zen 3):
        # the model would fail to load.
        return "oneDNN's bf16 kernels need AVX-512 (BW, VL, DQ), AVX-NE-CONVERT or AMX, which this CPU lacks"
    return None


def bf16_supported() -> bool:
    """Whether oneDNN runs bf16 GEMMs on this CPU (torch's own check, as its inductor uses)."""
    check = getattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", None)
    return bool(check()) if check is not None else False


def wanted_kernels(device: torch.device, *, bf16: bool = False) -> str:
    """``onednn`` or ``aten`` for a model about to serve on ``device`` (read at load, logged);
    ``bf16``: the model has bf16 matmuls (``bfloat16-mixed``), which oneDNN must run too."""
    want = os.environ.get("GIGAROUTER_CPU_LINEAR", "auto")
    if want not in ("auto", ONEDNN, ATEN):
        raise ValueError(f"GIGAROUTER_CPU_LINEAR must be auto, {ONEDNN} or {ATEN}, not {want!r}")
    if device.type != "cpu" or want == ATEN:
        return ATEN
    reason = unavailable_reason(bf16=bf16)
    if reason is None:
        return ONEDNN
    if want == ONEDNN:       # asked for by name: no silent fallback
        raise RuntimeError(f"GIGAROUTER_CPU_LINEAR=onednn, but {reason}")
    log.warning("CPU linear layers run on ATen's kernels: %s", reason)
    return ATEN


class OneDnnLinear(nn.Module):
    """``y = act(x @ W.T + b)`` or ``y = x @ W.T + b + residual`` on a weight reordered once.

    ``bf16``: multiply in bf16 (see the module). ``bf16_output``: hand back the bf16 result as
    it is (the next bf16 GEMM's input) instead of float32.
    """

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None, *, bf16: bool = False,
                 activation: str = "none", bf16_output: bool = False) -> None:
        super().__init__()
        if activation not in ACTIVATIONS:
            raise ValueError(f"activation must be one of {ACTIVATIONS}, not {activation!r}")
        if bf16_output and not bf16:
            raise ValueError("bf16_output needs bf16")
        self.out_features, self.in_features = weight.shape
        self.bf16, self.activation, self.bf16_output = bf16, activation, bf16_output
        w = weight.detach().to(torch.bfloat16 if bf16 else torch.float32).contiguous()
        self.packed = torch.ops.mkldnn._reorder_linear_weight(w, None)     # opaque, not a parameter
        bias = None if bias is None else bias.detach().float().contiguous()
        # bf16 without an activation: the bias is added after the GEMM, in fp32, as BF16Linear does
        self.gemm_bias = bias if (not bf16 or activation != "none") else None
        self.post_bias = bias if self.gemm_bias is None else None

    @classmethod
    def of(cls, linear: nn.Module, **kwargs) -> OneDnnLinear:
        """From an ``nn.Linear`` (float32 kernel) or a ``BF16Linear`` (bf16 kernel)."""
        if isinstance(linear, BF16Linear):
            return cls(linear.weight, linear.bias, bf16=True, **kwargs)
        if type(linear) is nn.Linear:
            if linear.weight.dtype != torch.float32:
                raise TypeError(f"packs float32 models (bfloat16-mixed included), not {linear.weight.dtype}")
            return cls(linear.weight, linear.bias, **kwargs)
        raise TypeError(f"cannot pack a {type(linear).__name__}")

    @property
    def matmul_params(self) -> int:
        return self.in_features * self.out_features

    def forward(self, x: torch.Tensor, residual: torch.Tensor | None = None) -> torch.Tensor:
        lead = x.shape[:-1]
        x = x.reshape(-1, self.in_features)
        if self.bf16:
            x = x.to(torch.bfloat16)
        elif residual is not None and self.activation == "none":
            out = torch.ops.mkldnn._linear_pointwise.binary(x, residual.reshape(-1, self.out_features),
                                                              self.packed, self.gemm_bias, "add")
            return out.view(*lead, self.out_features)
        out = torch.ops.mkldnn._linear_pointwise(x, self.packed, self.gemm_bias, self.activation, [],
                                                 "none" if self.activation == "gelu" else "")
        if self.bf16 and not self.bf16_output:
            out = out.float()
            if self.post_bias is not None:
                out.add_(self.post_bias)
        out = out.view(*lead, self.out_features)
        return out if residual is None else out + residual

    def extra_repr(self) -> str:
        kind = "bf16" if self.bf16 else "float32"
        return (f"in_features={self.in_features}, out_features={self.out_features}, {kind}, "
                f"activation={self.activation}")


def linear_plus(linear: nn.Module, x: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
    """``linear(x) + residual``, fused into the GEMM where the layer can."""
    if isinstance(linear, OneDnnLinear):
        return linear(x, residual)
    return linear(x) + residual


def pack_linears(model: nn.Module) -> nn.Module:
    """Serve ``model`` on oneDNN: the model's own fusions first (``fuse_for_onednn``: BERT's fused
    QKV and GELU), then every remaining ``nn.Linear`` / ``BF16Linear`` packed as it is. In place."""
    fuse = getattr(model, "fuse_for_onednn", None)
    if fuse is not None:
        fuse()
    targets = [(name, module) for name, module in model.named_modules()
               if type(module) is nn.Linear or isinstance(module, BF16Linear)]
    for name, linear in targets:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, OneDnnLinear.of(linear))
    model.linear_kernels = ONEDNN
    return model


def fused_qkv(q: nn.Linear, k: nn.Linear, v: nn.Linear) -> OneDnnLinear:
    """One float32 GEMM for three projections of the same input: ``[T, 3 * out]``."""
    weight = torch.cat([q.weight, k.weight, v.weight])
    biases = [m.bias for m in (q, k, v)]
    bias = None if biases[0] is None else torch.cat(biases)
    return OneDnnLinear(weight, bias)

