"""Tiny random Mistral checkpoints and LoRA adapters written in the Hugging Face layout.

The golden-vector fixtures (tests/fixtures/tiny) prove parity with the
reference libraries; these generators let loading, LoRA and attention tests vary
one thing at a time (shards, dtypes, ranks, key spellings) without touching them.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import save_file

TINY = {
    "model_type": "mistral", "architectures": ["MistralForCausalLM"], "vocab_size": 320, "hidden_size": 64,
    "intermediate_size": 112, "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
    "head_dim": 16, "rms_norm_eps": 1e-5, "rope_theta": 1e6, "sliding_window": None, "hidden_act": "silu",
    "max_position_embeddings": 4096, "torch_dtype": "float32",
}
LINEARS = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
           "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj")


def mistral_state(config: dict, *, seed: int = 0, dtype: torch.dtype = torch.float32,
                  lm_head: bool = True) -> dict[str, torch.Tensor]:
    """Random weights under Hugging Face MistralForCausalLM names."""
    g = torch.Generator().manual_seed(seed)
    h, f, v, hd = config["hidden_size"], config["intermediate_size"], config["vocab_size"], config["head_dim"]
    q, kv = config["num_attention_heads"] * hd, config["num_key_value_heads"] * hd
    shapes = {"self_attn.q_proj": (q, h), "self_attn.k_proj": (kv, h), "self_attn.v_proj": (kv, h),
              "self_attn.o_proj": (h, q), "mlp.gate_proj": (f, h), "mlp.up_proj": (f, h), "mlp.down_proj": (h, f)}

    def rand(*shape, scale=0.08):
        return (torch.randn(*shape, generator=g) * scale).to(dtype)

    state = {"model.embed_tokens.weight": rand(v, h, scale=1.0), "model.norm.weight": 1 + rand(h, scale=0.1)}
    for i in range(config["num_hidden_layers"]):
        for name, shape in shapes.items():
            state[f"model.layers.{i}.{name}.weight"] = rand(*shape)
        state[f"model.layers.{i}.input_layernorm.weight"] = 1 + rand(h, scale=0.1)
        state[f"model.layers.{i}.post_attention_layernorm.weight"] = 1 + rand(h, scale=0.1)
    if lm_head:
        state["lm_head.weight"] = rand(v, h)
    return state


def write_checkpoint(directory: Path, state: dict[str, torch.Tensor], config: dict, *,
                     shards: int = 1) -> Path:
    """config.json plus model.safetensors, or ``shards`` files with an index."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "config.json").write_text(json.dumps(config))
    if shards == 1:
        save_file(state, str(directory / "model.safetensors"), metadata={"format": "pt"})
        return directory
    names = list(state)
    weight_map = {}
    for s in range(shards):
        file = f"model-{s + 1:05d}-of-{shards:05d}.safetensors"
        part = names[s::shards]
        save_file({n: state[n] for n in part}, str(directory / file), metadata={"format": "pt"})
        weight_map.update({n: file for n in part})
    index = {"metadata": {"total_size": sum(t.numel() * t.element_size() for t in state.values())},
             "weight_map": weight_map}
    (directory / "model.safetensors.index.json").write_text(json.dumps(index))
    return directory


def lora_weights(config: dict, *, r: int, seed: int, modules=LINEARS, prefix: str = "base_model.model.",
                 scale: float = 0.1) -> dict[str, torch.Tensor]:
    """PEFT-named lora_A / lora_B pairs for every layer's ``modules``."""
    g = torch.Generator().manual_seed(seed)
    shapes = {k: v.shape for k, v in mistral_state(config, lm_head=False).items()}
    out = {}
    for i in range(config["num_hidden_layers"]):
        for m in modules:
            o, n = shapes[f"model.layers.{i}.{m}.weight"]
            out[f"{prefix}layers.{i}.{m}.lora_A.weight"] = torch.randn(r, n, generator=g) * scale
            out[f"{prefix}layers.{i}.{m}.lora_B.weight"] = torch.randn(o, r, generator=g) * scale
    return out


def write_adapter(directory: Path, weights: dict[str, torch.Tensor], *, r: int, alpha: float,
                  base: str = "base", **extra) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    config = {"peft_type": "LORA", "r": r, "lora_alpha": alpha, "base_model_name_or_path": base, "bias": "none",
              "target_modules": sorted({k.split(".lora_")[0].rsplit(".", 1)[1] for k in weights}), **extra}
    (directory / "adapter_config.json").write_text(json.dumps(config))
    save_file(weights, str(directory / "adapter_model.safetensors"))
    return directory
