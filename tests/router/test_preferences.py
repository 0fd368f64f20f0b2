"""Every provider preference, end to end: a real gateway over three real upstreams of one real model.

The upstreams proxy one backend gigarouter, so they all return the same vectors;
they differ in price and speed:

- ``cheap``  $0.01/M, 0.4 s slower than the backend;
- ``mid``    $0.02/M, 0.2 s slower;
- ``dear``   $0.05/M, as fast as the backend.

So the default (cheapest first) is ``cheap``, ``sort=latency`` and ``:nitro`` are ``dear``.
"""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from tests.router.helpers import (
    MODEL,
    assert_openai_error,
    embed,
    gateway,
    model_entry,
    provider,
    same_vectors,
    served_by,
    vectors,
)
from tests.router.upstream import Upstream, upstreams

SPECS = {"cheap": {"mode": "slow", "delay_s": 0.4}, "mid": {"mode": "slow", "delay_s": 0.2}, "dear": {}}
PRICES = {"cheap": 0.01, "mid": 0.02, "dear": 0.05}


@pytest.fixture(scope="module")
def ups(backend: str, tmp_path_factory) -> Iterator[dict[str, Upstream]]:
    with upstreams(backend, SPECS, log_dir=tmp_path_factory.mktemp("upstreams")) as started:
        yield started


@pytest.fixture(scope="module")
def gw(ups: dict[str, Upstream]) -> Iterator[str]:
    with gateway([provider(name, ups[name], PRICES[name]) for name in SPECS]) as base:
        # Everyone's latency is known from the probes (three calls each) before the first request.
        assert all(p["p50_latency_ms"] is not None for p in model_entry(base)["providers"])
        yield base


def prefer(gw: str, provider_prefs: dict | None = None, *, model: str = MODEL) -> httpx.Response:
    body = {"provider": provider_prefs} if provider_prefs is not None else {}
    return embed(gw, model=model, **body)


def test_default_is_the_cheapest_healthy_provider_and_headers_name_it(gw, backend):
    r = prefer(gw)
    assert served_by(r) == "cheap"
    entry = model_entry(gw)
    assert r.headers["x-gigarouter-fingerprint"] == entry["fingerprint"] and entry["fingerprint"]
    assert {p["name"]: p["state"] for p in entry["providers"]} == {"cheap": "healthy", "mid": "healthy",
                                                                   "dear": "healthy"}
    assert {p["name"]: p["price_per_million_usd"] for p in entry["providers"]} == PRICES
    assert all(p["fingerprint"] == entry["fingerprint"] and p["uptime"] == 1.0 for p in entry["providers"])
    # The vectors are the backend's own, whoever served them.
    assert same_vectors(vectors(r), vectors(embed(backend)))


def test_order_is_tried_first(gw):
    assert served_by(prefer(gw, {"order": ["dear", "mid"]})) == "dear"
    assert served_by(prefer(gw, {"order": ["mid"]})) == "mid"
    assert served_by(prefer(gw, {"order": ["DEAR"]})) == "dear"       # names match case-insensitively


def test_only_and_ignore(gw):
    assert served_by(prefer(gw, {"only": ["mid"]})) == "mid"
    assert served_by(prefer(gw, {"only": ["mid", "dear"]})) == "mid"       # cheapest of those allowed
    assert served_by(prefer(gw, {"ignore": ["cheap"]})) == "mid"
    assert served_by(prefer(gw, {"ignore": ["cheap", "mid"]})) == "dear"
    assert served_by(prefer(gw, {"order": ["dear"], "ignore": ["dear"]})) == "cheap"   # ignore beats order


def test_allow_fallbacks_false_keeps_to_the_order(gw):
    assert served_by(prefer(gw, {"order": ["mid"], "allow_fallbacks": False})) == "mid"
    assert served_by(prefer(gw, {"allow_fallbacks": False})) == "cheap"   # no order: the first choice only


def test_sort_price_and_latency(gw):
    assert served_by(prefer(gw, {"sort": "price"})) == "cheap"
    assert served_by(prefer(gw, {"sort": "latency"})) == "dear"
    assert served_by(prefer(gw, {"sort": "latency", "ignore": ["dear"]})) == "mid"
    assert served_by(prefer(gw, {"sort": "throughput"})) == "dear"
    # order still comes first; sort ranks the rest
    assert served_by(prefer(gw, {"sort": "latency", "order": ["mid"]})) == "mid"


def test_max_price(gw):
    assert served_by(prefer(gw, {"max_price": {"prompt": 0.02}, "sort": "latency"})) == "mid"
    assert served_by(prefer(gw, {"max_price": {"prompt": 0.03}, "order": ["dear"]})) == "cheap"   # dear too dear
    assert served_by(prefer(gw, {"max_price": {"prompt": 1}})) == "cheap"
    error = assert_openai_error(prefer(gw, {"max_price": {"prompt": 0.001}}), 400)
    assert error["param"] == "provider.max_price"


def test_model_suffixes_floor_and_nitro(gw):
    r = prefer(gw, model=f"{MODEL}:floor")
    assert served_by(r) == "cheap" and r.json()["model"] == MODEL
    assert served_by(prefer(gw, model=f"{MODEL}:nitro")) == "dear"
    assert served_by(prefer(gw, {"sort": "price"}, model=f"{MODEL}:nitro")) == "cheap"   # the body's sort wins
    assert served_by(prefer(gw, {"ignore": ["dear"]}, model=f"{MODEL}:nitro")) == "mid"


@pytest.mark.parametrize(("prefs", "param"), [
    ({"order": ["nobody"]}, "provider.order"),
    ({"only": ["cheap", "nobody"]}, "provider.only"),
    ({"ignore": ["nobody"]}, "provider.ignore"),
    ({"order": "cheap"}, "provider.order"),
    ({"only": [1]}, "provider.only"),
    ({"ignore": [""]}, "provider.ignore"),
    ({"allow_fallbacks": "no"}, "provider.allow_fallbacks"),
    ({"sort": "cheapest"}, "provider.sort"),
    ({"sort": 1}, "provider.sort"),
    ({"max_price": 0.01}, "provider.max_price"),
    ({"max_price": {"prompt": -1}}, "provider.max_price.prompt"),
    ({"max_price": {"prompt": "free"}}, "provider.max_price.prompt"),
    ({"only": ["cheap"], "ignore": ["cheap"]}, "provider.ignore"),
    ({"fastest": True}, "provider.fastest"),
    ("cheap", "provider"),
])
def test_bad_preferences_are_400_naming_the_field(gw, ups, prefs, param):
    before = {name: u.stats()["requests"] for name, u in ups.items()}
    error = assert_openai_error(prefer(gw, prefs), 400)
    assert error["param"] == param and error["type"] == "invalid_request_error"
    assert {name: u.stats()["requests"] for name, u in ups.items()} == before     # nobody was asked


def test_unknown_provider_names_are_named_in_the_message(gw):
    error = assert_openai_error(prefer(gw, {"order": ["nobody"]}), 400)
    assert "nobody" in error["message"] and "cheap" in error["message"]


def test_openrouter_fields_that_do_not_apply_are_accepted(gw):
    r = prefer(gw, {"require_parameters": True, "data_collection": "deny", "zdr": False, "quantizations": ["fp16"]})
    assert served_by(r) == "cheap"
