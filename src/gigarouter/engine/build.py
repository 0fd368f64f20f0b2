"""Resolved checkpoint directories -> a ready torch model (weights loaded, adapters merged).

The architecture comes from config.json ``model_type``; the recipe decides the
attention switch: ``llm2vec`` is bidirectional, ``e5`` causal. Pooling follows
the recipe too, so the runner never needs to know which family it serves.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn

from gigarouter.engine.loading import load_weights, read_config
from gigarouter.engine.lora import merge_loras
from gigarouter.engine.models.bert import BertConfig, BertModel
from gigarouter.engine.models.mistral import MistralConfig, MistralModel
from gigarouter.engine.precision import use_bf16_matmuls
from gigarouter.engine.sources import ResolvedCheckpoint
from gigarouter.errors import ModelLoadError
from gigarouter.pooling.modes import PoolingMode

#: recipe -> (model types it serves, causal attention?)
RECIPE_ARCH = {
    "sbert": (("bert",), False),
    "llm2vec": (("mistral",), False),   # LLM2Vec step 2: no causal mask
    "e5": (("mistral",), True),         # Linq / e5 / SFR: causal, as trained
}


def model_for(raw_config: dict, recipe_name: str) -> nn.Module:
    """The model for ``recipe_name``, built on the meta device (no memory, no init)."""
    if recipe_name not in RECIPE_ARCH:
        raise ModelLoadError(f"unknown recipe {recipe_name!r}")
    model_types, causal = RECIPE_ARCH[recipe_name]
    model_type = raw_config.get("model_type")
    if model_type not in model_types:
        raise ModelLoadError(f"recipe {recipe_name!r} serves {'/'.join(model_types)} checkpoints, "
                             f"this one is {model_type!r}")
    try:
        with torch.device("meta"):
            if model_type == "bert":
                return BertModel(BertConfig.from_hf(raw_config))
            return MistralModel(MistralConfig.from_hf(raw_config).with_causal(causal))
    except (KeyError, ValueError) as exc:
        raise ModelLoadError(f"config.json: {exc}") from None


def pooling_for(recipe_name: str, checkpoint_dir: Path) -> PoolingMode:
    if recipe_name == "llm2vec":
        return PoolingMode.MEAN
    if recipe_name == "e5":
        return PoolingMode.LAST
    config = checkpoint_dir / "1_Pooling" / "config.json"
    if config.exists() and json.loads(config.read_text()).get("pooling_mode_cls_token"):
        return PoolingMode.CLS
    return PoolingMode.MEAN


def build_model(resolved: ResolvedCheckpoint, *, recipe_name: str, dtype: torch.dtype,
                device: torch.device, bf16_matmuls: bool = False) -> tuple[nn.Module, PoolingMode]:
    """Load the base weights onto ``device`` in ``dtype``, fold in the adapters in order, freeze.

    ``bf16_matmuls`` (the ``bfloat16-mixed`` precision, float32 ``dtype``): after the merge, every
    Linear multiplies in bf16 and the rest stays float32 (``engine/precision.py``).
    """
    model = model_for(read_config(resolved.base_dir), recipe_name)
    load_weights(model, resolved.base_dir, dtype=dtype, device=device, checkpoint_key=model.checkpoint_key)
    if resolved.adapter_dirs:
        merge_loras(model, list(resolved.adapter_dirs), checkpoint_key=model.checkpoint_key)
    if bf16_matmuls:
        use_bf16_matmuls(model)
    model.eval().requires_grad_(False)
    return model, pooling_for(recipe_name, resolved.base_dir)


def hidden_size(model: nn.Module) -> int:
    return model.config.hidden_size
