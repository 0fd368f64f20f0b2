import numpy as np
import pytest

from gigarouter import Embedder


@pytest.fixture(scope="module")
def embedder():
    return Embedder("sentence-transformers/all-MiniLM-L6-v2")


def test_encode_returns_numpy_in_input_order(embedder):
    texts = ["short", "a much longer sentence about embeddings and retrieval " * 5, "mid length text here"]
    out = embedder.encode(texts)
    assert out.shape == (3, 384) and out.dtype == np.float32
    for i, text in enumerate(texts):
        np.testing.assert_allclose(out[i], embedder.encode(text), atol=2e-6)


def test_query_document_helpers_and_dimensions(embedder):
    q = embedder.encode_queries(["what is a llama"], dimensions=32)
    d = embedder.encode_corpus([{"title": "Llama", "text": "A South American camelid."}])
    assert q.shape == (1, 32) and d.shape == (1, 384)
    assert np.linalg.norm(q[0]) == pytest.approx(1.0, abs=1e-5)


def test_progress_callback_counts_every_input(embedder):
    seen = []
    embedder.encode([f"text {i}" for i in range(40)], progress=seen.append)
    assert sum(seen) == 40


def test_unknown_model_is_a_clear_error():
    with pytest.raises(ValueError, match="not configured"):
        Embedder("no-such-model")


def test_a_file_cache_lets_a_rerun_skip_what_an_earlier_run_computed(tmp_path, monkeypatch):
    import gigarouter.providers.local.loading as loading
    from gigarouter.settings import Settings
    from tests.conftest import FakeEngine, fake_loader

    engine = FakeEngine()
    monkeypatch.setattr(loading, "load_model", fake_loader(engine))
    settings = Settings(data_dir=tmp_path, cache="file")
    sequences = lambda: sum(b.num_sequences for b in engine.batches)  # noqa: E731
    with Embedder(settings=settings) as first:
        before = sequences()
        a = first.encode(["alpha", "beta", "alpha", "gamma"], normalize=False)
        assert sequences() - before == 3                     # the repeat is computed once
    with Embedder(settings=settings) as again:                # a new run: the entries are on disk
        before = sequences()
        b = again.encode(["gamma", "alpha", "delta"], normalize=False)
        assert sequences() - before == 1
    np.testing.assert_array_equal(b[0], a[3])
    np.testing.assert_array_equal(b[1], a[0])
    assert (tmp_path / "embedding-cache").is_dir()


def test_a_large_encode_is_never_refused_by_the_servers_wait_limit():
    """encode() waits for all of it: a tiny max_queue_wait_ms (a server's admission limit) and a
    max_queued_tokens smaller than the whole input must not refuse its later jobs."""
    from gigarouter.settings import Settings

    settings = Settings(cache="off", max_queue_wait_ms=0.001, max_queued_tokens=64)
    texts = [f"sentence number {i} about queues and deadlines" for i in range(120)]
    with Embedder(settings=settings) as small_limits:
        out = small_limits.encode(texts, batch_size=8)       # 15 jobs, each ~100 tokens
    with Embedder(settings=Settings(cache="off")) as defaults:
        want = defaults.encode(texts[:5])
    assert out.shape == (120, 384)
    np.testing.assert_allclose(out[:5], want, atol=2e-6)


def test_the_fingerprint_probes_are_embedded_one_text_per_pass(tmp_path, monkeypatch):
    """A probe's vector must not depend on batch mates or (a pass of <= 32 tokens runs on one
    thread) on the thread count, or replicas of one model show different fingerprints."""
    import gigarouter.providers.local.loading as loading
    from gigarouter.router.fingerprints import PROBES
    from gigarouter.settings import Settings
    from tests.conftest import FakeEngine, fake_loader

    engine = FakeEngine()
    monkeypatch.setattr(loading, "load_model", fake_loader(engine))
    texts = sum(len(p.texts) for p in PROBES)
    with Embedder(settings=Settings(data_dir=tmp_path, cache="file")):      # the cache probes after load
        probes = engine.batches[-texts:]                                     # (warm-up passes come first)
    assert [b.num_sequences for b in probes] == [1] * texts
