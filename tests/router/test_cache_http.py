"""The cache through /v1/embeddings (fake engine, open mode): usage, headers, opt-outs, exact vectors."""

from __future__ import annotations

import base64

import numpy as np

from gigarouter.recipes.sbert import SbertRecipe

MODEL = "all-minilm-l6-v2"


def post(client, **body):
    return client.post("/v1/embeddings", json={"model": MODEL, **body})


def vectors(response) -> np.ndarray:
    data = response.json()["data"]
    assert [d["index"] for d in data] == list(range(len(data)))          # every index once, in order
    return np.array([d["embedding"] for d in data], dtype=np.float32)


def tokens(recipe: SbertRecipe, *texts: str) -> list[int]:
    return [len(item.token_ids) for item in recipe.prepare_texts(list(texts))]


def sequences(engine) -> int:
    return sum(b.num_sequences for b in engine.batches)


def test_a_partial_hit_answers_in_order_and_counts_cached_tokens(fake_client_factory, minilm_recipe):
    from tests.conftest import FakeEngine

    engine = FakeEngine()
    client = fake_client_factory(engine)
    first = post(client, input=["alpha", "beta gamma"])
    assert first.headers["x-gigarouter-cache"] == "miss" and first.headers["x-gigarouter-provider"] == "local"
    n_alpha, n_beta, n_delta = tokens(minilm_recipe, "alpha", "beta gamma", "delta")
    assert first.json()["usage"] == {"prompt_tokens": n_alpha + n_beta, "total_tokens": n_alpha + n_beta,
                                     "prompt_tokens_details": {"cached_tokens": 0}}
    assert sequences(engine) == 2

    second = post(client, input=["delta", "beta gamma", "alpha", "delta"])
    assert second.status_code == 200 and second.headers["x-gigarouter-cache"] == "partial"
    assert sequences(engine) == 3                                        # only "delta", once
    usage = second.json()["usage"]
    assert usage["prompt_tokens"] == 2 * n_delta + n_beta + n_alpha                      # what the model would see
    assert usage["prompt_tokens_details"] == {"cached_tokens": n_beta + n_alpha + n_delta}
    got, before = vectors(second), vectors(first)
    np.testing.assert_array_equal(got[1], before[1])
    np.testing.assert_array_equal(got[2], before[0])
    np.testing.assert_array_equal(got[0], got[3])
    uncached = post(client, input=["delta", "beta gamma", "alpha", "delta"], cache=False)
    assert "x-gigarouter-cache" not in uncached.headers
    assert uncached.json()["usage"]["prompt_tokens_details"] == {"cached_tokens": 0}
    np.testing.assert_array_equal(vectors(uncached), got)               # bit for bit the uncached path's

    hit = post(client, input=["alpha"])
    assert hit.headers["x-gigarouter-cache"] == "hit" and hit.headers["x-gigarouter-provider"] == "cache"
    assert hit.headers["x-gigarouter-fingerprint"] == first.headers["x-gigarouter-fingerprint"]
    assert float(hit.headers["x-cache-time"]) >= 0
    metrics = client.get("/metrics").text
    assert f'gigarouter_cache_hits_total{{model="{MODEL}"}} 4.0' in metrics
    assert f'gigarouter_cache_misses_total{{model="{MODEL}"}} 3.0' in metrics
    assert f'gigarouter_cache_bytes{{model="{MODEL}"}}' in metrics


def test_one_entry_serves_every_encoding_dimension_and_normalisation(fake_client_factory):
    client = fake_client_factory()
    text = "the same input, asked for in several ways"
    reference = {}
    for cache in (False, True, True):          # uncached, then a miss that stores it, then hits
        for fmt in ("float", "base64"):
            for dims in (None, 3):
                for normalize in (True, False):
                    body = {"input": [text], "encoding_format": fmt, "normalize": normalize, "cache": cache}
                    if dims:
                        body["dimensions"] = dims
                    r = post(client, **body)
                    value = r.json()["data"][0]["embedding"]
                    got = np.frombuffer(base64.b64decode(value), "<f4") if fmt == "base64" \
                        else np.array(value, dtype=np.float32)
                    key = (fmt, dims, normalize)
                    if key in reference:
                        np.testing.assert_array_equal(got, reference[key])
                    reference[key] = got
    assert post(client, input=[text]).headers["x-gigarouter-cache"] == "hit"


def test_the_server_setting_off_turns_the_cache_off(fake_client_factory):
    from tests.conftest import FakeEngine

    assert fake_client_factory().get(f"/v1/models/{MODEL}").json()["cached_price_per_million_usd"] == 0
    engine = FakeEngine()
    client = fake_client_factory(engine, cache="off")
    assert client.get(f"/v1/models/{MODEL}").json()["cached_price_per_million_usd"] is None
    for _ in range(2):
        r = post(client, input=["same", "same"])
        assert r.status_code == 200 and "x-gigarouter-cache" not in r.headers
        assert r.json()["usage"]["prompt_tokens_details"] == {"cached_tokens": 0}
    assert sequences(engine) == 4
    assert "gigarouter_cache_hits_total{" not in client.get("/metrics").text


def test_cache_must_be_a_boolean(fake_client_factory):
    client = fake_client_factory()
    for bad in ("no", 0, [], {}):
        r = post(client, input="x", cache=bad)
        assert r.status_code == 400 and r.json()["error"]["param"] == "cache", bad
    assert post(client, input="x", cache=None).status_code == 200


def test_token_id_inputs_share_entries_with_the_text_they_spell(fake_client_factory, minilm_recipe):
    client = fake_client_factory()
    ids = minilm_recipe.tokenizer.encode("hello world", add_special_tokens=False).ids
    as_text = post(client, input="hello world")
    as_ids = post(client, input=ids)
    assert as_ids.headers["x-gigarouter-cache"] == "hit"                 # the model sees the same tokens
    np.testing.assert_array_equal(vectors(as_ids), vectors(as_text))


def test_the_key_is_what_the_model_sees(fake_client_factory):
    client = fake_client_factory()
    post(client, input="what is a llama")
    # all-MiniLM has no query instruction: a query is the same tokens, hence the same entry
    assert post(client, input="what is a llama", input_type="query").headers["x-gigarouter-cache"] == "hit"
    long = " ".join(f"word{i}" for i in range(400))                        # past the 256-token context
    assert post(client, input=long).headers["x-gigarouter-cache"] == "miss"
    assert post(client, input=long, truncate="start").headers["x-gigarouter-cache"] == "miss"   # other tokens
    assert post(client, input=long, truncate="end").headers["x-gigarouter-cache"] == "hit"
    assert post(client, input=long + "more").headers["x-gigarouter-cache"] == "hit"     # cut to the same tokens


def testbilled_tokens_add_the_cached_inputs_to_what_the_provider_computed():
    from gigarouter.api.pipeline import billed_tokens
    from gigarouter.metrics import Metrics
    from gigarouter.providers.base import EmbedCall, ProviderResult
    from gigarouter.recipes.base import PreparedInput
    from gigarouter.router.health import Health
    from gigarouter.router.route import Binding, Routed
    from tests.router.test_cache import Provider

    binding = Binding(Provider("east"), price_per_million_usd=1.0, health=Health())
    vectors = np.zeros((2, 3), np.float32)

    def routed(upstream, *, cached, cache, sent):
        return Routed(result=ProviderResult(vectors, upstream_tokens=upstream), binding=binding, failovers=0,
                      cached_tokens=cached, cache=cache, sent=sent)

    # No tokenizer: the upstream's count for the part it computed (never above that part's bound),
    # plus the counts stored with the cached inputs, never above the request's bound.
    call = EmbedCall(texts=["aaaa", "b"], token_ids=None, tokens=133, exact_tokens=False)
    sent = EmbedCall(texts=["b"], token_ids=None, tokens=65, exact_tokens=False)
    metrics = Metrics()
    assert billed_tokens(call, routed(5, cached=10, cache="partial", sent=sent), "m", metrics) == 15
    assert billed_tokens(call, routed(500, cached=10, cache="partial", sent=sent), "m", metrics) == 75
    assert billed_tokens(call, routed(None, cached=10, cache="partial", sent=sent), "m", metrics) == 13
    assert billed_tokens(call, routed(None, cached=12, cache="hit", sent=None), "m", metrics) == 12
    assert billed_tokens(call, routed(9, cached=0, cache=None, sent=None), "m", metrics) == 9     # no cache
    # With the tokenizer: our count of the whole request; the upstream's report is checked against
    # the part it computed only.
    items = [PreparedInput([1, 2, 3], 0), PreparedInput([4, 5], 0)]
    exact = EmbedCall(texts=["x", "y"], token_ids=None, items=items, tokens=5)
    part = EmbedCall(texts=["y"], token_ids=None, items=items[1:], tokens=2)
    assert billed_tokens(exact, routed(2, cached=3, cache="partial", sent=part), "m", metrics) == 5
    sample = metrics.registry.get_sample_value
    assert sample("gigarouter_usage_disagreements_total", {"model": "m", "provider": "east"}) == 1   # the None
    assert billed_tokens(exact, routed(5, cached=3, cache="partial", sent=part), "m", metrics) == 5
    assert sample("gigarouter_usage_disagreements_total", {"model": "m", "provider": "east"}) == 2
