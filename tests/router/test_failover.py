"""Failover, the circuit breaker and the provider metrics, end to end.

Two real upstreams of one real backend: ``flaky`` (the cheaper, so tried first; a
1 s timeout) and ``backup``. ``flaky`` is switched into each failure mode; the
client must still get the backend's vectors, from ``backup``, in one answer.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator

import httpx
import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.router.helpers import (
    MODEL,
    assert_openai_error,
    embed,
    gateway,
    provider,
    same_vectors,
    served_by,
    states,
    vectors,
    wait_state,
)
from tests.router.upstream import Upstream, upstreams

FLAKY_TIMEOUT_S = 1.0
BREAKER_FAILURES = 3
# What each failure mode is set to; "slow" sleeps well past flaky's timeout.
MODES = {"500": 0.0, "429": 0.0, "reset": 0.0, "slow": 3 * FLAKY_TIMEOUT_S}


@pytest.fixture(scope="module")
def ups(backend: str, tmp_path_factory) -> Iterator[dict[str, Upstream]]:
    with upstreams(backend, {"flaky": {}, "backup": {}}, log_dir=tmp_path_factory.mktemp("upstreams")) as started:
        yield started


@pytest.fixture(scope="module")
def gw(ups: dict[str, Upstream]) -> Iterator[str]:
    providers = [provider("flaky", ups["flaky"], 0.01, timeout_s=FLAKY_TIMEOUT_S),
                 provider("backup", ups["backup"], 0.02)]
    with gateway(providers, breaker_failures=BREAKER_FAILURES, breaker_cooldown_s=0.5) as base:
        yield base


@pytest.fixture
def flaky(gw: str, ups: dict[str, Upstream]) -> Iterator[Upstream]:
    """``flaky`` healthy, its failure count at zero (one request served); left serving again afterwards."""
    _revive(gw, ups["flaky"])
    yield ups["flaky"]
    _revive(gw, ups["flaky"])


def _revive(gw: str, flaky: Upstream) -> None:
    flaky.control("ok")
    wait_state(gw, "flaky", "healthy")
    assert served_by(embed(gw, provider={"only": ["flaky"]})) == "flaky"


@pytest.fixture(scope="module")
def reference(backend: str) -> np.ndarray:
    return vectors(embed(backend))


@pytest.mark.parametrize("mode", MODES)
def test_a_failing_provider_is_replaced_by_the_next_with_the_same_vectors(gw, ups, flaky, reference, mode):
    flaky.control(mode, delay_s=MODES[mode])
    tried, served = flaky.stats()["requests"], ups["backup"].stats()["served"]
    started = time.monotonic()
    r = embed(gw)
    assert served_by(r) == "backup"
    assert same_vectors(vectors(r), reference)
    assert r.headers["x-gigarouter-fingerprint"]
    assert flaky.stats()["requests"] == tried + 1            # flaky was asked first ...
    assert ups["backup"].stats()["served"] == served + 1     # ... and backup answered, once
    if mode == "slow":
        assert FLAKY_TIMEOUT_S <= time.monotonic() - started < MODES["slow"]


@pytest.mark.parametrize("mode", MODES)
def test_without_fallbacks_the_failure_is_an_openai_error_not_a_500(gw, ups, flaky, mode):
    flaky.control(mode, delay_s=MODES[mode])
    backup_before = ups["backup"].stats()["requests"]
    r = embed(gw, provider={"order": ["flaky"], "allow_fallbacks": False})
    error = assert_openai_error(r, (503, 429))
    assert error["type"] in ("server_error", "rate_limit_error") and error["code"]
    assert int(r.headers["retry-after"]) >= 1
    assert ups["backup"].stats()["requests"] == backup_before         # never asked


def test_only_a_failing_provider_is_an_openai_error(gw, ups, flaky):
    flaky.control("500")
    r = embed(gw, provider={"only": ["flaky"]})
    assert_openai_error(r, 503)


def test_the_breaker_opens_then_a_half_open_probe_brings_the_provider_back(gw, ups, flaky):
    flaky.control("500")
    text = f"breaker {uuid.uuid4()}"
    for _ in range(2 * BREAKER_FAILURES):
        assert served_by(embed(gw, text)) == "backup"
    # Only the first few were tried on flaky: then its breaker opened and requests skip it.
    # (Half-open probes may reach it too, but they embed the probe set, not this text.)
    assert flaky.stats()["inputs"].count(text) == BREAKER_FAILURES, flaky.stats()
    assert states(gw)["flaky"] == "down"
    error = assert_openai_error(embed(gw, provider={"only": ["flaky"]}), 503)
    assert error["code"] == "no_provider_available" and "flaky is down" in error["message"]

    flaky.control("ok")        # nobody tells the gateway: its half-open probe finds out
    wait_state(gw, "flaky", "healthy", timeout=15)
    assert served_by(embed(gw)) == "flaky"


def _samples(gw: str) -> dict[tuple[str, tuple], float]:
    text = httpx.get(f"{gw}/metrics", timeout=10).text
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def _value(samples, name: str, **labels) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def test_metrics_count_requests_errors_failovers_and_latency_per_provider(gw, ups, flaky):
    before = _samples(gw)
    flaky.control("500")
    assert served_by(embed(gw)) == "backup"
    flaky.control("ok")
    after = _samples(gw)

    def delta(name, **labels):
        return _value(after, name, model=MODEL, **labels) - _value(before, name, model=MODEL, **labels)

    assert delta("gigarouter_provider_requests_total", provider="flaky", outcome="error") == 1
    assert delta("gigarouter_provider_requests_total", provider="backup", outcome="ok") == 1
    assert delta("gigarouter_provider_requests_total", provider="flaky", outcome="ok") == 0
    assert delta("gigarouter_provider_failovers_total", provider="flaky") == 1
    assert delta("gigarouter_provider_failovers_total", provider="backup") == 0
    assert delta("gigarouter_provider_seconds_count", provider="flaky") == 1
    assert delta("gigarouter_provider_seconds_count", provider="backup") == 1
    assert delta("gigarouter_provider_seconds_sum", provider="backup") > 0
