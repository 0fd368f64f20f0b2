"""Fingerprints end to end: a provider with other vectors is ``mismatch`` and never serves.

Two honest upstreams of the real backend and two that lie about it (rotated
vectors, half-width vectors), the liars the cheapest. Then, in a second gateway,
an upstream that was honest turns liar at run time, and back.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator

import pytest

from tests.router.helpers import (
    assert_openai_error,
    embed,
    gateway,
    model_entry,
    provider,
    same_vectors,
    served_by,
    states,
    vectors,
    wait_state,
)
from tests.router.upstream import Upstream, upstreams

SPECS = {"good1": {}, "good2": {}, "wrongv": {"mode": "wrong_vectors"}, "wrongw": {"mode": "wrong_width"}}
PRICES = {"good1": 0.02, "good2": 0.03, "wrongv": 0.001, "wrongw": 0.001}
LIARS = ("wrongv", "wrongw")


@pytest.fixture(scope="module")
def ups(backend: str, tmp_path_factory) -> Iterator[dict[str, Upstream]]:
    specs = {**SPECS, "turncoat": {}, "honest": {}}
    with upstreams(backend, specs, log_dir=tmp_path_factory.mktemp("upstreams")) as started:
        yield started


@pytest.fixture(scope="module")
def gw(ups: dict[str, Upstream]) -> Iterator[str]:
    with gateway([provider(name, ups[name], PRICES[name]) for name in SPECS]) as base:
        yield base


def test_liars_are_shown_mismatch_with_their_own_fingerprint(gw):
    entry = model_entry(gw)
    providers = {p["name"]: p for p in entry["providers"]}
    assert {n: p["state"] for n, p in providers.items()} == {"good1": "healthy", "good2": "healthy",
                                                             "wrongv": "mismatch", "wrongw": "mismatch"}
    assert entry["status"] == "live" and entry["dimensions"] == 384
    assert all(providers[n]["fingerprint"] and providers[n]["fingerprint"] != entry["fingerprint"] for n in LIARS)
    assert entry["price_per_million_usd"] == 0.02          # what a default request pays: not a liar's price


def test_liars_never_serve_even_when_ordered_first(gw, ups, backend):
    text = f"fingerprint {uuid.uuid4()}"
    asked = {n: ups[n].stats()["requests"] for n in LIARS}
    reference = vectors(embed(backend, text))
    for prefs in (None, {"order": ["wrongv", "wrongw"]}, {"order": ["wrongw"], "sort": "price"},
                  {"sort": "latency"}, {"ignore": ["good1"]}):
        r = embed(gw, text, **({"provider": prefs} if prefs else {}))
        assert served_by(r) in ("good1", "good2") and same_vectors(vectors(r), reference), prefs
        assert r.headers["x-gigarouter-fingerprint"] == model_entry(gw)["fingerprint"]
    assert {n: ups[n].stats()["requests"] for n in LIARS} == asked
    assert all(text not in ups[n].stats()["inputs"] for n in LIARS)


@pytest.mark.parametrize("prefs", [{"only": ["wrongv"]}, {"only": ["wrongw", "wrongv"]},
                                   {"order": ["wrongv"], "allow_fallbacks": False}])
def test_asking_for_only_a_liar_is_a_clear_503(gw, ups, prefs):
    asked = {n: ups[n].stats()["requests"] for n in LIARS}
    error = assert_openai_error(embed(gw, provider=prefs), 503)
    assert error["code"] == "no_provider_available" and "mismatch" in error["message"]
    assert {n: ups[n].stats()["requests"] for n in LIARS} == asked


@pytest.fixture
def flip(ups: dict[str, Upstream]) -> Iterator[str]:
    """A gateway over ``turncoat`` (listed first, the cheaper) and ``honest``, re-probing every 2 s."""
    providers = [provider("turncoat", ups["turncoat"], 0.01), provider("honest", ups["honest"], 0.02)]
    try:
        with gateway(providers, fingerprint_interval_s=2.0) as base:
            yield base
    finally:
        ups["turncoat"].control("ok")


def test_a_width_change_at_run_time_fails_over_at_once(flip, ups, backend):
    turncoat = ups["turncoat"]
    assert served_by(embed(flip)) == "turncoat"
    fingerprint = model_entry(flip)["fingerprint"]
    turncoat.control("wrong_width")
    r = embed(flip)                                  # turncoat answers 192-wide: caught on the spot
    assert served_by(r) == "honest" and same_vectors(vectors(r), vectors(embed(backend)))
    assert states(flip)["turncoat"] == "mismatch"
    assert served_by(embed(flip, provider={"order": ["turncoat"]})) == "honest"
    # The next probe rounds keep the vector space clients index in: a tie of one against one
    # must not make the changed provider the reference.
    wait_state(flip, "turncoat", "mismatch")
    _rounds(ups["honest"], 2)
    assert states(flip) == {"turncoat": "mismatch", "honest": "healthy"}
    assert model_entry(flip)["fingerprint"] == fingerprint

    turncoat.control("ok")                           # fixed upstream: back after a probe round, by itself
    wait_state(flip, "turncoat", "healthy", timeout=15)
    assert served_by(embed(flip)) == "turncoat"


def test_other_vectors_at_run_time_are_caught_by_the_next_probe_round(flip, ups, backend):
    turncoat = ups["turncoat"]
    fingerprint = model_entry(flip)["fingerprint"]
    turncoat.control("wrong_vectors")
    wait_state(flip, "turncoat", "mismatch", timeout=15)
    _rounds(ups["honest"], 2)
    assert states(flip) == {"turncoat": "mismatch", "honest": "healthy"}
    assert model_entry(flip)["fingerprint"] == fingerprint
    text = f"after the flip {uuid.uuid4()}"
    r = embed(flip, text, provider={"order": ["turncoat"]})
    assert served_by(r) == "honest" and same_vectors(vectors(r), vectors(embed(backend, text)))
    assert text not in turncoat.stats()["inputs"]

    turncoat.control("ok")
    wait_state(flip, "turncoat", "healthy", timeout=15)


def _rounds(honest: Upstream, n: int, timeout: float = 30.0) -> None:
    """Wait until ``n`` more probe rounds have reached ``honest`` (each embeds the three probes)."""
    target = honest.stats()["requests"] + 3 * n
    deadline = time.monotonic() + timeout
    while honest.stats()["requests"] < target:
        assert time.monotonic() < deadline, "the gateway stopped probing"
        time.sleep(0.1)
