"""BERT encoder (all-MiniLM-L6-v2 and friends), packed sequences, pure math.

Parameter names follow the Hugging Face checkpoint so weights load by name.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from gigarouter.engine.models.attention import GRID, AttentionLayout, attend
from gigarouter.engine.onednn import OneDnnLinear, fused_qkv, linear_plus
from gigarouter.engine.precision import BF16Linear


@dataclass(frozen=True)
class BertConfig:
    vocab_size: int
    hidden_size: int
    num_hidden_layers: int
    num_attention_heads: int
    intermediate_size: int
    max_position_embeddings: int = 512
    type_vocab_size: int = 2
    layer_norm_eps: float = 1e-12

    @classmethod
    def from_hf(cls, raw: dict[str, Any]) -> BertConfig:
        if raw.get("hidden_act", "gelu") != "gelu":
            raise ValueError(f"unsupported BERT activation {raw.get('hidden_act')!r}")
        if raw.get("position_embedding_type", "absolute") != "absolute":
            raise ValueError("only absolute position embeddings are supported")
        return cls(**{k: raw[k] for k in cls.__dataclass_fields__ if k in raw})

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads


class BertEmbeddings(nn.Module):
    def __init__(self, cfg: BertConfig) -> None:
        super().__init__()
        self.word_embeddings = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.position_embeddings = nn.Embedding(cfg.max_position_embeddings, cfg.hidden_size)
        self.token_type_embeddings = nn.Embedding(cfg.type_vocab_size, cfg.hidden_size)
        self.LayerNorm = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)

    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        # input_ids, positions: [T] -> [T, hidden]; single-segment inputs use token type 0.
        x = (self.word_embeddings(input_ids) + self.position_embeddings(positions)
             + self.token_type_embeddings.weight.select(0, 0))
        return self.LayerNorm(x)


class BertSelfAttention(nn.Module):
    def __init__(self, cfg: BertConfig) -> None:
        super().__init__()
        self.query = nn.Linear(cfg.hidden_size, cfg.hidden_size)
        self.key = nn.Linear(cfg.hidden_size, cfg.hidden_size)
        self.value = nn.Linear(cfg.hidden_size, cfg.hidden_size)
        self.heads = cfg.num_attention_heads
        self.head_dim = cfg.head_dim


class BertSelfOutput(nn.Module):
    def __init__(self, cfg: BertConfig) -> None:
        super().__init__()
        self.dense = nn.Linear(cfg.hidden_size, cfg.hidden_size)
        self.LayerNorm = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)


class BertAttention(nn.Module):
    def __init__(self, cfg: BertConfig) -> None:
        super().__init__()
        self.self = BertSelfAttention(cfg)
        self.output = BertSelfOutput(cfg)

    def forward(self, x: torch.Tensor, layout: AttentionLayout) -> torch.Tensor:
        s = self.self
        t = x.shape[0]
        if hasattr(s, "qkv"):                           # packed for CPU serving: one GEMM
            q, k, v = s.qkv(x).view(t, 3, s.heads, s.head_dim).unbind(1)
        else:
            q = s.query(x).view(t, s.heads, s.head_dim)   # [T, H, D]
            k = s.key(x).view(t, s.heads, s.head_dim)
            v = s.value(x).view(t, s.heads, s.head_dim)
        ctx = attend(q, k, v, layout).reshape(t, -1)  # [T, hidden]
        return self.output.LayerNorm(linear_plus(self.output.dense, ctx, x))


class BertIntermediate(nn.Module):
    def __init__(self, cfg: BertConfig) -> None:
        super().__init__()
        self.dense = nn.Linear(cfg.hidden_size, cfg.intermediate_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.gelu(self.dense(x))


class BertOutput(nn.Module):
    def __init__(self, cfg: BertConfig) -> None:
        super().__init__()
        self.dense = nn.Linear(cfg.intermediate_size, cfg.hidden_size)
        self.LayerNorm = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)


class BertLayer(nn.Module):
    def __init__(self, cfg: BertConfig) -> None:
        super().__init__()
        self.attention = BertAttention(cfg)
        self.intermediate = BertIntermediate(cfg)
        self.output = BertOutput(cfg)

    def forward(self, x: torch.Tensor, layout: AttentionLayout) -> torch.Tensor:
        x = self.attention(x, layout)
        h = self.intermediate(x)       # GELU(up-projection); bf16 when the down-projection multiplies in bf16
        return self.output.LayerNorm(linear_plus(self.output.dense, h, x))


class BertEncoder(nn.Module):
    def __init__(self, cfg: BertConfig) -> None:
        super().__init__()
        self.layer = nn.ModuleList(BertLayer(cfg) for _ in range(cfg.num_hidden_layers))


class BertModel(nn.Module):
    """Packed token ids in, packed last hidden states out."""

    def __init__(self, cfg: BertConfig) -> None:
        super().__init__()
        self.config = cfg
        self.embeddings = BertEmbeddings(cfg)
        self.encoder = BertEncoder(cfg)
        #: grid or varlen (engine/models/attention.py); the engine sets it once, at start-up
        self.attention_path = GRID

    attention_window = None

    def attention_shape(self) -> dict:
        """What ``select_attention`` needs to know about this model's attention."""
        cfg = self.config
        return {"heads": cfg.num_attention_heads, "kv_heads": cfg.num_attention_heads, "head_dim": cfg.head_dim,
                "causal": False, "window": None}

    def attention_layout(self, cu_seqlens, device: torch.device) -> AttentionLayout:
        return AttentionLayout.build(cu_seqlens, causal=False, path=self.attention_path, device=device)

    def forward(self, input_ids: torch.Tensor, cu_seqlens) -> torch.Tensor:
        # input_ids: [T] on the device; cu_seqlens: [n+1], the host copy -> hidden: [T, hidden]
        layout = self.attention_layout(cu_seqlens, input_ids.device)
        x = self.embeddings(input_ids, layout.pos_in_seq)
        for layer in self.encoder.layer:
            x = layer(x, layout)
        return x

    def fuse_for_onednn(self) -> None:
        """CPU serving (``engine/onednn.py``): Q, K and V as one GEMM, GELU inside the up-projection's
        GEMM (which, under bfloat16-mixed, hands its bf16 output straight to the down-projection).
        The residual adds fuse where ``forward`` calls ``linear_plus``. Irreversible: serving only."""
        for layer in self.encoder.layer:
            s = layer.attention.self
            if all(type(m) is nn.Linear for m in (s.query, s.key, s.value)):
                s.qkv = fused_qkv(s.query, s.key, s.value)
                del s.query, s.key, s.value
            up, down = layer.intermediate.dense, layer.output.dense
            both_bf16 = isinstance(up, BF16Linear) and isinstance(down, BF16Linear)
            layer.intermediate = OneDnnLinear.of(up, activation="gelu", bf16_output=both_bf16)

    @staticmethod
    def checkpoint_key(name: str) -> str | None:
        """Map a checkpoint tensor name to ours (None = not used, e.g. the pooler)."""
        name = name.removeprefix("bert.")
        if name.startswith(("pooler.", "cls.")) or name == "embeddings.position_ids":
            return None
        return name
