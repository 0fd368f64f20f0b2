"""Folding PEFT LoRA adapters into the weights equals running them unmerged."""

from __future__ import annotations

import json
import math
import warnings

import pytest
import torch

from gigarouter.engine.build import model_for
from gigarouter.engine.loading import load_weights
from gigarouter.engine.lora import merge_lora
from gigarouter.errors import ModelLoadError
from tests.engine.tiny import TINY, lora_weights, mistral_state, write_adapter, write_checkpoint

IDS, CU = torch.tensor([1, 5, 8, 13, 21, 34, 55, 89]), torch.tensor([0, 3, 8])


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    return write_checkpoint(tmp_path_factory.mktemp("base"), mistral_state(TINY, seed=11), TINY)


def loaded(base, *, recipe="llm2vec", dtype=torch.float32):
    model = model_for(TINY, recipe)
    load_weights(model, base, dtype=dtype, device=torch.device("cpu"), checkpoint_key=model.checkpoint_key)
    return model.eval()


def unmerged_forward(model, adapters: list[tuple[dict, float]]) -> torch.Tensor:
    """x @ W^T + sum_k s_k * (x @ A_k^T) @ B_k^T on every adapted linear, via forward hooks."""
    hooks = []
    for name, module in model.named_modules():
        extra = []
        for weights, scaling in adapters:
            for key, a in weights.items():
                if key.endswith("lora_A.weight") and key.split(".", 2)[2].startswith(name + ".lora_A"):
                    extra.append((a, weights[key.replace("lora_A", "lora_B")], scaling))
        if extra:
            def hook(mod, inputs, output, extra=extra):
                x = inputs[0]
                return output + sum(s * (x @ a.T) @ b.T for a, b, s in extra)
            hooks.append(module.register_forward_hook(hook))
    try:
        with torch.no_grad():
            return model(IDS, CU)
    finally:
        for h in hooks:
            h.remove()


def test_merge_equals_unmerged_forward_for_two_adapters_in_order(base, tmp_path):
    first = lora_weights(TINY, r=4, seed=1)
    second = lora_weights(TINY, r=8, seed=2, modules=("self_attn.q_proj", "self_attn.v_proj", "mlp.down_proj"))
    a1 = write_adapter(tmp_path / "a1", first, r=4, alpha=16)
    a2 = write_adapter(tmp_path / "a2", second, r=8, alpha=8)
    expected = unmerged_forward(loaded(base), [(first, 16 / 4), (second, 8 / 8)])
    model = loaded(base)
    assert merge_lora(model, a1) == 14 and merge_lora(model, a2) == 6
    with torch.no_grad():
        got = model(IDS, CU)
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)
    with torch.no_grad():
        assert (got - loaded(base)(IDS, CU)).abs().max() > 1e-2       # the adapters did something


@pytest.mark.parametrize("prefix", ["base_model.model.", "base_model.model.model."])
def test_peft_key_spellings(base, tmp_path, prefix):
    """Adapters trained on a bare MistralModel (LLM2Vec) or on a causal LM (model. prefix); .default suffixes."""
    weights = lora_weights(TINY, r=2, seed=3, prefix=prefix, modules=("self_attn.o_proj",))
    weights = {k.replace("lora_A.weight", "lora_A.default.weight") if i % 2 else k: v
               for i, (k, v) in enumerate(weights.items())}
    model = loaded(base)
    assert merge_lora(model, write_adapter(tmp_path / "a", weights, r=2, alpha=4)) == 2


def test_rslora_and_patterns_set_the_scaling(base, tmp_path):
    weights = lora_weights(TINY, r=4, seed=5, modules=("self_attn.q_proj", "mlp.up_proj"))
    adapter = write_adapter(tmp_path / "a", weights, r=4, alpha=8, use_rslora=True,
                            alpha_pattern={"up_proj": 2.0}, rank_pattern={})
    scalings = {"q_proj": 8 / math.sqrt(4), "up_proj": 2 / math.sqrt(4)}
    def only(part: str) -> dict:
        return {k: v for k, v in weights.items() if part in k}

    expected = unmerged_forward(loaded(base), [(only("q_proj"), scalings["q_proj"]),
                                               (only("up_proj"), scalings["up_proj"])])
    model = loaded(base)
    merge_lora(model, adapter)
    with torch.no_grad():
        torch.testing.assert_close(model(IDS, CU), expected, rtol=1e-4, atol=1e-5)


def test_bf16_merge_rounds_once(base, tmp_path):
    weights = lora_weights(TINY, r=4, seed=6)
    adapter = write_adapter(tmp_path / "a", weights, r=4, alpha=4)
    exact = loaded(base)
    merge_lora(exact, adapter)
    low = loaded(base, dtype=torch.bfloat16)
    merge_lora(low, adapter)
    for (name, w32), (_, w16) in zip(exact.named_parameters(), low.named_parameters(), strict=True):
        assert w16.dtype == torch.bfloat16
        # one rounding of the float32 result, except where the base weight's own rounding moved it
        assert (w16.float() - w32).abs().max() <= w32.abs().max() * 2 ** -7, name


@pytest.mark.parametrize(("change", "message"), [
    ({"use_dora": True}, "DoRA"),
    ({"bias": "lora_only"}, "trained biases"),
    ({"peft_type": "IA3"}, "only LORA"),
])
def test_unsupported_adapters_are_refused(base, tmp_path, change, message):
    adapter = write_adapter(tmp_path / "a", lora_weights(TINY, r=2, seed=1), r=2, alpha=2, **change)
    with pytest.raises(ModelLoadError, match=message):
        merge_lora(loaded(base), adapter)


def test_mismatched_adapters_are_refused(base, tmp_path):
    weights = lora_weights(TINY, r=2, seed=1, modules=("self_attn.q_proj",))
    adapter = write_adapter(tmp_path / "rank", weights, r=3, alpha=2)
    with pytest.raises(ModelLoadError, match="rank 2 in the weights, 3"):
        merge_lora(loaded(base), adapter)
    stray = {k.replace("q_proj", "qkv_proj"): v for k, v in weights.items()}
    with pytest.raises(ModelLoadError, match="does not have"):
        merge_lora(loaded(base), write_adapter(tmp_path / "stray", stray, r=2, alpha=2))
    lonely = {k: v for k, v in weights.items() if "lora_A" in k}
    with pytest.raises(ModelLoadError, match="without its pair"):
        merge_lora(loaded(base), write_adapter(tmp_path / "lonely", lonely, r=2, alpha=2))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelLoadError, match="not a PEFT adapter"):
        merge_lora(loaded(base), tmp_path / "empty")


def test_matches_peft_merge_and_unload(base, tmp_path):
    """When peft is installed: its own merge of the same adapter gives the same model."""
    peft = pytest.importorskip("peft")
    transformers = pytest.importorskip("transformers")
    weights = lora_weights(TINY, r=4, seed=9)
    adapter = write_adapter(tmp_path / "a", weights, r=4, alpha=8)
    hf = transformers.MistralModel(transformers.MistralConfig(
        **{k: v for k, v in TINY.items() if k not in ("model_type", "architectures")}))
    hf.load_state_dict({k.removeprefix("model."): v for k, v in mistral_state(TINY, seed=11).items()
                        if not k.startswith("lm_head")})
    config = json.loads((adapter / "adapter_config.json").read_text())
    config["base_model_name_or_path"] = None
    (adapter / "adapter_config.json").write_text(json.dumps(config))
    with warnings.catch_warnings():   # peft's own deprecation noise under transformers 5
        warnings.simplefilter("ignore")
        merged = peft.PeftModel.from_pretrained(hf, str(adapter)).merge_and_unload()
    ours = loaded(base)
    merge_lora(ours, adapter)
    theirs = merged.state_dict()
    for name, w in ours.state_dict().items():
        torch.testing.assert_close(w, theirs[name], rtol=1e-5, atol=1e-6)
