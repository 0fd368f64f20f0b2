"""Offline baselines: sentence-transformers and our Embedder on the same texts, same vectors."""

from __future__ import annotations

import pytest

from gigarouter.bench.corpus import TokenCounter, mixed_corpus
from gigarouter.bench.offline import offline_throughput
from gigarouter.engine.sources import embedded_model_dir


def test_offline_baselines_agree_and_report_consistent_rates():
    pytest.importorskip("sentence_transformers")
    texts = mixed_corpus(12, seed=5).texts
    tokens = sum(TokenCounter.for_model_dir(embedded_model_dir()).counts(texts))
    result = offline_throughput(texts, tokens, model_dir=embedded_model_dir(), repeats=2, log=lambda _: None)
    assert result["agreement"]["min_cosine"] > 0.9999
    assert set(result["results"]) == {"sentence-transformers", "gigarouter-embedder", "gigarouter-engine-pretokenized"}
    for r in result["results"].values():
        assert len(r["seconds"]) == 2
        assert r["inputs_per_s"] == pytest.approx(12 / min(r["seconds"]))
        assert r["tokens_per_s"] == pytest.approx(tokens / min(r["seconds"]))
