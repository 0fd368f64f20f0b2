"""Mistral decoder as an encoder: packed sequences in, last hidden states out. Pure math.

One switch, ``causal``: LLM2Vec removes the causal mask (bidirectional
attention, only sequence boundaries masked); Linq, e5-mistral and SFR keep the
causal mask they were trained with. Rope theta and the sliding window come from
the checkpoint's config.json.

Numerics follow Hugging Face's ``MistralModel`` so fp32 outputs match to
rounding: RMSNorm in float32 then ``weight * x.to(dtype)``, rotary cos/sin
computed in float32 and cast to the activation dtype, residuals in the model
dtype. Positions restart at 0 in every packed sequence; rope only sees position
differences, so this equals a left-padded batch.

Parameter names are Hugging Face's minus the ``model.`` prefix, so weights load
by name; ``lm_head`` is not needed for embeddings.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from gigarouter.engine.models.attention import GRID, AttentionLayout, attend


@dataclass(frozen=True)
class MistralConfig:
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    rms_norm_eps: float = 1e-5
    rope_theta: float = 10000.0
    sliding_window: int | None = None
    causal: bool = True          # False = bidirectional (LLM2Vec)

    @classmethod
    def from_hf(cls, raw: dict[str, Any]) -> MistralConfig:
        if raw.get("hidden_act", "silu") != "silu":
            raise ValueError(f"unsupported Mistral activation {raw.get('hidden_act')!r}")
        rope = raw.get("rope_parameters") or raw.get("rope_scaling") or {}
        if rope.get("rope_type", rope.get("type", "default")) != "default":
            raise ValueError(f"unsupported rope scaling {rope!r}")
        # transformers 5 moves rope_theta into rope_parameters; 4.x keeps it top level.
        theta = raw.get("rope_theta", rope.get("rope_theta", 10000.0))
        heads = raw["num_attention_heads"]
        return cls(
            vocab_size=raw["vocab_size"], hidden_size=raw["hidden_size"],
            intermediate_size=raw["intermediate_size"], num_hidden_layers=raw["num_hidden_layers"],
            num_attention_heads=heads, num_key_value_heads=raw.get("num_key_value_heads") or heads,
            head_dim=raw.get("head_dim") or raw["hidden_size"] // heads,
            rms_norm_eps=raw.get("rms_norm_eps", 1e-5), rope_theta=float(theta),
            sliding_window=raw.get("sliding_window"))

    def with_causal(self, causal: bool) -> MistralConfig:
        return dataclasses.replace(self, causal=causal)


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Float32 statistics whatever the model dtype, as Hugging Face does.
        h = x.float()
        h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * h.to(x.dtype)


def rotary(positions: torch.Tensor, head_dim: int, theta: float,
           dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """positions: [T] -> cos, sin: [T, 1, head_dim] in ``dtype`` (computed in float32).

    Recomputed every forward pass (a few kilobytes), so nothing is left on the
    meta device after loading and there is no buffer to keep in sync.
    """
    even = torch.arange(0, head_dim, 2, device=positions.device, dtype=torch.int64).float()
    inv_freq = 1.0 / (theta ** (even / head_dim))
    freqs = positions.float().unsqueeze(1) * inv_freq.unsqueeze(0)  # [T, D/2]
    emb = torch.cat((freqs, freqs), dim=-1)                        # [T, D]
    return emb.cos().to(dtype).unsqueeze(1), emb.sin().to(dtype).unsqueeze(1)


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    # x: [T, H, D]; rotate_half convention of Hugging Face checkpoints.
    half = x.shape[-1] // 2
    rotated = torch.cat((-x.narrow(-1, half, half), x.narrow(-1, 0, half)), dim=-1)
    return x * cos + rotated * sin


class MistralAttention(nn.Module):
    def __init__(self, cfg: MistralConfig) -> None:
        super().__init__()
        self.heads, self.kv_heads, self.head_dim = cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim
        self.q_proj = nn.Linear(cfg.hidden_size, self.heads * self.head_dim, bias=False)
        self.k_proj = nn.Linear(cfg.hidden_size, self.kv_heads * self.head_dim, bias=False)
        self.v_proj = nn.Linear(cfg.hidden_size, self.kv_heads * self.head_dim, bias=False)
        self.o_proj = nn.Linear(self.heads * self.head_dim, cfg.hidden_size, bias=False)

    def forward(self, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor],
                layout: AttentionLayout) -> torch.Tensor:
        t = x.shape[0]
        q = self.q_proj(x).view(t, self.heads, self.head_dim)       # [T, Hq, D]
        k = self.k_proj(x).view(t, self.kv_heads, self.head_dim)    # [T, Hkv, D]
        v = self.v_proj(x).view(t, self.kv_heads, self.head_dim)
        q, k = apply_rotary(q, *rope), apply_rotary(k, *rope)
        return self.o_proj(attend(q, k, v, layout).reshape(t, -1))  # [T, hidden]


class MistralMLP(nn.Module):
    def __init__(self, cfg: MistralConfig) -> None:
        super().__init__()
        self.gate_proj = nn.Linear(cfg.hidden_size, cfg.intermediate_size, bias=False)
        self.up_proj = nn.Linear(cfg.hidden_size, cfg.intermediate_size, bias=False)
        self.down_proj = nn.Linear(cfg.intermediate_size, cfg.hidden_size, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class MistralLayer(nn.Module):
    def __init__(self, cfg: MistralConfig) -> None:
        super().__init__()
        self.self_attn = MistralAttention(cfg)
        self.mlp = MistralMLP(cfg)
        self.input_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)

    def forward(self, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor],
                layout: AttentionLayout) -> torch.Tensor:
        x = x + self.self_attn(self.input_layernorm(x), rope, layout)
        return x + self.mlp(self.post_attention_layernorm(x))


class MistralModel(nn.Module):
    """Packed token ids in, packed final-norm hidden states out."""

    def __init__(self, cfg: MistralConfig) -> None:
        super().__init__()
        self.config = cfg
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.layers = nn.ModuleList(MistralLayer(cfg) for _ in range(cfg.num_hidden_layers))
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        #: grid or varlen (engine/models/attention.py); the engine sets it once, at start-up
        self.attention_path = GRID

    @property
    def attention_window(self) -> int | None:
        # A causal model only ever looks back, so the window is the only extra mask;
        # bidirectional LLM2Vec checkpoints (Instruct-v0.2) have no window.
        return self.config.sliding_window if self.config.causal else None

    def attention_shape(self) -> dict:
        """What ``select_attention`` needs to know about this model's attention."""
        cfg = self.config
        return {"heads": cfg.num_attention_heads, "kv_heads": cfg.num_key_value_heads, "head_dim": cfg.head_dim,
                "causal": cfg.causal, "window": self.attention_window}

    def attention_layout(self, cu_seqlens, device: torch.device) -> AttentionLayout:
        return AttentionLayout.build(cu_seqlens, causal=self.config.causal, window=self.attention_window,
                                     path=self.attention_path, device=device)

    def forward(self, input_ids: torch.Tensor, cu_seqlens) -> torch.Tensor:
        # input_ids: [T] on the device; cu_seqlens: [n+1], the host copy -> hidden: [T, hidden]
        cfg = self.config
        layout = self.attention_layout(cu_seqlens, input_ids.device)
        x = self.embed_tokens(input_ids)                               # [T, hidden]
        rope = rotary(layout.pos_in_seq, cfg.head_dim, cfg.rope_theta, x.dtype)
        for layer in self.layers:
            x = layer(x, rope, layout)
        return self.norm(x)

    @staticmethod
    def checkpoint_key(name: str) -> str | None:
        """Map a Hugging Face tensor name to ours (None = unused: the LM head, stale rope buffers)."""
        if name.startswith("lm_head.") or name.endswith("rotary_emb.inv_freq"):
            return None
        return name.removeprefix("model.")
