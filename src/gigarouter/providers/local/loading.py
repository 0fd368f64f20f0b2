"""The default ModelLoader: a configured model -> (recipe, TorchEngine), blocking.

Resolution (Hub or directory, adapter chains) is ``engine/sources.py``; building
and loading the torch model is ``engine/build.py``; the recipe comes from the
same directories, with the card's instructions. This module joins them: the
engine itself never builds recipes or reads cards.

On a GPU with no budget configured, the token budget is measured at warm-up
(``TorchEngine.calibrate``: the throughput knee under a latency bound) within
the memory this model's share of the device allows (``engine/memory.py``).
``GIGAROUTER_ATTENTION`` (auto, varlen, grid) pins the attention path: with
``varlen`` a GPU that cannot run the varlen kernel fails the load instead of
serving on the grid path.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable

import torch

from gigarouter.catalog.cards import ModelCard, card_for_model
from gigarouter.engine.build import build_model, hidden_size
from gigarouter.engine.memory import plan_for
from gigarouter.engine.onednn import ONEDNN, pack_linears, wanted_kernels
from gigarouter.engine.precision import choose_precision, cpu_flags
from gigarouter.engine.runner import (
    TorchEngine,
    activation_bytes_per_token,
    budget_from_memory,
    default_parallel_batches,
    default_token_budget,
    resolve_device,
)
from gigarouter.engine.sources import ResolvedCheckpoint, identity_names, read_merge_record, resolve_checkpoint
from gigarouter.recipes.base import Instructions, Recipe, build_recipe
from gigarouter.settings import ModelConfig, Settings

log = logging.getLogger(__name__)


def load_model(config: ModelConfig, settings: Settings, *, progress: bool = True) -> tuple[Recipe, TorchEngine]:
    resolved = resolve_checkpoint(config, cache_dir=settings.cache_dir, offline=settings.offline, progress=progress)
    card = card_for_model(config)
    template = model_template(config, card, resolved) if config.recipe == "llm2vec" else None
    recipe = build_recipe(config.recipe, resolved.tokenizer_dir,
                          card_instructions=card.instructions if card else Instructions(),
                          max_tokens=config.max_tokens, base_name=resolved.base_name, template=template)
    device = resolve_device(config.device)
    precision = choose_precision(config.dtype, device_type=device.type, flags=cpu_flags())
    log.info("model %s runs in %s on %s (%s)", config.name, precision.name, device, precision.reason)
    dtype = precision.weights_dtype
    model, _pooling = build_model(resolved, recipe_name=config.recipe, dtype=dtype, device=device,
                                  bf16_matmuls=precision.mixed)
    # float32 and bfloat16-mixed (not all-bf16); the latter only where oneDNN multiplies bf16
    if dtype == torch.float32 and wanted_kernels(device, bf16=precision.mixed) == ONEDNN:
        pack_linears(model)
        log.info("model %s: linear layers on oneDNN (weights reordered once, GELU and residual adds fused)",
                 config.name)
    explicit = config.token_budget or settings.batch_token_budget
    budget, settle = (explicit, None) if explicit else _auto_budget(model, device, dtype, recipe, settings)
    engine = TorchEngine(model, pooling=recipe.pooling, dim=hidden_size(model), device=device,
                         token_budget=budget, max_seq_len=recipe.max_tokens,
                         parallel_batches=settings.cpu_parallel_batches or default_parallel_batches(device),
                         attention=os.environ.get("GIGAROUTER_ATTENTION", "auto"),
                         calibrate_budget=device.type == "cuda" and not explicit, on_budget=settle,
                         precision=precision.name)
    return recipe, engine


def model_template(config: ModelConfig, card: ModelCard | None, resolved: ResolvedCheckpoint):
    """llm2vec's template by the model's identity (``llm2vec.choose_template``), logged."""
    from gigarouter.recipes.llm2vec import choose_template

    template = choose_template(explicit=config.template, card_slug=card.slug if card else None,
                               card_template=card.template if card else None,
                               recorded=read_merge_record(resolved.base_dir).get("template"),
                               names=identity_names(resolved))
    wrapped = "[INST] ... [/INST]" if template.name == "inst" else "no template"
    if template.fallback:
        log.warning("model %s: llm2vec inputs get %s: %s; set template = \"inst\" on its [[models]] entry "
                    "if its base is Mistral-7B-Instruct-v0.2 or Llama-2-chat", config.name, wrapped, template.source)
    else:
        log.info("model %s: llm2vec inputs get %s, decided by %s", config.name, wrapped, template.source)
    return template


def _auto_budget(model: torch.nn.Module, device: torch.device, dtype: torch.dtype, recipe: Recipe,
                 settings: Settings) -> tuple[int, Callable[[int], None] | None]:
    """The budget's upper bound from this model's share of free memory, and how to settle the share."""
    if device.type != "cuda":
        return default_token_budget(device), None   # TorchEngine raises it to one longest sequence if need be
    key = _device_key(device)
    plan = plan_for(key, models=sum(1 for m in settings.models if _device_key(resolve_device(m.device)) == key))
    free, _total = torch.cuda.mem_get_info(device)
    cfg = model.config
    dtype_bytes = torch.finfo(dtype).bits // 8
    per_token = activation_bytes_per_token(hidden=cfg.hidden_size, intermediate=cfg.intermediate_size,
                                           dtype_bytes=dtype_bytes)
    budget = budget_from_memory(free_bytes=plan.share(free), hidden=cfg.hidden_size,
                                intermediate=cfg.intermediate_size, dtype_bytes=dtype_bytes,
                                max_seq_len=recipe.max_tokens)

    def settle(final_budget: int) -> None:
        torch.cuda.empty_cache()          # the warm-up's cache back, so the next model measures free memory truly
        plan.settle(per_token * final_budget)

    return budget, settle


def _device_key(device: torch.device) -> str:
    if device.type == "cuda" and device.index is None:
        return f"cuda:{torch.cuda.current_device()}" if torch.cuda.is_available() else "cuda:0"
    return str(device)
