"""`models merge`: one plain checkpoint with the adapters folded in, loadable by us and by transformers."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from gigarouter.engine.build import build_model
from gigarouter.engine.loading import SafetensorsFile
from gigarouter.engine.merge import merge_checkpoint, write_safetensors
from gigarouter.engine.sources import resolve_checkpoint
from gigarouter.errors import ModelLoadError
from gigarouter.recipes.llm2vec import Llm2VecRecipe
from gigarouter.settings import ModelConfig
from tests.engine.test_parity import LLM2VEC, Served, cosines, golden


@pytest.fixture(scope="module")
def merged(tmp_path_factory) -> Path:
    return merge_checkpoint(LLM2VEC, tmp_path_factory.mktemp("m") / "out", recipe_name="llm2vec")


def test_merged_llm2vec_reproduces_the_golden_vectors(merged):
    resolved = resolve_checkpoint(ModelConfig(name="m", recipe="llm2vec", weights=str(merged)), offline=True)
    assert resolved.adapter_dirs == () and resolved.base_name == "mistralai/Mistral-7B-Instruct-v0.2"
    recipe = Llm2VecRecipe.from_checkpoint(resolved.tokenizer_dir, base_name=resolved.base_name)
    assert recipe.wrap_inst
    served = Served(recipe, resolved)
    for case in golden("llm2vec")["cases"]:
        prepared = served.prepare(case)
        assert [p.token_ids for p in prepared] == case["token_ids"]
        assert cosines(served.embed(prepared), case["vectors"]).min() >= 0.99999, case["name"]


def test_output_layout(merged):
    names = {p.name for p in merged.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json",
            "gigarouter_merge.json"} <= names
    assert not names & {"adapter_config.json", "adapter_model.safetensors"}
    config = json.loads((merged / "config.json").read_text())
    assert config["architectures"] == ["MistralModel"] and config["torch_dtype"] == "float32"
    provenance = json.loads((merged / "gigarouter_merge.json").read_text())
    assert len(provenance["adapters"]) == 2
    keys = SafetensorsFile(merged / "model.safetensors").keys()
    assert "model.embed_tokens.weight" in keys and not any(k.startswith("lm_head") for k in keys)


def test_transformers_loads_the_merged_checkpoint(merged):
    transformers = pytest.importorskip("transformers")
    theirs = transformers.MistralModel.from_pretrained(str(merged), torch_dtype=torch.float32)
    ours = Served(Llm2VecRecipe.from_checkpoint(merged), resolve_checkpoint(
        ModelConfig(name="m", recipe="llm2vec", weights=str(merged)), offline=True)).model
    reference = theirs.state_dict()
    for name, weight in ours.state_dict().items():
        assert torch.equal(weight, reference[name]), name


def test_sharded_bf16_merge(tmp_path, merged):
    out = merge_checkpoint(LLM2VEC, tmp_path / "bf16", recipe_name="llm2vec", dtype=torch.bfloat16,
                           max_shard_bytes=1_000_000)
    shards = sorted(p.name for p in out.glob("model-*.safetensors"))
    assert len(shards) > 1 and (out / "model.safetensors.index.json").exists()
    assert json.loads((out / "config.json").read_text())["torch_dtype"] == "bfloat16"
    full = SafetensorsFile(merged / "model.safetensors")
    served, _ = build_model(LLM2VEC, recipe_name="llm2vec", dtype=torch.bfloat16, device=torch.device("cpu"))
    expected = served.state_dict()
    index = json.loads((out / "model.safetensors.index.json").read_text())["weight_map"]
    assert len(index) == len(expected)
    for name, file in index.items():
        half = SafetensorsFile(out / file).get(name)
        assert torch.equal(half, expected[name.removeprefix("model.")]), name     # exactly what serving in bf16 uses
        # base rounded to bf16, adapters added in float32, rounded once more: near the fp32 merge
        exact = full.get(name)
        torch.testing.assert_close(half.float(), exact, rtol=2 ** -7, atol=2 ** -8 * float(exact.abs().max()))


def test_refuses_a_non_empty_output(tmp_path):
    (tmp_path / "x").write_text("keep me")
    with pytest.raises(ModelLoadError, match="not empty"):
        merge_checkpoint(LLM2VEC, tmp_path, recipe_name="llm2vec")


def test_writer_is_readable_by_the_safetensors_package(tmp_path):
    from safetensors.torch import load_file

    tensors = {"a": torch.randn(3, 5).to(torch.bfloat16), "b": torch.arange(7, dtype=torch.int64),
               "c": torch.ones(0, 4), "d": torch.tensor(2.5)}
    write_safetensors(tmp_path / "t.safetensors", tensors)
    back = load_file(str(tmp_path / "t.safetensors"))
    assert set(back) == set(tensors) and all(torch.equal(back[k], v) for k, v in tensors.items())
