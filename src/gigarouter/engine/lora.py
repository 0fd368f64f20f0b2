"""Fold PEFT LoRA adapters into a loaded model's weights: ``W += scaling * B @ A``.

An adapter directory holds ``adapter_config.json`` and ``adapter_model.safetensors``
as PEFT writes them. Tensor names look like
``base_model.model.<module>.lora_A[.default].weight``; ``<module>`` is the module
path in the model PEFT wrapped (``layers.0.self_attn.q_proj`` for a bare
``MistralModel`` as LLM2Vec trains it, ``model.layers...`` for a causal LM), so
it goes through the model's own ``checkpoint_key`` like any checkpoint name.

``scaling`` is ``lora_alpha / r`` (``/ sqrt(r)`` with rsLoRA), per module when
``rank_pattern`` / ``alpha_pattern`` say so. The sum is done in float32 and cast
once, which is at least as exact as PEFT's own merge. Adapters that change more
than linear weights (DoRA, biases, embedding LoRA, ``modules_to_save``) are
refused with a clear error rather than merged wrongly.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from gigarouter.engine.loading import SafetensorsFile
from gigarouter.errors import ModelLoadError

_LORA_KEY = re.compile(r"^(?P<module>.+)\.lora_(?P<ab>[AB])(?:\.[^.]+)?\.weight$")


@dataclass(frozen=True)
class LoraConfig:
    r: int
    alpha: float
    use_rslora: bool = False
    rank_pattern: dict[str, int] | None = None
    alpha_pattern: dict[str, float] | None = None

    @classmethod
    def read(cls, adapter_dir: Path) -> LoraConfig:
        path = adapter_dir / "adapter_config.json"
        if not path.exists():
            raise ModelLoadError(f"{adapter_dir} is not a PEFT adapter: no adapter_config.json")
        raw = json.loads(path.read_text())
        _refuse_unsupported(raw, adapter_dir)
        return cls(r=int(raw["r"]), alpha=float(raw.get("lora_alpha", raw["r"])),
                   use_rslora=bool(raw.get("use_rslora", False)),
                   rank_pattern=raw.get("rank_pattern") or None, alpha_pattern=raw.get("alpha_pattern") or None)

    def scaling(self, module: str, rank: int) -> float:
        r = int(_pattern_value(self.rank_pattern, module, self.r))
        if r != rank:
            raise ModelLoadError(f"LoRA module {module}: rank {rank} in the weights, {r} in adapter_config.json")
        alpha = float(_pattern_value(self.alpha_pattern, module, self.alpha))
        return alpha / math.sqrt(r) if self.use_rslora else alpha / r


def _refuse_unsupported(raw: dict, adapter_dir: Path) -> None:
    problems = []
    if raw.get("peft_type", "LORA") != "LORA":
        problems.append(f"peft_type {raw.get('peft_type')!r} (only LORA is supported)")
    if raw.get("use_dora"):
        problems.append("DoRA (use_dora=true)")
    if raw.get("bias", "none") != "none":
        problems.append(f"trained biases (bias={raw.get('bias')!r})")
    if raw.get("lora_bias"):
        problems.append("LoRA biases (lora_bias=true)")
    if raw.get("fan_in_fan_out"):
        problems.append("fan_in_fan_out=true (Conv1D layers)")
    if problems:
        raise ModelLoadError(f"adapter {adapter_dir} uses what gigarouter cannot merge: {'; '.join(problems)}")


def _pattern_value(patterns: dict | None, module: str, default: float) -> float:
    """PEFT's rule: a pattern key matches the full module name or a dotted suffix of it (a regex)."""
    for key, value in (patterns or {}).items():
        if key == module or re.fullmatch(rf"(?:.*\.)?(?:{key})", module):
            return value
    return default


def read_lora_pairs(adapter_dir: Path) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """module path (PEFT prefix removed) -> (A [r, in], B [out, r]) in float32."""
    path = adapter_dir / "adapter_model.safetensors"
    if not path.exists():
        has_bin = (adapter_dir / "adapter_model.bin").exists()
        hint = " (only adapter_model.safetensors is read; convert the .bin)" if has_bin else ""
        raise ModelLoadError(f"no adapter_model.safetensors in {adapter_dir}{hint}")
    f = SafetensorsFile(path)
    halves: dict[str, dict[str, torch.Tensor]] = {}
    for name in f.keys():
        match = _LORA_KEY.match(name)
        if match is None:
            raise ModelLoadError(f"adapter {adapter_dir}: cannot merge tensor {name!r} "
                                 "(only lora_A / lora_B of linear layers are supported)")
        module = match["module"].removeprefix("base_model.model.")
        halves.setdefault(module, {})[match["ab"]] = f.get(name, dtype=torch.float32, zero_copy=False)
    pairs = {}
    for module, ab in halves.items():
        if set(ab) != {"A", "B"}:
            raise ModelLoadError(f"adapter {adapter_dir}: {module} has lora_{''.join(ab)} without its pair")
        pairs[module] = (ab["A"], ab["B"])
    return pairs


def merge_lora(model: nn.Module, adapter_dir: Path, *, dtype: torch.dtype | None = None,
               device: torch.device | str | None = None,
               checkpoint_key: Callable[[str], str | None] | None = None) -> int:
    """Fold the adapter in ``adapter_dir`` into ``model`` in place; returns the number of weights changed."""
    return merge_loras(model, [adapter_dir], dtype=dtype, device=device, checkpoint_key=checkpoint_key)


def merge_loras(model: nn.Module, adapter_dirs: list[Path], *, dtype: torch.dtype | None = None,
                device: torch.device | str | None = None,
                checkpoint_key: Callable[[str], str | None] | None = None) -> int:
    """Fold several adapters in, in order, rounding each weight once: ``W + d1 + d2`` in float32.

    Folding them one by one into a bf16 weight would round after each adapter.
    ``device`` is where the float32 sums are formed (default: each weight's own
    device); weights keep their dtype (``dtype``, when given, only checks it).
    Returns the number of weights changed.
    """
    key = checkpoint_key or model.checkpoint_key
    params = dict(model.named_parameters())
    deltas: dict[str, list[tuple[torch.Tensor, torch.Tensor, float]]] = {}
    for adapter_dir in adapter_dirs:
        config = LoraConfig.read(adapter_dir)
        for module, (a, b) in read_lora_pairs(adapter_dir).items():
            name = key(f"{module}.weight")
            if name is None:  # e.g. an LM head: not part of the embedding model
                continue
            weight = params.get(name)
            _check_fits(adapter_dir, module, weight, a, b, dtype)
            deltas.setdefault(name, []).append((a, b, config.scaling(module, a.shape[0])))
    for name, terms in deltas.items():
        _fold(params[name], terms, device=device)
    return len(deltas)


def _check_fits(adapter_dir: Path, module: str, weight: torch.Tensor | None, a: torch.Tensor, b: torch.Tensor,
                dtype: torch.dtype | None) -> None:
    if weight is None:
        raise ModelLoadError(f"adapter {adapter_dir} targets {module!r}, which this model does not have")
    if dtype is not None and weight.dtype != dtype:
        raise ModelLoadError(f"{module}: weight is {weight.dtype}, expected {dtype}")
    if (b.shape[0], a.shape[1]) != tuple(weight.shape) or a.shape[0] != b.shape[1]:
        raise ModelLoadError(f"adapter {adapter_dir}: {module} LoRA shapes {tuple(b.shape)} @ {tuple(a.shape)} "
                             f"do not fit weight {tuple(weight.shape)}")


@torch.no_grad()
def _fold(weight: torch.Tensor, terms: list[tuple[torch.Tensor, torch.Tensor, float]], *,
          device: torch.device | str | None) -> None:
    # weight: [out, in]; each a: [r, in], b: [out, r]. Float32 sum, one rounding to the weight's dtype.
    where = torch.device(device) if device is not None else weight.device
    merged = weight.to(device=where, dtype=torch.float32)
    for a, b, scaling in terms:
        merged += (b.to(where) @ a.to(where)) * scaling
    weight.copy_(merged.to(dtype=weight.dtype))
