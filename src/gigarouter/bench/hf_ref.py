"""Our packed Mistral forward against Hugging Face transformers' ``MistralModel`` on the same inputs.

The transformers model is built on the meta device and given *our* tensors
with ``load_state_dict(assign=True)``: both models share one copy of the
weights (a 7B model fits twice in no GPU's budget otherwise). It runs the
batches our planner forms, right-padded with an attention mask (what a
transformers user does), with its default attention implementation (sdpa).
Besides throughput, the last real token's hidden state is compared, so a
speed-up that changed the numbers would show.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from gigarouter.bench.engine import fixed_sequences, measure_interleaved, plan_batches, prepare, result_row
from gigarouter.bench.shapes import BenchModel


def transformers_twin(bm: BenchModel):
    """A transformers ``MistralModel`` sharing ``bm.model``'s weights."""
    import transformers

    cfg = bm.model.config
    hf_cfg = transformers.MistralConfig(
        vocab_size=cfg.vocab_size, hidden_size=cfg.hidden_size, intermediate_size=cfg.intermediate_size,
        num_hidden_layers=cfg.num_hidden_layers, num_attention_heads=cfg.num_attention_heads,
        num_key_value_heads=cfg.num_key_value_heads, head_dim=cfg.head_dim, rms_norm_eps=cfg.rms_norm_eps,
        rope_theta=cfg.rope_theta, sliding_window=cfg.sliding_window, max_position_embeddings=32768,
        attn_implementation="sdpa")
    with torch.device("meta"):
        hf = transformers.MistralModel(hf_cfg)
    missing, unexpected = hf.load_state_dict(bm.model.state_dict(), strict=False, assign=True)
    if unexpected or any("rotary" not in k for k in missing):
        raise RuntimeError(f"weights do not line up: missing {missing}, unexpected {unexpected}")
    # The rotary buffers are not in any state dict: rebuild them on the real device.
    hf.rotary_emb = type(hf.rotary_emb)(config=hf_cfg).to(bm.engine.device)
    return hf.eval().requires_grad_(False)


class _PaddedRunner:
    """Looks like ``TorchEngine.embed`` to ``measure``, runs the transformers model on padded batches."""

    def __init__(self, hf, device: torch.device) -> None:
        self.hf, self.device = hf, device

    def embed(self, batch) -> np.ndarray:
        lengths = batch.lengths
        n, longest = len(lengths), int(lengths.max())
        ids = np.zeros((n, longest), dtype=np.int64)
        mask = np.zeros((n, longest), dtype=np.int64)
        for i in range(n):
            a, b = batch.cu_seqlens[i], batch.cu_seqlens[i + 1]
            ids[i, : b - a] = batch.input_ids[a:b]
            mask[i, : b - a] = 1
        with torch.inference_mode():
            out = self.hf(input_ids=torch.from_numpy(ids).to(self.device),
                          attention_mask=torch.from_numpy(mask).to(self.device)).last_hidden_state
            last = out[torch.arange(n, device=self.device), torch.from_numpy(lengths - 1).to(self.device)]
            return last.float().cpu().numpy()


def compare_with_transformers(bm: BenchModel, mixed: Sequence[Sequence[int]], *, lengths: Sequence[int],
                              token_budget: int, min_seconds: float, seed: int = 0, log=print) -> dict:
    """Throughput of ours vs transformers on the mixed corpus and fixed lengths, passes interleaved."""
    import transformers

    hf = transformers_twin(bm)
    runner = _PaddedRunner(hf, bm.engine.device)
    twin = _Twin(bm, runner)
    workloads = [("mixed", list(mixed))]
    workloads += [(f"fixed-{n}", fixed_sequences(bm, min(n, bm.max_seq_len), token_budget=token_budget, seed=seed))
                  for n in lengths]
    pairs = []
    for name, seqs in workloads:
        pairs.append((prepare(seqs, name=name, token_budget=token_budget),
                      prepare(seqs, name=name, token_budget=token_budget)))
    measure_interleaved([item for ours, theirs in pairs for item in ((bm, ours), (twin, theirs))],
                        min_seconds=min_seconds)
    rows = []
    for ours_w, theirs_w in pairs:
        ours, theirs = result_row(bm, ours_w, peak_flops=1.0), result_row(twin, theirs_w, peak_flops=1.0)
        row = {"name": ours["name"], "ours_tokens_per_s": ours["tokens_per_s"],
               "transformers_tokens_per_s": theirs["tokens_per_s"],
               "ratio": ours["tokens_per_s"] / theirs["tokens_per_s"],
               "ours_bytes_per_token": ours["bytes_per_token"],
               "transformers_bytes_per_token": theirs["bytes_per_token"]}
        log(f"  vs transformers {row['name']:<12}: ours {row['ours_tokens_per_s']:>9.0f} tokens/s, transformers "
            f"{row['transformers_tokens_per_s']:>9.0f} tokens/s, ratio {row['ratio']:.2f}x")
        rows.append(row)
    agreement = _agreement(bm, runner, mixed, token_budget=token_budget)
    return {"transformers_version": transformers.__version__, "attn_implementation": "sdpa",
            "padding": "right, with attention_mask", "rows": rows, "last_token_agreement": agreement}


class _Twin:
    """Stands in for a BenchModel with the transformers runner as its engine (same FLOP count)."""

    def __init__(self, bm: BenchModel, runner: _PaddedRunner) -> None:
        self._bm, self.engine = bm, _EngineShim(bm.engine, runner)
        self.shape = bm.shape

    def flops(self, lengths):
        return self._bm.flops(lengths)


class _EngineShim:
    def __init__(self, engine, runner: _PaddedRunner) -> None:
        self.device, self.token_budget, self._runner = engine.device, engine.token_budget, runner

    def embed(self, batch):
        return self._runner.embed(batch)


def _agreement(bm: BenchModel, runner: _PaddedRunner, mixed: Sequence[Sequence[int]], *, token_budget: int) -> dict:
    """Cosine and max abs difference of the last-token hidden states, ours vs transformers, first batch."""
    from gigarouter.engine.base import pack

    idx = plan_batches([len(s) for s in mixed], token_budget=token_budget)[-1][:8]
    batch = pack([mixed[i] for i in idx])
    ours = bm.engine.embed(batch)          # LAST pooling = the last token's hidden state
    theirs = runner.embed(batch)
    cos = (ours * theirs).sum(1) / (np.linalg.norm(ours, axis=1) * np.linalg.norm(theirs, axis=1))
    return {"sequences": len(idx), "min_cosine": float(cos.min()),
            "max_abs_diff": float(np.abs(ours - theirs).max())}
