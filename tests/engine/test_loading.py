"""Loading Hugging Face safetensors onto a meta-device model."""

from __future__ import annotations

import json

import pytest
import torch

from gigarouter.engine.build import model_for
from gigarouter.engine.loading import SafetensorsFile, load_weights, read_config
from gigarouter.errors import ModelLoadError
from tests.engine.tiny import TINY, mistral_state, write_checkpoint


def load(directory, *, dtype=torch.float32, zero_copy=True, recipe="e5"):
    model = model_for(read_config(directory), recipe)
    load_weights(model, directory, dtype=dtype, device=torch.device("cpu"), checkpoint_key=model.checkpoint_key,
                 zero_copy=zero_copy)
    return model


def forward(model) -> torch.Tensor:
    with torch.no_grad():
        return model(torch.tensor([1, 4, 9, 16, 25, 36]), torch.tensor([0, 2, 6]))


@pytest.fixture(scope="module")
def state():
    return mistral_state(TINY, seed=7)


def test_sharded_equals_single_file(tmp_path, state):
    single = load(write_checkpoint(tmp_path / "one", state, TINY))
    sharded = load(write_checkpoint(tmp_path / "three", state, TINY, shards=3))
    assert len(list((tmp_path / "three").glob("model-*.safetensors"))) == 3
    for (name, a), (_, b) in zip(single.state_dict().items(), sharded.state_dict().items(), strict=True):
        assert torch.equal(a, b), name
    torch.testing.assert_close(forward(single), forward(sharded), rtol=0, atol=0)


def test_every_parameter_is_real_and_rope_is_not_meta(tmp_path, state):
    model = load(write_checkpoint(tmp_path / "c", state, TINY))
    assert all(p.device.type == "cpu" for p in model.parameters())
    assert all(b.device.type == "cpu" for b in model.buffers())
    assert torch.isfinite(forward(model)).all()


def test_zero_copy_view_equals_read_and_writes_stay_private(tmp_path, state):
    directory = write_checkpoint(tmp_path / "c", state, TINY)
    before = (directory / "model.safetensors").read_bytes()
    mapped, read = load(directory), load(directory, zero_copy=False)
    torch.testing.assert_close(forward(mapped), forward(read), rtol=0, atol=0)
    with torch.no_grad():
        mapped.layers[0].self_attn.q_proj.weight.add_(1.0)    # copy-on-write: the file must not change
    assert (directory / "model.safetensors").read_bytes() == before


def test_casts_to_the_requested_dtype(tmp_path, state):
    bf16 = {k: v.to(torch.bfloat16) for k, v in state.items()}
    directory = write_checkpoint(tmp_path / "bf16", bf16, {**TINY, "torch_dtype": "bfloat16"})
    as_f32 = load(directory, dtype=torch.float32)
    as_bf16 = load(directory, dtype=torch.bfloat16)
    assert {p.dtype for p in as_f32.parameters()} == {torch.float32}
    assert {p.dtype for p in as_bf16.parameters()} == {torch.bfloat16}
    assert torch.equal(as_f32.norm.weight.to(torch.bfloat16), as_bf16.norm.weight)


def test_missing_and_unexpected_tensors_are_errors(tmp_path, state):
    partial = {k: v for k, v in state.items() if "layers.1.mlp.up_proj" not in k}
    with pytest.raises(ModelLoadError, match="lacks 1 tensors"):
        load(write_checkpoint(tmp_path / "partial", partial, TINY))
    extra = {**state, "model.layers.0.self_attn.q_norm.weight": torch.ones(4)}
    with pytest.raises(ModelLoadError, match="unexpected tensor"):
        load(write_checkpoint(tmp_path / "extra", extra, TINY))
    wrong = {**state, "model.norm.weight": torch.ones(7)}
    with pytest.raises(ModelLoadError, match="does not fit"):
        load(write_checkpoint(tmp_path / "wrong", wrong, TINY))


def test_no_weights_is_a_clear_error(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps(TINY))
    with pytest.raises(ModelLoadError, match="no model.safetensors"):
        load(tmp_path)


def test_reader_matches_the_safetensors_package(tmp_path, state):
    from safetensors.torch import load_file

    directory = write_checkpoint(tmp_path / "c", state, TINY)
    reference = load_file(str(directory / "model.safetensors"))
    f = SafetensorsFile(directory / "model.safetensors")
    assert sorted(f.keys()) == sorted(reference)
    for name, tensor in reference.items():
        assert torch.equal(f.get(name), tensor)
        assert torch.equal(f.get(name, zero_copy=False), tensor)
