"""Weights from disk onto a model built on the meta device.

The model is constructed under ``torch.device("meta")`` (no memory, no random
init); each tensor is read from memory-mapped safetensors, cast, moved, and
assigned with ``load_state_dict(..., assign=True)``, one file at a time, so
peak host memory stays near one copy of the checkpoint.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import torch
from safetensors import safe_open
from torch import nn

from gigarouter.errors import ModelLoadError


def safetensors_files(checkpoint_dir: Path) -> list[Path]:
    """The checkpoint's weight files: the index's shards, or the single file."""
    index = checkpoint_dir / "model.safetensors.index.json"
    if index.exists():
        weight_map = json.loads(index.read_text())["weight_map"]
        return [checkpoint_dir / name for name in sorted(set(weight_map.values()))]
    single = checkpoint_dir / "model.safetensors"
    if single.exists():
        return [single]
    raise ModelLoadError(f"no model.safetensors or model.safetensors.index.json in {checkpoint_dir}")


def read_config(checkpoint_dir: Path) -> dict:
    path = checkpoint_dir / "config.json"
    if not path.exists():
        raise ModelLoadError(f"no config.json in {checkpoint_dir}")
    return json.loads(path.read_text())


def load_weights(model: nn.Module, checkpoint_dir: Path, *, dtype: torch.dtype, device: torch.device,
                 checkpoint_key: Callable[[str], str | None]) -> None:
    """Fill a meta-device ``model`` from the safetensors in ``checkpoint_dir``.

    ``checkpoint_key`` maps a checkpoint tensor name to the model's parameter name,
    or None to skip it. Every model parameter must be found.
    """
    expected = {name for name, _ in model.named_parameters()}
    seen: set[str] = set()
    for path in safetensors_files(checkpoint_dir):
        shard: dict[str, torch.Tensor] = {}
        with safe_open(str(path), framework="pt", device="cpu") as f:
            for name in f.keys():
                key = checkpoint_key(name)
                if key is None:
                    continue
                if key not in expected:
                    raise ModelLoadError(f"{path.name}: unexpected tensor {name!r}")
                shard[key] = f.get_tensor(name).to(device=device, dtype=dtype)
        model.load_state_dict(shard, strict=False, assign=True)
        seen.update(shard)
        del shard
    missing = expected - seen
    if missing:
        raise ModelLoadError(f"checkpoint {checkpoint_dir} lacks {len(missing)} tensors, e.g. {sorted(missing)[:3]}")
