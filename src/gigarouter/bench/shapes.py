"""The models the engine benchmark runs: the real default model, or random weights in a named shape.

``minilm`` is the embedded all-MiniLM-L6-v2 loaded exactly as the server loads
it. The other shapes are built from a config with random weights (throughput
does not depend on the values): ``mistral-7b`` is the DESIGN.md shape of both
Mistral embedding models (GPU only in practice: 14.5 GB in bf16), and
``mistral-tiny`` / ``bert-tiny`` are small enough for a CPU and for tests, so
the same code path runs everywhere.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from gigarouter.engine.runner import TorchEngine, default_token_budget, resolve_device, resolve_dtype
from gigarouter.pooling.modes import PoolingMode

MISTRAL_7B = dict(vocab_size=32000, hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
                  num_attention_heads=32, num_key_value_heads=8, head_dim=128, rms_norm_eps=1e-5,
                  rope_theta=10000.0, sliding_window=4096, causal=True)
MISTRAL_TINY = dict(vocab_size=32000, hidden_size=256, intermediate_size=704, num_hidden_layers=2,
                    num_attention_heads=4, num_key_value_heads=2, head_dim=64, rms_norm_eps=1e-5,
                    rope_theta=10000.0, sliding_window=4096, causal=True)
BERT_TINY = dict(vocab_size=30522, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                 intermediate_size=128, max_position_embeddings=512)

SHAPES = ("minilm", "mistral-7b", "mistral-tiny", "bert-tiny")
#: fixed sequence lengths measured per shape (the default model's context is 256 tokens).
FIXED_LENGTHS = {"minilm": (16, 128, 256), "bert-tiny": (16, 128, 256),
                 "mistral-7b": (16, 128, 512, 4096), "mistral-tiny": (16, 128, 512)}


@dataclass
class BenchModel:
    """An engine plus the facts the FLOP count needs."""

    shape: str
    engine: TorchEngine
    model: nn.Module
    vocab_size: int
    max_seq_len: int
    layers: int
    attn_width: int            # query heads x head dim: the width of q.k and attn.v per layer
    causal: bool
    window: int | None
    dtype: torch.dtype

    @property
    def matmul_params(self) -> int:
        """Parameters that take part in a matmul per token (every weight except embedding tables)."""
        return matmul_params(self.model)

    def flops(self, lengths: Sequence[int]) -> float:
        return batch_flops(lengths, matmul_params=self.matmul_params, layers=self.layers,
                           attn_width=self.attn_width, causal=self.causal, window=self.window)


def matmul_params(model: nn.Module) -> int:
    """Parameters that take part in a matmul per token: every 2-D weight but the embedding tables
    (a lookup, no arithmetic)."""
    weights = sum(p.numel() for name, p in model.named_parameters() if p.dim() == 2 and "embed" not in name)
    # a model packed for CPU serving (engine/onednn.py) keeps its linear weights outside its parameters
    return weights + sum(getattr(m, "matmul_params", 0) for m in model.modules())


def attention_keys(n: int, *, causal: bool, window: int | None) -> float:
    """Keys summed over the queries of one ``n``-token sequence: n^2 bidirectional; causal query i
    sees i + 1 keys, at most ``window``."""
    if not causal:
        return float(n * n)
    w = n if window is None else min(window, n)
    return w * (w + 1) / 2 + (n - w) * w


def batch_flops(lengths: Sequence[int], *, matmul_params: int, layers: int, attn_width: int, causal: bool,
                window: int | None) -> float:
    """Useful FLOPs for a batch of sequences: 2 x matmul params per token plus attention.

    Attention per layer, per (query, key) pair it computes: q.k and attn.v, 2 x 2 x
    attn_width (query heads x head dim). Padding a grid path computes is not counted:
    it is waste, not work; nor is the embedding lookup.
    """
    dense = 2.0 * matmul_params
    return sum(n * dense + 4.0 * layers * attn_width * attention_keys(n, causal=causal, window=window)
               for n in lengths)


def model_flops(model: nn.Module, lengths: Sequence[int]) -> float:
    """``batch_flops`` for one of our Mistral or BERT models, its facts read off its config."""
    cfg = model.config
    heads = cfg.num_attention_heads
    head_dim = getattr(cfg, "head_dim", cfg.hidden_size // heads)
    causal = getattr(cfg, "causal", False)
    return batch_flops(lengths, matmul_params=matmul_params(model), layers=cfg.num_hidden_layers,
                       attn_width=heads * head_dim, causal=causal,
                       window=getattr(model, "attention_window", None))


def build(shape: str, *, device: str = "auto", dtype: str = "auto", token_budget: int | None = None,
          seed: int = 0) -> BenchModel:
    if shape == "minilm":
        return _minilm(device=device, dtype=dtype, token_budget=token_budget)
    if shape in ("mistral-7b", "mistral-tiny"):
        return _mistral(shape, MISTRAL_7B if shape == "mistral-7b" else MISTRAL_TINY,
                        device=device, dtype=dtype, token_budget=token_budget, seed=seed)
    if shape == "bert-tiny":
        return _bert_random(BERT_TINY, device=device, dtype=dtype, token_budget=token_budget, seed=seed)
    raise ValueError(f"unknown model shape {shape!r}; one of {', '.join(SHAPES)}")


def _minilm(*, device: str, dtype: str, token_budget: int | None) -> BenchModel:
    from gigarouter.providers.local.loading import load_model
    from gigarouter.settings import Settings, default_model

    config = dataclasses.replace(default_model(), device=device, dtype=dtype, token_budget=token_budget)
    _, engine = load_model(config, Settings())
    cfg = engine.model.config
    return BenchModel(shape="minilm", engine=engine, model=engine.model, vocab_size=cfg.vocab_size,
                      max_seq_len=engine.max_seq_len, layers=cfg.num_hidden_layers, attn_width=cfg.hidden_size,
                      causal=False, window=None, dtype=next(engine.model.parameters()).dtype)


def _random_init(model: nn.Module, *, device: torch.device, dtype: torch.dtype, seed: int) -> nn.Module:
    """Materialise a meta-device model on ``device`` with small random weights (norm weights at 1)."""
    model = model.to(dtype=dtype).to_empty(device=device)    # allocate once, in the target dtype
    gen = torch.Generator(device=device).manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() == 1:
                p.fill_(1.0) if name.endswith("weight") else p.zero_()
            else:
                p.normal_(0.0, 0.02, generator=gen)
    return model.eval().requires_grad_(False)


def _mistral(shape: str, raw: dict, *, device: str, dtype: str, token_budget: int | None,
             seed: int) -> BenchModel:
    from gigarouter.engine.models.mistral import MistralConfig, MistralModel

    cfg = MistralConfig(**raw)
    return _random_model(shape, MistralModel, cfg, pooling=PoolingMode.LAST,
                         max_seq_len=4096 if shape == "mistral-7b" else 512,
                         attn_width=cfg.num_attention_heads * cfg.head_dim, causal=cfg.causal,
                         window=cfg.sliding_window, device=device, dtype=dtype, token_budget=token_budget,
                         seed=seed)


def _bert_random(raw: dict, *, device: str, dtype: str, token_budget: int | None, seed: int) -> BenchModel:
    from gigarouter.engine.models.bert import BertConfig, BertModel

    cfg = BertConfig(**raw)
    return _random_model("bert-tiny", BertModel, cfg, pooling=PoolingMode.MEAN, max_seq_len=256,
                         attn_width=cfg.hidden_size, causal=False, window=None, device=device, dtype=dtype,
                         token_budget=token_budget, seed=seed)


def _random_model(shape: str, model_cls: type[nn.Module], cfg, *, pooling: PoolingMode, max_seq_len: int,
                  attn_width: int, causal: bool, window: int | None, device: str, dtype: str,
                  token_budget: int | None, seed: int) -> BenchModel:
    """``model_cls(cfg)`` with random weights on the device, behind a TorchEngine."""
    dev = resolve_device(device)
    tdtype = resolve_dtype(dtype, dev)
    with torch.device("meta"):
        model = model_cls(cfg)
    model = _random_init(model, device=dev, dtype=tdtype, seed=seed)
    engine = TorchEngine(model, pooling=pooling, dim=cfg.hidden_size, device=dev,
                         token_budget=token_budget or default_token_budget(dev), max_seq_len=max_seq_len)
    return BenchModel(shape=shape, engine=engine, model=model, vocab_size=cfg.vocab_size, max_seq_len=max_seq_len,
                      layers=cfg.num_hidden_layers, attn_width=attn_width, causal=causal, window=window,
                      dtype=tdtype)
