"""The CPU serving kernels (engine/onednn.py): the same arithmetic as ATen's, fused where it can be."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from gigarouter.engine import onednn
from gigarouter.engine.models.bert import BertConfig, BertModel
from gigarouter.engine.onednn import OneDnnLinear, linear_plus, pack_linears, wanted_kernels
from gigarouter.engine.precision import BF16Linear, use_bf16_matmuls

pytestmark = pytest.mark.skipif(onednn.unavailable_reason() is not None, reason="torch without oneDNN")
#: oneDNN's bf16 GEMMs need AVX-512 (BW/VL/DQ), AVX-NE-CONVERT or AMX: not an AVX2-only CPU such as Zen 3
needs_onednn_bf16 = pytest.mark.skipif(onednn.unavailable_reason(bf16=True) is not None,
                                       reason="this CPU has no oneDNN bf16 GEMM")


def linear(n_in: int, n_out: int, seed: int = 0) -> nn.Linear:
    torch.manual_seed(seed)
    layer = nn.Linear(n_in, n_out)
    with torch.no_grad():
        layer.weight.mul_(0.2)
        layer.bias.normal_(0, 0.1)
    return layer.requires_grad_(False)


def test_float32_equals_aten_with_and_without_gelu_and_residual():
    layer, x, residual = linear(48, 40), torch.randn(17, 48), torch.randn(17, 40)
    with torch.inference_mode():
        want = layer(x)
        torch.testing.assert_close(OneDnnLinear.of(layer)(x), want, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(OneDnnLinear.of(layer)(x, residual), want + residual, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(linear_plus(layer, x, residual), want + residual)
        gelu = OneDnnLinear.of(layer, activation="gelu")(x)
        torch.testing.assert_close(gelu, F.gelu(want), rtol=1e-5, atol=1e-5)   # erf GELU, as F.gelu
        # a leading batch dimension goes through unchanged
        assert OneDnnLinear.of(layer)(x.view(1, 17, 48)).shape == (1, 17, 40)


@needs_onednn_bf16
def test_bf16_rounds_as_bf16linear_does_and_can_hand_back_bf16():
    layer, x = linear(64, 32, seed=1), torch.randn(9, 64)
    bf16 = BF16Linear(layer)
    with torch.inference_mode():
        exact = layer(x)
        packed = OneDnnLinear.of(bf16)(x)
        assert packed.dtype == torch.float32
        torch.testing.assert_close(packed, bf16(x), rtol=0, atol=1e-6)   # same roundings, bias after in fp32
        fused = OneDnnLinear.of(bf16, activation="gelu", bf16_output=True)(x)
        assert fused.dtype == torch.bfloat16
        # GELU on the fp32 accumulator, one rounding: within a bf16 step of the exact value
        assert float((fused.float() - F.gelu(exact)).abs().max()) < 0.02
    with pytest.raises(ValueError, match="bf16_output"):
        OneDnnLinear.of(layer, bf16_output=True)
    with pytest.raises(ValueError, match="activation"):
        OneDnnLinear.of(layer, activation="relu6")


def tiny_bert() -> BertModel:
    cfg = BertConfig(vocab_size=50, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                     intermediate_size=64, max_position_embeddings=64)
    torch.manual_seed(0)
    model = BertModel(cfg)
    for p in model.parameters():
        nn.init.normal_(p, 0, 0.2)
    return model.eval().requires_grad_(False)


def run(model: BertModel, ids: torch.Tensor, cu: list[int]) -> torch.Tensor:
    with torch.inference_mode():
        return model(ids, torch.tensor(cu))


@pytest.mark.parametrize("mixed", [False, pytest.param(True, marks=needs_onednn_bf16)])
def test_bert_fusions_give_the_unfused_answer(mixed):
    """Fused QKV, GELU in the up-projection and fused residual adds: the same hidden states."""
    ids, cu = torch.randint(0, 50, (23,)), [0, 5, 17, 23]
    plain = tiny_bert()
    packed = tiny_bert()
    if mixed:
        use_bf16_matmuls(plain)
        use_bf16_matmuls(packed)
    want = run(plain, ids, cu)
    pack_linears(packed)
    layer = packed.encoder.layer[0]
    assert isinstance(layer.attention.self.qkv, OneDnnLinear) and not hasattr(layer.attention.self, "query")
    assert isinstance(layer.intermediate, OneDnnLinear) and layer.intermediate.activation == "gelu"
    assert layer.intermediate.bf16_output is mixed and layer.output.dense.bf16 is mixed
    got = run(packed, ids, cu)
    if mixed:   # one bf16 rounding fewer than the unfused path: close, not equal
        assert float(F.cosine_similarity(got, want).min()) > 0.9999
    else:
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)


def test_the_kernel_choice_is_read_at_load_and_never_silently_replaced(monkeypatch):
    cpu = torch.device("cpu")
    monkeypatch.delenv("GIGAROUTER_CPU_LINEAR", raising=False)
    assert wanted_kernels(cpu) == onednn.ONEDNN
    assert wanted_kernels(torch.device("cuda")) == onednn.ATEN
    monkeypatch.setenv("GIGAROUTER_CPU_LINEAR", "aten")
    assert wanted_kernels(cpu) == onednn.ATEN
    monkeypatch.setenv("GIGAROUTER_CPU_LINEAR", "mkl")
    with pytest.raises(ValueError, match="GIGAROUTER_CPU_LINEAR"):
        wanted_kernels(cpu)
    monkeypatch.setenv("GIGAROUTER_CPU_LINEAR", "onednn")
    monkeypatch.setattr(onednn, "unavailable_reason", lambda **_: "no oneDNN in this build")
    with pytest.raises(RuntimeError, match="no oneDNN in this build"):
        wanted_kernels(cpu)
    monkeypatch.setenv("GIGAROUTER_CPU_LINEAR", "auto")
    assert wanted_kernels(cpu) == onednn.ATEN       # auto: ATen, with a warning in the log


def test_the_embedder_serves_packed_and_aten_alike(monkeypatch):
    """The whole loading path: packed by default on CPU, ATen on request, the same vectors."""
    import dataclasses

    from gigarouter.embedder import Embedder
    from gigarouter.settings import Settings, default_model

    texts = ["a llama", "what do alpacas eat?", "x " * 40]
    config = dataclasses.replace(default_model(), dtype="float32")
    with Embedder(config, settings=Settings(cache="off")) as packed:
        assert getattr(packed.engine.model, "linear_kernels", None) == onednn.ONEDNN
        ours = packed.encode(texts)
    monkeypatch.setenv("GIGAROUTER_CPU_LINEAR", "aten")
    with Embedder(config, settings=Settings(cache="off")) as aten:
        assert not hasattr(aten.engine.model, "linear_kernels")
        torch.testing.assert_close(torch.from_numpy(ours), torch.from_numpy(aten.encode(texts)), rtol=0, atol=2e-6)


def test_bfloat16_mixed_loads_on_aten_where_onednn_has_no_bf16_gemm(monkeypatch, caplog):
    """An AVX2-only CPU (AMD Zen 3): oneDNN refuses to reorder a bf16 weight, so packing a
    ``bfloat16-mixed`` model there failed its load. Now its linears stay on ATen; float32 still packs."""
    import dataclasses
    import logging

    from gigarouter.embedder import Embedder
    from gigarouter.settings import Settings, default_model

    monkeypatch.delenv("GIGAROUTER_CPU_LINEAR", raising=False)
    monkeypatch.setattr(onednn, "bf16_supported", lambda: False)
    cpu = torch.device("cpu")
    assert wanted_kernels(cpu) == onednn.ONEDNN                     # float32 models still pack
    caplog.set_level(logging.WARNING, logger="gigarouter.engine.onednn")
    assert wanted_kernels(cpu, bf16=True) == onednn.ATEN
    assert "bf16" in caplog.text
    monkeypatch.setenv("GIGAROUTER_CPU_LINEAR", "onednn")            # asked for by name: refused, not ignored
    with pytest.raises(RuntimeError, match="bf16 kernels need"):
        wanted_kernels(cpu, bf16=True)
    monkeypatch.delenv("GIGAROUTER_CPU_LINEAR")
    texts = ["a llama", "what do alpacas eat?", "x " * 40]
    config = dataclasses.replace(default_model(), dtype="bfloat16-mixed")
    with Embedder(config, settings=Settings(cache="off")) as mixed:
        assert mixed.engine.precision == "bfloat16-mixed"
        assert not hasattr(mixed.engine.model, "linear_kernels")
        assert any(isinstance(m, BF16Linear) for m in mixed.engine.model.modules())
        vectors = mixed.encode(texts)
    assert vectors.shape == (3, 384) and np.isfinite(vectors).all()
