"""build_model: architecture from config.json, attention from the recipe, adapters merged, frozen."""

from __future__ import annotations

import pytest
import torch

from gigarouter.engine.build import build_model, model_for
from gigarouter.engine.loading import load_weights, read_config
from gigarouter.engine.models.bert import BertModel
from gigarouter.engine.models.mistral import MistralModel
from gigarouter.engine.sources import resolve_checkpoint
from gigarouter.errors import ModelLoadError
from gigarouter.pooling.pooling import PoolingMode
from gigarouter.settings import default_model
from tests.engine.test_parity import LINQ, LLM2VEC

CPU = torch.device("cpu")


@pytest.mark.parametrize(("resolved", "recipe", "causal", "pooling"), [
    (LLM2VEC, "llm2vec", False, PoolingMode.MEAN), (LINQ, "e5", True, PoolingMode.LAST)])
def test_recipe_sets_attention_and_pooling(resolved, recipe, causal, pooling):
    model, mode = build_model(resolved, recipe_name=recipe, dtype=torch.float32, device=CPU)
    assert isinstance(model, MistralModel) and model.config.causal is causal and mode is pooling
    assert not model.training and not any(p.requires_grad for p in model.parameters())


def test_bert_goes_through_the_same_builder():
    resolved = resolve_checkpoint(default_model(), offline=True)
    model, mode = build_model(resolved, recipe_name="sbert", dtype=torch.float32, device=CPU)
    assert isinstance(model, BertModel) and mode is PoolingMode.MEAN
    direct = model_for(read_config(resolved.base_dir), "sbert")
    load_weights(direct, resolved.base_dir, dtype=torch.float32, device=CPU, checkpoint_key=direct.checkpoint_key)
    ids, cu = torch.tensor([101, 7592, 2088, 102]), torch.tensor([0, 4])
    with torch.no_grad():
        assert torch.equal(model(ids, cu), direct(ids, cu))


def test_recipe_and_architecture_must_agree():
    with pytest.raises(ModelLoadError, match="serves mistral checkpoints, this one is 'bert'"):
        build_model(resolve_checkpoint(default_model(), offline=True), recipe_name="e5", dtype=torch.float32,
                    device=CPU)
    with pytest.raises(ModelLoadError, match="unknown recipe"):
        build_model(LINQ, recipe_name="colbert", dtype=torch.float32, device=CPU)
