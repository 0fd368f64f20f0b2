"""The engine benchmark on tiny random shapes: its numbers agree with each other (no timing claims)."""

from __future__ import annotations

import pytest

from gigarouter.bench.engine import measure, plan_batches, run_engine_bench
from gigarouter.bench.shapes import attention_keys, build, model_flops
from gigarouter.scheduler.batching import batch_cost


def test_plan_batches_covers_every_sequence_once_within_the_budget():
    lengths = [5, 40, 3, 17, 64, 64, 2, 9, 33, 100]
    plan = plan_batches(lengths, token_budget=128)
    assert sorted(i for b in plan for i in b) == list(range(len(lengths)))
    assert all(batch_cost([lengths[i] for i in b]) <= 128 for b in plan)


def test_flops_count_dense_plus_attention():
    bm = build("bert-tiny", device="cpu", token_budget=512)
    p = bm.matmul_params
    # 2 layers x (q, k, v, o: 64x64) + 2 layers x (64x128 + 128x64)
    assert p == 2 * 4 * 64 * 64 + 2 * 2 * 64 * 128
    n = 10
    assert bm.flops([n]) == n * (2 * p + 4 * bm.layers * bm.attn_width * n)
    causal = build("mistral-tiny", device="cpu", token_budget=512)
    assert causal.causal and causal.flops([3]) == 3 * (2 * causal.matmul_params
                                                       + 4 * causal.layers * causal.attn_width * 2)


def test_measure_row_is_self_consistent():
    bm = build("bert-tiny", device="cpu", token_budget=256)
    seqs = [[5] * n for n in (4, 4, 9, 30, 31, 60)]
    row = measure(bm, seqs, name="t", token_budget=256, peak_flops=1e9, min_seconds=0.0)
    tokens = sum(len(s) for s in seqs) * row["passes"]
    assert row["passes"] == 1
    assert row["tokens_per_s"] * row["seconds"] == pytest.approx(tokens)
    assert row["inputs_per_s"] * row["seconds"] == pytest.approx(len(seqs) * row["passes"])
    assert row["achieved_flops"] == pytest.approx(row["flops_per_token"] * row["tokens_per_s"])
    assert row["fraction_of_matmul_peak"] == pytest.approx(row["achieved_flops"] / 1e9)
    assert 0.0 <= row["padding_fraction"] < 1.0
    assert row["bytes_per_token"] is None                      # CPU: not measurable


def test_engine_bench_runs_end_to_end_on_a_tiny_shape():
    logged = []
    result = run_engine_bench("bert-tiny", device="cpu", corpus_size=24, lengths=[16, 128], budgets=[256, 1024],
                              min_seconds=0.0, token_budget=512, log=logged.append)
    assert [r["name"] for r in result["runs"]] == ["mixed", "fixed-16", "fixed-128"]
    assert [r["token_budget"] for r in result["budget_sweep"]] == [256, 1024]
    assert result["matmul"]["best_flops"] >= result["matmul"]["median_flops"] > 0
    fixed = result["runs"][1]
    assert fixed["padding_fraction"] == 0.0 and fixed["lengths"]["mean"] == 16
    assert result["machine"]["cpu_cores"] >= 1 and logged


def test_mistral_shape_against_transformers_agrees_on_the_numbers():
    pytest.importorskip("transformers")
    result = run_engine_bench("mistral-tiny", device="cpu", corpus_size=12, lengths=[16], budgets=[512],
                              min_seconds=0.0, token_budget=512, log=lambda _: None)
    hf = result["transformers"]
    assert [r["name"] for r in hf["rows"]] == ["mixed", "fixed-16"]
    for r in hf["rows"]:
        assert r["ratio"] == pytest.approx(r["ours_tokens_per_s"] / r["transformers_tokens_per_s"])
    assert hf["last_token_agreement"]["min_cosine"] > 0.9999


def test_flops_leave_out_the_embedding_table_and_count_windowed_causal_attention_exactly():
    bm = build("mistral-tiny", device="cpu", token_budget=512)
    embedding = bm.model.embed_tokens.weight.numel()
    assert bm.matmul_params == sum(p.numel() for p in bm.model.parameters() if p.dim() == 2) - embedding
    assert attention_keys(5, causal=False, window=None) == 25
    assert attention_keys(5, causal=True, window=None) == 15            # 1 + 2 + 3 + 4 + 5
    assert attention_keys(5, causal=True, window=2) == 9                # 1 + 2 + 2 + 2 + 2
    assert model_flops(bm.model, [7, 100]) == bm.flops([7, 100])


def test_padding_is_zero_on_the_varlen_path():
    from gigarouter.bench.engine import prepare, result_row, run_pass
    from gigarouter.engine.models.attention import VARLEN, AttentionChoice

    bm = build("bert-tiny", device="cpu", token_budget=256)
    w = prepare([[5] * n for n in (4, 9, 30, 31, 60)], name="t", token_budget=256)
    run_pass(bm, w)
    assert result_row(bm, w, peak_flops=1e9)["padding_fraction"] > 0           # grid: buckets pad
    bm.engine.attention = AttentionChoice(VARLEN, "as on a GPU")
    assert result_row(bm, w, peak_flops=1e9)["padding_fraction"] == 0.0        # varlen reads packed rows


def test_the_sweep_reports_the_budget_the_knee_rule_picks():
    result = run_engine_bench("bert-tiny", device="cpu", corpus_size=24, lengths=[16], budgets=[256, 1024],
                              min_seconds=0.0, token_budget=512, log=lambda _: None)
    assert result["knee_budget"] in (256, 1024) and result["attention_path"] == "grid"
