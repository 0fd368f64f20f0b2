"""The default ModelLoader: a configured model -> (recipe, TorchEngine), blocking.

Resolution (Hub or directory, adapter chains) is ``engine/sources.py``; building
and loading the torch model is ``engine/build.py``; the recipe comes from the
same directories, with the card's instructions. This module joins them: the
engine itself never builds recipes or reads cards.
"""

from __future__ import annotations

import torch

from gigarouter.catalog.cards import find_card
from gigarouter.engine.build import build_model, hidden_size
from gigarouter.engine.runner import (
    TorchEngine,
    budget_from_memory,
    default_parallel_batches,
    default_token_budget,
    resolve_device,
    resolve_dtype,
)
from gigarouter.engine.sources import resolve_checkpoint
from gigarouter.recipes.base import Instructions, Recipe, build_recipe
from gigarouter.settings import ModelConfig, Settings


def load_model(config: ModelConfig, settings: Settings, *, progress: bool = True) -> tuple[Recipe, TorchEngine]:
    resolved = resolve_checkpoint(config, cache_dir=settings.cache_dir, offline=settings.offline, progress=progress)
    card = find_card(config.card, config.name, config.weights, *config.aliases)
    recipe = build_recipe(config.recipe, resolved.tokenizer_dir,
                          card_instructions=card.instructions if card else Instructions(),
                          max_tokens=config.max_tokens, base_name=resolved.base_name)
    device = resolve_device(config.device)
    dtype = resolve_dtype(config.dtype, device)
    model, _pooling = build_model(resolved, recipe_name=config.recipe, dtype=dtype, device=device)
    budget = config.token_budget or settings.batch_token_budget or _auto_budget(model, device, dtype, recipe)
    engine = TorchEngine(model, pooling=recipe.pooling, dim=hidden_size(model), device=device,
                         token_budget=budget, max_seq_len=recipe.max_tokens,
                         parallel_batches=settings.cpu_parallel_batches or default_parallel_batches(device))
    return recipe, engine


def _auto_budget(model: torch.nn.Module, device: torch.device, dtype: torch.dtype, recipe: Recipe) -> int:
    if device.type != "cuda":
        return default_token_budget(device)   # TorchEngine raises it to one longest sequence if need be
    free, _total = torch.cuda.mem_get_info(device)
    cfg = model.config
    return budget_from_memory(free_bytes=free, hidden=cfg.hidden_size, intermediate=cfg.intermediate_size,
                              dtype_bytes=torch.finfo(dtype).bits // 8, max_seq_len=recipe.max_tokens)

