"""Precision: chosen per device and CPU flags (a pure function), overridden by dtype, and the
bfloat16-mixed model (bf16 matmuls, the rest float32) against float32."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from gigarouter.engine.models.bert import BertConfig, BertModel
from gigarouter.engine.precision import (
    BF16Linear,
    Precision,
    choose_precision,
    cpu_flags,
    use_bf16_matmuls,
)
from gigarouter.settings import DTYPES, ConfigError, ModelConfig

SAPPHIRE_RAPIDS = frozenset({"avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_bf16", "amx_tile", "amx_int8"})
ZEN4 = frozenset({"avx2", "avx512f", "avx512_bf16", "avx512_vnni"})
ZEN3 = frozenset({"avx2", "fma", "f16c"})
SKYLAKE_X = frozenset({"avx2", "avx512f", "avx512bw", "avx512_vnni"})


@pytest.mark.parametrize(("flags", "expected"), [
    (SAPPHIRE_RAPIDS, "bfloat16-mixed"), (ZEN4, "bfloat16-mixed"), (ZEN3, "float32"), (SKYLAKE_X, "float32"),
    (frozenset(), "float32"),
])
def test_auto_on_cpu_picks_by_what_the_cpu_multiplies_natively(flags, expected):
    chosen = choose_precision("auto", device_type="cpu", flags=flags)
    assert chosen.name == expected
    assert chosen.reason.startswith("auto")
    assert chosen.mixed == (expected == "bfloat16-mixed")
    assert chosen.weights_dtype == torch.float32     # mixed loads fp32, then casts its Linear weights


def test_auto_on_a_gpu_is_bfloat16_whatever_the_host_cpu():
    for flags in (SAPPHIRE_RAPIDS, ZEN3):
        assert choose_precision("auto", device_type="cuda", flags=flags) == Precision("bfloat16",
                                                                                      "auto: the GPU default")


@pytest.mark.parametrize("dtype", ["float32", "bfloat16", "float16", "bfloat16-mixed"])
@pytest.mark.parametrize("flags", [SAPPHIRE_RAPIDS, ZEN3])
def test_dtype_in_the_config_overrides_the_choice(dtype, flags):
    chosen = choose_precision(dtype, device_type="cpu", flags=flags)
    assert chosen.name == dtype and "config" in chosen.reason


def test_unknown_precision_is_refused():
    with pytest.raises(ValueError, match="bfloat16-mixed"):
        choose_precision("int8", device_type="cpu", flags=ZEN3)
    with pytest.raises(ConfigError, match="dtype must be one of"):
        ModelConfig(name="m", recipe="sbert", weights="x", dtype="int8")
    assert "bfloat16-mixed" in DTYPES


def test_cpu_flags_reads_the_flags_line(tmp_path):
    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nmodel name\t: Some CPU\nflags\t\t: fpu avx2 amx_bf16 avx512_bf16\n\n"
                    "processor\t: 1\nflags\t\t: fpu avx2 amx_bf16 avx512_bf16\n")
    assert cpu_flags(info) == {"fpu", "avx2", "amx_bf16", "avx512_bf16"}
    assert cpu_flags(tmp_path / "missing") == frozenset()
    assert choose_precision("auto", device_type="cpu", flags=cpu_flags(info)).name == "bfloat16-mixed"


def tiny_bert(seed: int = 0) -> BertModel:
    torch.manual_seed(seed)
    model = BertModel(BertConfig(vocab_size=100, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                                 intermediate_size=128))
    for module in model.modules():   # LayerNorm weights away from 1 and biases away from 0
        if isinstance(module, (nn.LayerNorm, nn.Linear)) and module.bias is not None:
            nn.init.normal_(module.bias, std=0.1)
    return model.eval().requires_grad_(False)


def test_the_feed_forward_multiplies_in_bf16_and_the_rest_stays_float32():
    model = use_bf16_matmuls(tiny_bert())
    mixed = sorted(name for name, m in model.named_modules() if isinstance(m, BF16Linear))
    assert mixed == [f"encoder.layer.{i}.{part}" for i in range(2) for part in ("intermediate.dense", "output.dense")]
    kept = [name for name, m in model.named_modules() if type(m) is nn.Linear]
    assert len(kept) == 2 * 4 and all(".attention." in name for name in kept)
    assert all(m.weight.dtype == torch.bfloat16 and m.bias.dtype == torch.float32
               for m in model.modules() if isinstance(m, BF16Linear))
    others = {name: p.dtype for name, p in model.named_parameters() if "LayerNorm" in name or "embeddings" in name}
    assert others and set(others.values()) == {torch.float32}
    # Same parameter names as nn.Linear: checkpoints, LoRA merges and state dicts keep their keys.
    assert set(model.state_dict()) == set(tiny_bert().state_dict())


def test_every_linear_when_asked():
    model = use_bf16_matmuls(tiny_bert(), where=lambda name: True)
    assert sum(isinstance(m, BF16Linear) for m in model.modules()) == 12
    assert not any(type(m) is nn.Linear for m in model.modules())


def test_bf16_linear_is_the_linear_within_bf16_rounding():
    torch.manual_seed(1)
    linear = nn.Linear(384, 1536)
    x = torch.randn(37, 384)
    with torch.inference_mode():
        exact = linear(x)
        ours = BF16Linear(linear)(x)
    assert ours.dtype == torch.float32
    relative = (ours - exact).norm() / exact.norm()
    assert 1e-5 < relative < 1e-2   # bf16 rounding really happened, and no more than that


def test_mixed_tiny_bert_keeps_float32_vectors_and_packs_like_one_by_one():
    fp32 = tiny_bert()
    mixed = use_bf16_matmuls(copy.deepcopy(fp32))
    ids = torch.randint(3, 100, (29,))
    cu = torch.tensor([0, 4, 21, 29])
    with torch.inference_mode():
        want, got = fp32(ids, cu), mixed(ids, cu)
        alone = torch.cat([mixed(ids[a:b], torch.tensor([0, b - a])) for a, b in zip(cu[:-1], cu[1:], strict=True)])
    assert got.dtype == torch.float32
    assert torch.nn.functional.cosine_similarity(got, want).min() > 0.9999
    torch.testing.assert_close(got, alone, rtol=1e-3, atol=1e-3)
