"""Fold a model's adapters into one plain checkpoint (``gigarouter models merge``).

The output is a Hugging Face directory: config.json, model.safetensors (or
shards plus an index), the tokenizer files and a ``gigarouter_merge.json`` that
records where it came from and what the model is: its catalog card (so a merged
checkpoint served under a new name keeps its card, default query instruction
included) and its llm2vec template, which the loader reads back. Serving it
needs no adapter pass at start-up, and transformers' ``AutoModel`` loads it too.
The llm2vec library keys its [INST] template on the base model's name, so
config.json keeps that name in ``_name_or_path`` (the Instruct base's, when an
adapter named it).

Memory: the base is memory-mapped (see loading.py), the merge rewrites the
adapted weights in place, and the writer streams one tensor at a time, so a
7B merge needs about one copy of the checkpoint in RAM.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterable
from pathlib import Path

import torch

from gigarouter.engine.build import build_model
from gigarouter.engine.loading import DTYPE_NAMES, read_config
from gigarouter.engine.sources import MERGE_RECORD, ResolvedCheckpoint, identity_names
from gigarouter.errors import ModelLoadError

MAX_SHARD_BYTES = 5 * 2**30
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "tokenizer.model")
#: Base-directory files that describe the model rather than hold weights (sentence-transformers extras included).
SKIP = ("model.safetensors", "model.safetensors.index.json", "adapter_config.json", "adapter_model.safetensors")


def checkpoint_dtype(raw_config: dict) -> torch.dtype:
    name = raw_config.get("torch_dtype") or raw_config.get("dtype") or "float32"
    return getattr(torch, name) if name in ("float32", "bfloat16", "float16") else torch.float32


def write_safetensors(path: Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None) -> None:
    """Write a safetensors file one tensor at a time (the safetensors package builds every buffer first)."""
    header: dict = {"__metadata__": metadata or {"format": "pt"}}
    offset = 0
    for name, t in tensors.items():
        size = t.numel() * t.element_size()
        header[name] = {"dtype": DTYPE_NAMES[t.dtype], "shape": list(t.shape), "data_offsets": [offset, offset + size]}
        offset += size
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)                       # keep the data 8-byte aligned
    with open(path, "wb") as f:
        f.write(len(raw).to_bytes(8, "little"))
        f.write(raw)
        for t in tensors.values():
            f.write(t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().data)


def shard(named: Iterable[tuple[str, torch.Tensor]], max_bytes: int) -> list[dict[str, torch.Tensor]]:
    shards: list[dict[str, torch.Tensor]] = [{}]
    size = 0
    for name, t in named:
        nbytes = t.numel() * t.element_size()
        if shards[-1] and size + nbytes > max_bytes:
            shards.append({})
            size = 0
        shards[-1][name] = t
        size += nbytes
    return shards


def save_checkpoint(out_dir: Path, named: list[tuple[str, torch.Tensor]], *, max_shard_bytes: int) -> list[str]:
    """model.safetensors, or model-0000i-of-0000n.safetensors plus the index; returns the file names."""
    parts = shard(named, max_shard_bytes)
    if len(parts) == 1:
        write_safetensors(out_dir / "model.safetensors", parts[0])
        return ["model.safetensors"]
    files = [f"model-{i + 1:05d}-of-{len(parts):05d}.safetensors" for i in range(len(parts))]
    weight_map = {}
    for file, part in zip(files, parts, strict=True):
        write_safetensors(out_dir / file, part)
        weight_map.update(dict.fromkeys(part, file))
    total = sum(t.numel() * t.element_size() for _, t in named)
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (out_dir / "model.safetensors.index.json").write_text(json.dumps(index, indent=2))
    return files


def _copy_side_files(resolved: ResolvedCheckpoint, out_dir: Path) -> None:
    for item in resolved.base_dir.iterdir():
        if item.name in SKIP or item.name.startswith(("model-", ".")) or item.suffix in (".bin", ".pt", ".safetensors"):
            continue
        if item.is_dir():
            shutil.copytree(item, out_dir / item.name, dirs_exist_ok=True)
        else:
            shutil.copy2(item, out_dir / item.name)
    for name in TOKENIZER_FILES:
        if (resolved.tokenizer_dir / name).exists():
            shutil.copy2(resolved.tokenizer_dir / name, out_dir / name)


def merge_checkpoint(resolved: ResolvedCheckpoint, out_dir: Path, *, recipe_name: str,
                     dtype: torch.dtype | None = None, max_shard_bytes: int = MAX_SHARD_BYTES,
                     card: str | None = None, template: str | None = None) -> Path:
    """Write ``resolved`` with its adapters folded in to ``out_dir``; returns out_dir.

    ``card`` (a slug) and ``template`` (llm2vec's, as decided for the unmerged model) are
    recorded in gigarouter_merge.json, where the loader finds them again.
    """
    out_dir = Path(out_dir)
    if out_dir.exists() and any(out_dir.iterdir()):
        raise ModelLoadError(f"{out_dir} exists and is not empty")
    raw = read_config(resolved.base_dir)
    dtype = dtype or checkpoint_dtype(raw)
    model, _ = build_model(resolved, recipe_name=recipe_name, dtype=dtype, device=torch.device("cpu"))
    prefix = "model." if raw.get("model_type") == "mistral" else ""
    named = [(prefix + name, p) for name, p in model.state_dict().items()]
    out_dir.mkdir(parents=True, exist_ok=True)
    _copy_side_files(resolved, out_dir)
    files = save_checkpoint(out_dir, named, max_shard_bytes=max_shard_bytes)
    config = {**raw, "_name_or_path": _base_name(resolved, template),
              "torch_dtype": str(dtype).removeprefix("torch.")}
    if prefix:   # no LM head in the output: MistralModel is what loads it cleanly
        config["architectures"] = ["MistralModel"]
    (out_dir / "config.json").write_text(json.dumps(config, indent=2))
    record = {"card": card, "recipe": recipe_name, "template": template,
              "sources": list(resolved.sources), "base": str(resolved.base_dir),
              "adapters": [str(a) for a in resolved.adapter_dirs], "dtype": config["torch_dtype"], "files": files}
    (out_dir / MERGE_RECORD).write_text(json.dumps(record, indent=2))
    return out_dir


def _base_name(resolved: ResolvedCheckpoint, template: str | None) -> str:
    """The name to keep in config.json: an Instruct base named by an adapter when the template is
    [INST] (so llm2vec itself wraps the merged model too), else the base's own name."""
    from gigarouter.recipes.llm2vec import INST_WRAPPED

    if template == "inst" and resolved.base_name not in INST_WRAPPED:
        return next((name for _, name in identity_names(resolved) if name in INST_WRAPPED), resolved.base_name)
    return resolved.base_name
