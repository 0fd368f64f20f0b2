"""Our packed Mistral against Hugging Face's MistralModel (fp32, same weights)."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from gigarouter.engine.models.mistral import MistralConfig, MistralModel
from tests.engine.tiny import TINY, mistral_state

transformers = pytest.importorskip("transformers")


def hf_model(config: dict, state: dict) -> torch.nn.Module:
    hf_config = transformers.MistralConfig(**{k: v for k, v in config.items()
                                              if k not in ("model_type", "architectures")},
                                           attn_implementation="eager")
    model = transformers.MistralModel(hf_config).eval()
    model.load_state_dict({k.removeprefix("model."): v for k, v in state.items() if not k.startswith("lm_head")})
    return model


def ours(config: dict, state: dict, *, causal: bool) -> MistralModel:
    with torch.device("meta"):
        model = MistralModel(MistralConfig.from_hf(config).with_causal(causal))
    mapped = {MistralModel.checkpoint_key(k): v for k, v in state.items()}
    model.load_state_dict({k: v for k, v in mapped.items() if k is not None}, assign=True)
    return model.eval()


def run(model: MistralModel, seqs: list[list[int]]) -> list[torch.Tensor]:
    ids = torch.tensor([t for s in seqs for t in s])
    cu = torch.tensor([0, *torch.tensor([len(s) for s in seqs]).cumsum(0).tolist()])
    with torch.no_grad():
        hidden = model(ids, cu)
    return [hidden[cu[i]:cu[i + 1]] for i in range(len(seqs))]


@pytest.fixture(scope="module")
def state() -> dict:
    return mistral_state(TINY, seed=1)


def test_causal_matches_transformers(state):
    seq = torch.randint(0, TINY["vocab_size"], (1, 23), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        ref = hf_model(TINY, state)(seq).last_hidden_state[0]
    got = run(ours(TINY, state, causal=True), [seq[0].tolist()])[0]
    torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-5)


def test_bidirectional_matches_transformers_without_mask(state):
    seq = torch.randint(0, TINY["vocab_size"], (1, 17), generator=torch.Generator().manual_seed(3))
    everything = torch.zeros(1, 1, 17, 17)                 # an additive 4D mask that hides nothing
    with torch.no_grad():
        ref = hf_model(TINY, state)(seq, attention_mask=everything).last_hidden_state[0]
    got = run(ours(TINY, state, causal=False), [seq[0].tolist()])[0]
    torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-5)


def test_attention_switch_changes_the_outputs(state):
    seq = list(range(5, 20))
    causal = run(ours(TINY, state, causal=True), [seq])[0]
    bidir = run(ours(TINY, state, causal=False), [seq])[0]
    assert (causal - bidir).abs().amax(dim=1).min() > 1e-3   # every position, the first one included


def test_sliding_window_matches_transformers():
    config = {**TINY, "sliding_window": 4}
    state = mistral_state(config, seed=4)
    seq = torch.randint(0, TINY["vocab_size"], (1, 12), generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        ref = hf_model(config, state)(seq).last_hidden_state[0]
    got = run(ours(config, state, causal=True), [seq[0].tolist()])[0]
    torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-5)
    unwindowed = run(ours(TINY, state, causal=True), [seq[0].tolist()])[0]
    assert (got[-1] - unwindowed[-1]).abs().max() > 1e-4


@pytest.mark.parametrize("causal", [True, False])
def test_packed_batch_equals_one_by_one(state, causal):
    model = ours(TINY, state, causal=causal)
    seqs = [[1, 5, 9, 11, 200], [1, 7], [1] + list(range(30, 60)), [3]]
    packed = run(model, seqs)
    for seq, got in zip(seqs, packed, strict=True):
        torch.testing.assert_close(got, run(model, [seq])[0], rtol=1e-5, atol=1e-5)


def test_positions_restart_per_sequence_like_left_padding(state):
    """Packing puts every sequence at position 0; Hugging Face with left padding does not, and rope makes it equal."""
    model = hf_model(TINY, state)
    short, long_ = [1, 9, 8, 7], [1] + list(range(40, 52))
    pad = len(long_) - len(short)
    ids = torch.tensor([[0] * pad + short, long_])
    mask = torch.tensor([[0] * pad + [1] * len(short), [1] * len(long_)])
    with torch.no_grad():
        ref = model(ids, attention_mask=mask).last_hidden_state
    got = run(ours(TINY, state, causal=True), [short, long_])
    torch.testing.assert_close(got[0], ref[0, pad:], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(got[1], ref[1], rtol=1e-4, atol=1e-5)


def test_config_from_transformers_5_rope_parameters():
    raw = {**TINY, "rope_parameters": {"rope_type": "default", "rope_theta": 12345.0}}
    del raw["rope_theta"]
    cfg = MistralConfig.from_hf(raw)
    assert cfg.rope_theta == 12345.0 and cfg.causal
    assert dataclasses.replace(cfg, causal=False) == cfg.with_causal(False)
    with pytest.raises(ValueError, match="rope scaling"):
        MistralConfig.from_hf({**TINY, "rope_scaling": {"rope_type": "yarn", "factor": 4.0}})


def test_checkpoint_key_drops_lm_head():
    assert MistralModel.checkpoint_key("lm_head.weight") is None
    assert MistralModel.checkpoint_key("model.layers.0.self_attn.rotary_emb.inv_freq") is None
    assert MistralModel.checkpoint_key("model.norm.weight") == "norm.weight"
    assert MistralModel.checkpoint_key("layers.1.mlp.up_proj.weight") == "layers.1.mlp.up_proj.weight"
