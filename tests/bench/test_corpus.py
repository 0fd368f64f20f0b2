"""The benchmark corpus: deterministic, MS MARCO-like, and token counts that match the server's."""

from __future__ import annotations

from gigarouter.bench.corpus import TokenCounter, length_summary, mixed_corpus, random_sequences, texts_with_tokens
from gigarouter.engine.sources import embedded_model_dir


def test_same_seed_same_corpus_other_seed_other_corpus():
    a, b, c = mixed_corpus(64, seed=1), mixed_corpus(64, seed=1), mixed_corpus(64, seed=2)
    assert a.texts == b.texts and a.kinds == b.kinds
    assert a.texts != c.texts


def test_mix_of_short_queries_and_longer_passages(minilm_recipe):
    corpus = mixed_corpus(400, seed=0)
    counter = TokenCounter.for_model_dir(embedded_model_dir())
    queries = length_summary(counter.counts(corpus.of_kind("query")))
    passages = length_summary(counter.counts(corpus.of_kind("passage")))
    assert 0.35 < queries["n"] / len(corpus) < 0.65
    assert 5 <= queries["mean"] <= 14
    assert 50 <= passages["mean"] <= 130 and passages["max"] <= 256


def test_token_counter_matches_what_the_recipe_feeds_the_model(minilm_recipe):
    texts = list(mixed_corpus(50, seed=3).texts) + ["word " * 400]   # one longer than the model's limit
    counter = TokenCounter.for_model_dir(embedded_model_dir())
    prepared = minilm_recipe.prepare_texts(texts)
    assert counter.counts(texts) == [len(p.token_ids) for p in prepared]
    assert counter.ids(texts) == [p.token_ids for p in prepared]


def test_texts_with_tokens_hits_the_target():
    counter = TokenCounter.for_model_dir(embedded_model_dir())
    texts = texts_with_tokens(16, 5, counter.count, seed=0)
    assert [counter.count(t) for t in texts] == [16] * 5
    assert len(set(texts)) == 5


def test_random_sequences_have_exact_lengths_inside_the_vocabulary():
    seqs = random_sequences([1, 7, 300], vocab_size=50, seed=0)
    assert [len(s) for s in seqs] == [1, 7, 300]
    assert all(3 <= t < 50 for s in seqs for t in s)
